"""Translators: `POST /v1/translate` with `{"input": str | [str], "max_new_tokens"?: int}`, answering
`{"data": [{"index": i, "translation": str}], "model": ...}`, for the project's seq2seq translation
models (`slimformer train translation`: a reference `Seq2Seq` with its byte-level BPE tokenizer.json).

The front end encodes with the task's own `encode_sources` (so ids are those `slimformer translate`
feeds the model), refuses a source longer than the model's positions (413; the CLI truncates, but a
server should not silently translate half a text) and runs `guard.check_tokens`. A worker decodes a
batch of similar lengths greedily with `generate.greedy`, as `tasks.translation.translate` does; rows
asking for fewer tokens are cut after (greedy output is the same prefix whatever the limit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from torch import nn

from .. import guard
from ..errors import SlimformerError
from ..families import find_family
from ..families.hf import HFFamily
from ..generate import greedy
from ..parallel.serve import Handler
from ..tasks import translation
from .http import FastJSON, HTTPError, field, json_body, short
from .kinds import Kind, Limits
from .text import pad


class SourceHandler(Handler):
    """An item is (source ids + EOS `int32 [T]`, max new tokens); a worker answers output ids per item."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def cost(self, item: tuple[np.ndarray, int]) -> int:
        return len(item[0])

    def collate(self, items: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, list[int]]:
        return pad([ids for ids, _ in items], self.pad_id)[0], [n for _, n in items]

    def run(self, state: nn.Module, batch: tuple[np.ndarray, list[int]]) -> list[list[int]]:
        ids, limits = batch  # the mask is the model's own (ids != pad), as `translation.translate` runs it
        out = greedy(state, torch.from_numpy(ids).long(), max(limits))
        return [seq[:n] for seq, n in zip(out, limits, strict=True)]


class Translator(Kind):
    name = "translator"

    def __init__(self, ref: str, model: nn.Module, limits: Limits):
        super().__init__(ref, model, limits)
        self.tokenizer = translation.load_tokenizer(ref if Path(ref).is_dir() else None)
        translation.check_tokenizer(model, self.tokenizer)
        self.max_len = int(model.config.max_len)
        if limits.max_batch_tokens < self.max_len:
            raise SlimformerError(f"--max-batch-tokens {limits.max_batch_tokens} is below the model's "
                                  f"{self.max_len}-token sources: one input would never fit a batch")
        self.handler = SourceHandler(int(model.config.pad_id))

    @staticmethod
    def matches(model: nn.Module) -> bool:
        """slimformer's own seq2seq model (the translation task's); Hugging Face seq2seq models decode
        and tokenize differently and are not served here."""
        family = find_family(model)
        return family is not None and family.kind == "seq2seq" and not isinstance(family, HFFamily)

    def routes(self, service: Any) -> list[Route]:
        async def route(request: Request) -> Response:
            return await service.answer("/v1/translate", request, self.translate)

        return [Route("/v1/translate", route, methods=["POST"])]

    def info(self) -> dict[str, Any]:
        return {"max_input_tokens": self.max_len, "max_new_tokens": self.max_len - 1,
                "max_inputs": self.limits.max_inputs, "max_batch_tokens": self.limits.max_batch_tokens}

    def texts(self, body: dict[str, Any]) -> list[str]:
        """A string or a non-empty list of non-empty strings; 422 naming `input` else, 413 past --max-inputs."""
        value = body.get("input")
        if value is None:
            raise HTTPError(422, "'input' is required: a string or a list of strings", "input")
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise HTTPError(422, f"'input' must be a string or a list of strings, got {type(value).__name__} "
                                 f"{short(value)}", "input")
        if not value:
            raise HTTPError(422, "'input' is empty: give at least one text", "input")
        if len(value) > self.limits.max_inputs:
            raise HTTPError(413, f"'input' has {len(value)} texts; at most {self.limits.max_inputs} per request "
                                 "(--max-inputs)", "input")
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise HTTPError(422, f"input[{i}] must be a string, got {type(v).__name__} {short(v)}", "input")
            if not v.strip():
                raise HTTPError(422, f"input[{i}] is empty", "input")
        return value

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Source ids (+ EOS) per text; 413 past the model's positions; checked by `guard`."""
        # one position more than the model has: a source that comes back that long did not fit
        sources = translation.encode_sources(self.tokenizer, texts, self.max_len + 1)
        for i, ids in enumerate(sources):
            if len(ids) > self.max_len:
                raise HTTPError(413, f"input[{i}] is longer than the model's {self.max_len} tokens: "
                                     "split it", "input")
        items = [np.asarray(ids, dtype=np.int32) for ids in sources]
        ids, mask = pad(items, self.handler.pad_id)
        try:
            guard.check_tokens(self.model, torch.from_numpy(ids).long(), torch.from_numpy(mask))
        except SlimformerError as e:
            raise HTTPError(422, f"input: {e}", "input") from None
        return items

    async def translate(self, service: Any, request: Request) -> FastJSON:
        body = await json_body(request, self.limits.max_body_bytes)
        texts = self.texts(body)
        field(body, "model", str)
        limit = self.max_len - 1
        n = field(body, "max_new_tokens", int, limit)
        if not 1 <= n <= limit:
            raise HTTPError(422, f"'max_new_tokens' must be in [1, {limit}], got {n}", "max_new_tokens")
        outputs = await service.infer("/v1/translate", [(ids, n) for ids in self.encode(texts)])
        data = [{"index": i, "translation": self.tokenizer.decode(seq, skip_special_tokens=True).strip()}
                for i, seq in enumerate(outputs)]
        return FastJSON({"object": "list", "model": service.name, "data": data})
