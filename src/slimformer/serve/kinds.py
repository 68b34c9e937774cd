"""What kind of model is being served, and what that kind brings: the `Handler` its workers run and the
HTTP routes it answers. This is the extension point: a translator (`POST /v1/translate`) or a speech
model (`POST /v1/audio/transcriptions`) is one more `Kind` subclass listed in `app.KINDS`, with no change
to batching, workers, errors or metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from ..parallel.serve import Handler

if TYPE_CHECKING:
    from starlette.routing import Route

    from .app import Service


@dataclass
class Limits:
    """Per-request bounds (413 past them) and the batching budget, set by the CLI options."""

    max_inputs: int = 32
    max_body_bytes: int = 8 * 2**20
    max_batch_tokens: int = 16384


class Kind:
    """One kind of served model. Built in the front end from the loaded model (for its config,
    tokenizer and the `guard` checks on every request); `handler` travels to the workers."""

    name = ""
    handler: Handler

    def __init__(self, ref: str, model: nn.Module, limits: Limits):
        self.ref, self.model, self.limits = ref, model, limits

    @staticmethod
    def matches(model: nn.Module) -> bool:
        raise NotImplementedError

    def routes(self, service: Service) -> list[Route]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What `/info` says about the model beyond its name and recipe (dimensions, input limits)."""
        return {}
