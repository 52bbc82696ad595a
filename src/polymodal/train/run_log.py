"""Run logs: a CSV anyone can open, and TensorBoard when it is installed."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COLUMNS = ("step", "epoch", "split", "name", "value")


class RunLog:
    """Long format (step, epoch, split, name, value): new metrics never change the header."""

    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.path = run_dir / "log.csv"
        fresh = not (resume and self.path.is_file())
        self._file = open(self.path, "w" if fresh else "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(COLUMNS)
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
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


def read_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{'train/loss': [(step, value), ...], ...}`` from a run's log.csv (for the report)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            curves.setdefault(f"{row['split']}/{row['name']}", []).append((int(row["step"]), float(row["value"])))
    return curves
