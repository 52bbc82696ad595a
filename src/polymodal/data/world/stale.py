"""Remove the media an earlier, different world left in the folder a new one is written into.

Regenerating into an existing folder (``quickstart --scenes 300`` after a 10,000-scene run) overwrote
the annotations but kept every old image, so anything that lists a folder instead of reading the
annotations (an index build over ``images/test``, ``rank-images images/test/*.png``) saw a gallery of
two worlds. Only files named the way the writer names its own are touched: a user's files stay.
"""

from __future__ import annotations

import re
from pathlib import Path


def remove_stale_media(folder: Path, pattern: str, keep: set[str]) -> int:
    """Delete files in ``folder`` whose names fully match ``pattern`` but are not in ``keep``; return how many."""
    if not folder.is_dir():
        return 0
    own = re.compile(pattern)
    removed = 0
    for path in folder.iterdir():
        if path.name not in keep and own.fullmatch(path.name) and path.is_file():
            path.unlink()
            removed += 1
    return removed
