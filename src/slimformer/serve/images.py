"""Image classifiers: `POST /v1/classify`, answering the top-k labels with softmax scores per image.

Two forms: JSON `{"input": [C, H, W] or [N, C, H, W] array, "top_k": k}`, the image already resized
and normalized the way the model was trained (`/info` gives the shape), or a multipart upload of one
PNG / JPEG in `file` (and `top_k` as a form field), which the server decodes, converts to the model's
channels, resizes and normalizes itself (`pixels.Preprocess`: how the model dir says it was trained).
Both are checked by `guard.check_images` before they are queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from torch import nn

from .. import guard, io
from ..errors import SlimformerError
from ..families import find_family
from ..parallel.serve import Handler
from .http import FastJSON, HTTPError, field, json_body, short
from .kinds import Kind, Limits
from .pixels import Preprocess, decode
from .upload import is_multipart, read_form


class ImageHandler(Handler):
    """An item is one image `float32 [C, H, W]`; a worker returns class probabilities per image."""

    def collate(self, items: list[np.ndarray]) -> np.ndarray:
        return np.stack(items)

    def run(self, state: nn.Module, batch: np.ndarray) -> np.ndarray:
        out = state(torch.from_numpy(batch))
        logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out
        return torch.softmax(logits.float(), dim=-1).numpy()


def labels_of(ref: str, model: nn.Module) -> list[str]:
    """Class names: a Hugging Face config's `id2label`, the fashion task's classes, else the indices."""
    config = model.config
    n = getattr(config, "n_classes", None) or getattr(config, "num_labels", 0)
    id2label = getattr(config, "id2label", None)
    if id2label and len(id2label) == n:
        return [str(id2label[i]) for i in range(n)]
    path = Path(ref)
    if (path / io.META).is_file() and io.read_meta(path).get("task") == "fashion":
        from ..data.fashion import CLASSES

        if len(CLASSES) == n:
            return list(CLASSES)
    return [str(i) for i in range(n)]


class ImageClassifier(Kind):
    name = "image-classifier"
    handler = ImageHandler()

    def __init__(self, ref: str, model: nn.Module, limits: Limits):
        super().__init__(ref, model, limits)
        c = model.config
        self.shape = (int(getattr(c, "in_channels", None) or c.num_channels), int(c.image_size), int(c.image_size))
        self.labels = labels_of(ref, model)
        self.preprocess = Preprocess.of(ref, self.shape)

    @staticmethod
    def matches(model: nn.Module) -> bool:
        """An image model of a known family with a class head (the reference ViT's `head`, a Hugging Face
        ViT's `classifier`)."""
        family = find_family(model)
        return family is not None and family.kind == "image" and (hasattr(model, "head") or
                                                                  hasattr(model, "classifier"))

    def routes(self, service: Any) -> list[Route]:
        async def classify(request: Request) -> Response:
            return await service.answer("/v1/classify", request, self.classify)

        return [Route("/v1/classify", classify, methods=["POST"])]

    def info(self) -> dict[str, Any]:
        return {"input_shape": list(self.shape), "labels": self.labels, "max_inputs": self.limits.max_inputs,
                "upload_preprocess": self.preprocess.describe()}

    def images(self, body: dict[str, Any]) -> np.ndarray:
        if body.get("input") is None:
            raise HTTPError(422, f"'input' is required: an image array {list(self.shape)} or a list of them", "input")
        try:
            images = np.asarray(body["input"], dtype=np.float32)
        except (ValueError, TypeError):
            raise HTTPError(422, f"'input' must be a numeric array of shape {list(self.shape)} or "
                                 f"[N, {', '.join(map(str, self.shape))}] (nested lists of numbers)", "input") from None
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[0] == 0:
            raise HTTPError(422, f"'input' has shape {list(images.shape)}; give {list(self.shape)} or "
                                 f"[N, {', '.join(map(str, self.shape))}]", "input")
        if len(images) > self.limits.max_inputs:
            raise HTTPError(413, f"'input' has {len(images)} images; at most {self.limits.max_inputs} per request "
                                 "(--max-inputs)", "input")
        return self.checked(images, "input")

    def checked(self, images: np.ndarray, name: str) -> np.ndarray:
        try:
            guard.check_images(self.model, torch.from_numpy(images))
        except SlimformerError as e:
            raise HTTPError(422, f"{name}: {e}", name) from None
        return images

    async def upload(self, request: Request) -> tuple[np.ndarray, dict[str, Any]]:
        """The uploaded image as the model's input `[1, C, H, W]`, and the form's `top_k` (None if absent)."""
        form = await read_form(request, self.limits.max_body_bytes)
        top_k = form.get("top_k")
        if top_k is not None:
            try:
                top_k = int(top_k)
            except ValueError:
                raise HTTPError(422, f"'top_k' must be int, got {short(top_k)}", "top_k") from None
        image = await run_in_threadpool(decode, form.data, self.preprocess)
        return self.checked(image[None], "file"), {"top_k": top_k}

    async def classify(self, service: Any, request: Request) -> FastJSON:
        if is_multipart(request):
            images, body = await self.upload(request)
        else:
            body = await json_body(request, self.limits.max_body_bytes)
            images = self.images(body)
        k = field(body, "top_k", int, min(5, len(self.labels)))
        if not 1 <= k <= len(self.labels):
            raise HTTPError(422, f"'top_k' must be in [1, {len(self.labels)}], got {k}", "top_k")
        probs = await service.infer("/v1/classify", list(images))
        data = []
        for i, p in enumerate(probs):
            top = np.argsort(-p)[:k]
            data.append({"index": i, "labels": [{"label": self.labels[j], "index": int(j), "score": float(p[j])}
                                                for j in top]})
        return FastJSON({"object": "list", "model": service.name, "data": data})
