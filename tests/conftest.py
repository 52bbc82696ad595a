"""Suite-wide settings: one torch thread per xdist worker, so `pytest -n 2` on 2 cores is not oversubscribed."""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
