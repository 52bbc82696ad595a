"""Suite-wide settings: one torch thread, so `pytest -n 2` on 2 cores is not oversubscribed, and a test
gives the same numbers with and without xdist (float sums depend on how many threads split them)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
