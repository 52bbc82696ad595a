"""Task adapters between data, models and metrics; :func:`build_task` picks one by name."""

from __future__ import annotations

from typing import Any

from polymodal.tasks.base import EvalResult, StepOutput, Task
from polymodal.tasks.captioning import CaptioningTask
from polymodal.tasks.classification import ClassificationTask
from polymodal.tasks.mllm import MLLMTask
from polymodal.tasks.multitask import MultiTaskTask
from polymodal.tasks.regression import RegressionTask
from polymodal.tasks.retrieval import RetrievalTask
from polymodal.tasks.vqa import VQATask

TASKS = ("retrieval", "captioning", "vqa", "classification", "regression", "multitask", "mllm")


def build_task(name: str, tokenizer: Any, max_length: int, questions_per_image: int = 1, blind: bool = False) -> Task:
    if name == "retrieval":
        return RetrievalTask(tokenizer, max_length)
    if name == "captioning":
        return CaptioningTask(tokenizer)
    if name == "vqa":
        return VQATask()
    if name == "classification":
        return ClassificationTask()
    if name == "regression":
        return RegressionTask()
    if name == "mllm":
        return MLLMTask(tokenizer, blind=blind)
    if name == "multitask":
        return MultiTaskTask(tokenizer, max_length, questions_per_image=questions_per_image)
    raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")


__all__ = ["TASKS", "EvalResult", "StepOutput", "Task", "build_task"]
