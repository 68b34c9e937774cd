"""Text encoders: OpenAI `POST /v1/embeddings` and TEI `POST /embed`.

The front end tokenizes (it must know each input's length: 413 past the model's positions, and the
token budget batches by it) and runs `guard.check_tokens`; a worker pads a batch of similar lengths to
its longest and returns mean-pooled hidden states (`tasks.embedding.pooled`, the recipe
`slimformer.embed` uses). Normalizing and `dimensions` happen per request in the front end: TEI's
`normalize: false` wants the raw mean.
"""

from __future__ import annotations

import base64
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
from ..parallel.serve import Handler
from ..tasks import embedding
from .http import FastJSON, HTTPError, field, json_body, short
from .kinds import Kind, Limits


class TokenHandler(Handler):
    """An item is one input's token ids `int32 [T]`; a batch pads them to the longest, with a mask."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def cost(self, item: np.ndarray) -> int:
        return len(item)

    def collate(self, items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return pad(items, self.pad_id)

    def run(self, state: nn.Module, batch: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        ids, mask = (torch.from_numpy(a).long() for a in batch)
        return embedding.pooled(state, ids, mask).numpy()


def pad(items: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    longest = max(len(i) for i in items)
    ids = np.full((len(items), longest), pad_id, dtype=np.int32)
    mask = np.zeros((len(items), longest), dtype=np.int32)
    for row, item in enumerate(items):
        ids[row, :len(item)] = item
        mask[row, :len(item)] = 1
    return ids, mask


def token_ids(value: Any) -> bool:
    """A list of integers (bools are not token ids)."""
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2 rows, as `torch.nn.functional.normalize` (eps 1e-12), so HTTP equals `slimformer.embed`."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class TextEncoder(Kind):
    name = "text-encoder"

    def __init__(self, ref: str, model: nn.Module, limits: Limits):
        super().__init__(ref, model, limits)
        self.tokenizer = embedding.tokenizer_for(ref)
        guard.check_tokenizer(model, self.tokenizer)
        self.max_tokens = embedding.token_limit(model, self.tokenizer)
        if limits.max_batch_tokens < self.max_tokens:
            raise SlimformerError(f"--max-batch-tokens {limits.max_batch_tokens} is below the model's "
                                  f"{self.max_tokens}-token inputs: one input would never fit a batch")
        self.dimensions = int(model.config.hidden_size)
        pad_id = self.tokenizer.pad_token_id
        self.handler = TokenHandler(0 if pad_id is None else int(pad_id))

    @staticmethod
    def matches(model: nn.Module) -> bool:
        """A Hugging Face text encoder (BERT, DistilBERT, MiniLM...): its family says so; its hidden states pool."""
        family = find_family(model)
        return isinstance(family, HFFamily) and family.kind == "encoder"

    def routes(self, service: Any) -> list[Route]:
        async def openai(request: Request) -> Response:
            return await service.answer("/v1/embeddings", request, self.openai_embeddings)

        async def tei(request: Request) -> Response:
            return await service.answer("/embed", request, self.tei_embed)

        return [Route("/v1/embeddings", openai, methods=["POST"]), Route("/embed", tei, methods=["POST"])]

    def info(self) -> dict[str, Any]:
        return {"dimensions": self.dimensions, "max_input_tokens": self.max_tokens,
                "max_inputs": self.limits.max_inputs, "max_batch_tokens": self.limits.max_batch_tokens}

    # ------------------------------------------------------------------------------------ requests

    def inputs(self, body: dict[str, Any], name: str) -> list[str | list[int]]:
        """A string, a list of strings, one token-id list or a list of them (OpenAI's forms); 422
        naming the field when anything else, or empty; 413 past the per-request count."""
        if body.get(name) is None:
            raise HTTPError(422, f"{name!r} is required: a string or a list of strings", name)
        value = body[name]
        if isinstance(value, str) or (value and token_ids(value)):
            value = [value]
        if not isinstance(value, list):
            raise HTTPError(422, f"{name!r} must be a string or a list of strings, got {type(value).__name__} "
                                 f"{short(value)}", name)
        if not value:
            raise HTTPError(422, f"{name!r} is empty: give at least one input", name)
        if len(value) > self.limits.max_inputs:
            raise HTTPError(413, f"{name!r} has {len(value)} inputs; at most {self.limits.max_inputs} per request "
                                 "(--max-inputs)", name)
        for i, v in enumerate(value):
            if not isinstance(v, str) and not token_ids(v):
                raise HTTPError(422, f"{name}[{i}] must be a string (or a list of token ids), got "
                                     f"{type(v).__name__} {short(v)}", name)
            if not v:
                raise HTTPError(422, f"{name}[{i}] is empty", name)
        return value

    def encode(self, values: list[str | list[int]], name: str, truncate: bool) -> list[np.ndarray]:
        """Token ids per input, checked by `guard` (ids in the vocabulary); 413 past the model's length."""
        texts = [v for v in values if isinstance(v, str)]
        limit = self.max_tokens
        encoded = iter(self.tokenizer(texts, truncation=True, max_length=limit if truncate else limit + 1)
                       ["input_ids"]) if texts else iter(())
        items = []
        for i, v in enumerate(values):
            ids = next(encoded) if isinstance(v, str) else (v[:limit] if truncate else v)
            if len(ids) > limit:
                hint = " (or set truncate: true)" if name == "inputs" else ""
                raise HTTPError(413, f"{name}[{i}] is longer than the model's {limit} tokens{hint}", name)
            if not isinstance(v, str) and (min(ids) < -2**31 or max(ids) >= 2**31):
                raise HTTPError(422, f"{name}[{i}] holds token ids out of range", name)
            items.append(np.asarray(ids, dtype=np.int32))
        ids, mask = pad(items, self.handler.pad_id)
        try:
            guard.check_tokens(self.model, torch.from_numpy(ids).long(), torch.from_numpy(mask))
        except SlimformerError as e:
            raise HTTPError(422, f"{name}: {e}", name) from None
        return items

    async def embed(self, service: Any, route: str, items: list[np.ndarray]) -> np.ndarray:
        return np.stack(await service.infer(route, items))

    async def openai_embeddings(self, service: Any, request: Request) -> FastJSON:
        body = await json_body(request, self.limits.max_body_bytes)
        values = self.inputs(body, "input")
        field(body, "model", str)
        fmt = field(body, "encoding_format", str, "float", choices=("float", "base64"))
        dims = field(body, "dimensions", int, self.dimensions)
        if not 1 <= dims <= self.dimensions:
            raise HTTPError(422, f"'dimensions' must be in [1, {self.dimensions}], got {dims}", "dimensions")
        items = self.encode(values, "input", truncate=False)
        vectors = normalize((await self.embed(service, "/v1/embeddings", items))[:, :dims])
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v}
                for i, v in enumerate(vectors)]
        tokens = sum(len(i) for i in items)
        return FastJSON({"object": "list", "data": data, "model": service.name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def tei_embed(self, service: Any, request: Request) -> FastJSON:
        body = await json_body(request, self.limits.max_body_bytes)
        values = self.inputs(body, "inputs")
        norm = field(body, "normalize", bool, True)
        truncate = field(body, "truncate", bool, False)
        field(body, "truncation_direction", str, "Right", choices=("Right",))
        vectors = await self.embed(service, "/embed", self.encode(values, "inputs", truncate))
        return FastJSON(np.ascontiguousarray(normalize(vectors) if norm else vectors))
