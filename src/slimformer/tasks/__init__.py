"""Tasks: a dataset, a metric and (for trainable ones) a training recipe, registered by name.

Each task module provides `evaluate(model) -> {metric: value}` and `calibration()` (model inputs for
steps that need data); trainable ones also `train(out=...)`. Modules are imported lazily because some
pull in large data or libraries.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ..errors import SlimformerError


@dataclass(frozen=True)
class TaskInfo:
    name: str
    module: str
    metric: str
    description: str
    trainable: bool


TASKS: dict[str, TaskInfo] = {
    "digits": TaskInfo("digits", "digits", "accuracy", "ViT on sklearn's 1,797 real 8x8 digits (top-1)", True),
    "embedding": TaskInfo("embedding", "embedding", "cosine",
                          "sentence embeddings of real English sentences vs the fp32 model (MiniLM)", False),
    "fashion": TaskInfo("fashion", "fashion", "accuracy", "ViT on Fashion-MNIST, 60k/10k real images (top-1)", True),
    "speech": TaskInfo("speech", "speech", "word_accuracy",
                       "Whisper ASR: held-out verses spoken by espeak-ng, clean + noisy (1 - WER)", False),
    "translation": TaskInfo("translation", "translation", "bleu",
                            "English->Spanish verses, held-out books (BLEU, chrF)", True),
}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise SlimformerError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return importlib.import_module(f"{__name__}.{TASKS[name].module}")
