"""The evaluation report: ``report.html`` and ``report.md`` from plain data, readable offline.

    from polymodal.report import ReportData, write_report
    html, md = write_report(ReportData(title="clip-tiny on world", metrics={...}), "runs/x/report")

Inputs are plain dataclasses (``ReportData`` and the example types), never model objects.

Training curves are either ``{name: [(step, value), ...]}`` or the path of the trainer's CSV log in long
format, ``step,[epoch,]split,name,value`` (series ``split/name``; ``split`` may be absent, extra columns
are ignored; a wide ``step,<series>...`` file is read too); see ``load_training_curves``. Series are split into panels by name: names containing
``loss``, learning rate (``lr``, ``learning_rate``), and everything else (validation metrics).

Plots need matplotlib (``pip install 'polymodal[eval]'``); without it the report still has every table
and says how to get the plots.
"""

from polymodal.report.data import (
    CaptionExample,
    ClassificationResult,
    RankedImage,
    ReportData,
    RetrievalExample,
    VQAExample,
    format_value,
    load_training_curves,
)
from polymodal.report.render import SECTIONS, write_report

__all__ = [
    "SECTIONS",
    "CaptionExample",
    "ClassificationResult",
    "RankedImage",
    "ReportData",
    "RetrievalExample",
    "VQAExample",
    "format_value",
    "load_training_curves",
    "write_report",
]
