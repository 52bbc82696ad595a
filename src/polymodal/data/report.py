"""Problems found while reading a source: counted and located, never silently dropped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    kind: str  # e.g. "missing_image", "corrupt_image", "empty_text", "no_annotation", "unknown_answer_type"
    origin: str  # "file:record" where the problem sits
    message: str


@dataclass
class DataReport:
    """Collects what a reader or checker skipped, so a long run logs a count instead of crashing.

    Readers call :meth:`add` for a bad record and go on; only unreadable files (missing, malformed
    JSON) raise :class:`polymodal.errors.DataError`.
    """

    source: str
    counts: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    max_listed: int = 50  # keep memory bounded on a badly broken source; the counts stay exact

    def add(self, kind: str, origin: str, message: str) -> None:
        self.counts[kind] += 1
        if len(self.problems) < self.max_listed:
            self.problems.append(Problem(kind, origin, message))

    def count(self, what: str, n: int = 1) -> None:
        """Count something that is not a problem (records read, images, questions ...)."""
        self.counts[what] += n

    @property
    def num_problems(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind in PROBLEM_KINDS)

    def format(self) -> str:
        lines = [f"{self.source}"]
        for kind, n in sorted(self.counts.items()):
            lines.append(f"  {kind}: {n}")
        if not self.num_problems:
            lines.append("  problems: none")
        for p in self.problems:
            lines.append(f"  [{p.kind}] {p.origin}: {p.message}")
        hidden = self.num_problems - len(self.problems)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more problems not listed")
        return "\n".join(lines)


PROBLEM_KINDS = frozenset(
    {
        "missing_image",
        "corrupt_image",
        "empty_text",
        "no_annotation",
        "no_question",
        "unknown_answer_type",
        "bad_record",
        "missing_audio",
        "missing_video",
        "missing_label",
        "bad_conversation",
        "image_marker_mismatch",
        "unreadable_source",
        "truncated_shard",
        "duplicate_id",
    }
)
