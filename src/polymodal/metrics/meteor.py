"""METEOR 1.5 through the official jar that ships with pycocoevalcap.

METEOR's paraphrase tables, stemmer and alignment search live in ``meteor-1.5.jar``; a Python
reimplementation would not give the same numbers, so this module drives the jar exactly like
``pycocoevalcap.meteor.Meteor`` does (``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm``,
one ``SCORE`` line per image, then one ``EVAL`` line whose answer is the per-image scores followed
by the corpus score). When Java or the jar is missing it raises :class:`MetricUnavailableError`
rather than returning a number computed some other way.

Reproduced quirk: the hypothesis has ``|||`` removed and double spaces collapsed once
(``.replace('|||', '').replace('  ', ' ')``) before it is sent; references are sent unchanged.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from polymodal.metrics._corpus import check_corpus
from polymodal.metrics.errors import MetricUnavailableError

_INSTALL_HINT = (
    "Install Java (e.g. `apt-get install default-jre-headless`, or any JRE 8+ on PATH) and "
    "pycocoevalcap (`pip install polymodal[eval]`), or leave METEOR out with "
    "metrics=['Bleu', 'ROUGE_L', 'CIDEr']."
)


def find_java() -> str | None:
    """Path of the ``java`` executable, or ``None``."""
    return shutil.which("java")


def find_meteor_jar() -> Path | None:
    """Path of pycocoevalcap's ``meteor-1.5.jar`` (with its ``data/paraphrase-en.gz``), or ``None``."""
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        return None
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap.meteor")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        jar = Path(loc) / "meteor-1.5.jar"
        if jar.is_file():
            return jar
    return None


def meteor_available() -> bool:
    """True when both Java and the METEOR jar are installed."""
    return find_java() is not None and find_meteor_jar() is not None


def _require() -> tuple[str, Path]:
    java = find_java()
    jar = find_meteor_jar()
    missing = []
    if java is None:
        missing.append("Java (`java` is not on PATH)")
    if jar is None:
        missing.append("pycocoevalcap's meteor-1.5.jar (pycocoevalcap is not installed)")
    if missing:
        raise MetricUnavailableError("METEOR needs " + " and ".join(missing) + ". " + _INSTALL_HINT)
    assert java is not None and jar is not None
    return java, jar


class MeteorScorer:
    """A running METEOR jar; reuse one for several corpora, close it when done.

    Thread-safe like the reference (one lock around a whole corpus). Usable as a context manager.
    """

    def __init__(self, memory: str = "2G") -> None:
        java, jar = _require()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - open for the life of the jar
        cmd = [java, "-jar", f"-Xmx{memory}", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
        try:
            self._proc = subprocess.Popen(
                cmd, cwd=str(jar.parent), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
            )
        except OSError as exc:  # java vanished or is not executable
            raise MetricUnavailableError(f"could not start METEOR ({' '.join(cmd)}): {exc}. {_INSTALL_HINT}") from exc
        self._lock = threading.Lock()

    def _readline(self) -> str:
        line = self._proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace").strip()[-2000:]
            raise MetricUnavailableError(
                f"the METEOR jar stopped unexpectedly (exit code {self._proc.poll()}): {err or 'no message'}"
            )
        return line.decode().strip()

    def _write(self, text: str) -> None:
        try:
            self._proc.stdin.write((text + "\n").encode())  # type: ignore[union-attr]
            self._proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            self._readline()  # raises with the jar's own message
            raise

    def score_lists(self, refs: Sequence[Sequence[str]], cands: Sequence[str]) -> tuple[float, list[float]]:
        """Corpus and per-image METEOR for aligned lists of tokenised references and candidates."""
        with self._lock:
            eval_line = "EVAL"
            for cand, rs in zip(cands, refs):
                hyp = cand.replace("|||", "").replace("  ", " ")
                self._write(" ||| ".join(("SCORE", " ||| ".join(rs), hyp)))
                eval_line += f" ||| {self._readline()}"
            self._write(eval_line)
            per_image = [float(self._readline()) for _ in range(len(cands))]
            corpus = float(self._readline())
        return corpus, per_image

    def close(self) -> None:
        """Stop the jar."""
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        self._stderr.close()
        self._proc = None  # type: ignore[assignment]

    def __enter__(self) -> MeteorScorer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - nothing useful to do at interpreter exit
            pass


_session: MeteorScorer | None = None  # the jar of the innermost meteor_session, if one is open


@contextlib.contextmanager
def meteor_session() -> Iterator[MeteorScorer | None]:
    """One METEOR jar for every corpus scored inside, started now, in the background.

    The jar takes about 5 s to start (the JVM and its paraphrase tables), much longer than it takes to
    score a 1,000-image split, and :func:`caption_scores` would start one per call. Inside a session it
    uses the session's jar instead, and an evaluation that opens the session before its model work (as
    ``evaluate_checkpoint`` does) has the jar ready by the time captions are scored. Yields the scorer,
    or ``None`` when Java or the jar is missing (scoring then raises as it would without a session). A
    session opened inside another one reuses the outer jar.
    """
    global _session
    if _session is not None or not meteor_available():
        yield _session
        return
    scorer = MeteorScorer()  # Popen returns at once: the JVM loads while the caller works
    _session = scorer
    try:
        yield scorer
    finally:
        _session = None
        scorer.close()


def session_scorer() -> MeteorScorer | None:
    """The jar of the open :func:`meteor_session`, if any."""
    return _session


def compute_meteor(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Any]) -> tuple[float, list[float]]:
    """METEOR on tokenised text, like ``pycocoevalcap.meteor.Meteor().compute_score(gts, res)``.

    Raises:
        MetricUnavailableError: Java or the jar is missing.
    """
    _, refs, cands = check_corpus(gts, res)
    with MeteorScorer() as scorer:
        return scorer.score_lists(refs, cands)


__all__ = ["MeteorScorer", "compute_meteor", "find_java", "find_meteor_jar", "meteor_available", "meteor_session", "session_scorer"]
