"""Run logs: a CSV anyone can open, and TensorBoard when it is installed."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from polymodal.atomic import write_text

log = logging.getLogger(__name__)

COLUMNS = ("step", "epoch", "split", "name", "value")


class RunLog:
    """Long format (step, epoch, split, name, value): new metrics never change the header."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        """A fresh log, or with ``resume_step`` the saved run's log continued after that step: rows
        a killed run wrote past its last checkpoint are dropped, since the resumed run writes those
        steps again (TensorBoard's events past it are purged the same way)."""
        self.path = run_dir / "log.csv"
        kept = _rows_up_to(self.path, resume_step) if resume_step is not None and self.path.is_file() else None
        if kept:
            write_text(self.path, "".join(kept))  # atomic: a crash now leaves the old log, never half of it
        self._file = open(self.path, "a" if kept else "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        if not kept:
            self._csv.writerow(COLUMNS)
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        except Exception:  # tensorboard is an optional extra
            log.info("TensorBoard logging off (pip install polymodal[train] to enable it)")

    def write(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._csv.writerow((step, epoch, split, name, f"{float(value):.6g}"))
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{name}", float(value), step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _rows_up_to(path: Path, step: int) -> list[str]:
    """The log's header and its rows up to ``step``, as lines; a count of what was dropped goes to the log."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = f.readlines()
    kept, dropped = lines[:1], 0
    for line in lines[1:]:
        head = line.split(",", 1)[0]
        if head.isdigit() and int(head) > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        log.info("%s: dropped %d rows past step %d, written after the checkpoint the run resumes from", path, dropped, step)
    return kept


def read_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{'train/loss': [(step, value), ...], ...}`` from a run's log.csv (for the report)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            curves.setdefault(f"{row['split']}/{row['name']}", []).append((int(row["step"]), float(row["value"])))
    return curves
