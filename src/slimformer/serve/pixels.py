"""An uploaded PNG / JPEG -> the float input `[C, H, W]` its classifier was trained on.

What "trained on" means comes from the model dir, so the server never guesses silently:
- a slimformer model dir whose metadata has `normalize: {mean, std}` (the fashion task writes it: pixels
  scaled to [0, 1], then `(x - mean) / std` with the training set's statistics, `tasks.fashion.load_data`);
- a Hugging Face dir with `preprocessor_config.json` (`rescale_factor`, `image_mean`, `image_std`,
  `resample`: what its image processor does);
- else pixels scaled to [0, 1] and nothing more (`/info` says which of the three applies).
The image is converted to the model's channels (1: grayscale, 3: RGB) and resized to its square size
with Pillow (bilinear, antialiased when shrinking, like Hugging Face image processors).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import io as model_io
from ..errors import SlimformerError
from .http import HTTPError

FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 40_000_000  # a decoded 40-megapixel RGB image is already 120 MB; past it, refuse before decoding
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Preprocess:
    channels: int
    size: int
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resample: int = BILINEAR
    source: str = "pixels / 255 (the model dir states no normalization)"

    @classmethod
    def of(cls, ref: str, shape: tuple[int, int, int]) -> Preprocess:
        """How the model at `ref` (input `shape` `[C, H, W]`) was fed, from what its dir says."""
        channels, size = shape[0], shape[1]
        path = Path(ref)
        if (path / model_io.META).is_file():
            norm = model_io.read_meta(path).get("normalize")
            if isinstance(norm, dict) and {"mean", "std"} <= set(norm):
                return cls(channels, size, mean=_floats(norm["mean"]), std=_floats(norm["std"]),
                           source="pixels / 255, then (x - mean) / std from the model dir's metadata")
        processor = path / "preprocessor_config.json"
        if processor.is_file():
            try:
                cfg = json.loads(processor.read_text())
            except (OSError, ValueError) as e:
                raise SlimformerError(f"{processor}: unreadable image preprocessing config: {e}") from None
            return cls(channels, size, scale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True)
                       else 1.0, mean=_floats(cfg.get("image_mean", 0.0)) if cfg.get("do_normalize", True) else (0.0,),
                       std=_floats(cfg.get("image_std", 1.0)) if cfg.get("do_normalize", True) else (1.0,),
                       resample=int(cfg.get("resample", BILINEAR)), source="preprocessor_config.json")
        return cls(channels, size)

    def describe(self) -> dict[str, Any]:
        return {"channels": self.channels, "size": self.size, "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std), "source": self.source}


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),)


def decode(data: bytes, pre: Preprocess) -> np.ndarray:
    """The image in `data` as float32 `[C, H, W]`; 422 naming `file` when it is not a PNG / JPEG, 413 past
    `MAX_PIXELS`."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
        if image.width * image.height > MAX_PIXELS:
            raise HTTPError(413, f"file: image is {image.width}x{image.height}; at most {MAX_PIXELS} pixels", "file")
        if pre.channels not in (1, 3):
            raise HTTPError(422, f"file: uploads feed 1- or 3-channel models; this one takes {pre.channels} "
                                 "channels: send the JSON array form", "file")
        image = image.convert("L" if pre.channels == 1 else "RGB")
        image = image.resize((pre.size, pre.size), resample=pre.resample)
    except UnidentifiedImageError:
        raise HTTPError(422, f"file: not a PNG or JPEG image ({len(data)} bytes); upload one of those",
                        "file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # a damaged or truncated one
        raise HTTPError(422, f"file: unreadable {'/'.join(FORMATS)} image: {str(e)[:200]}", "file") from None
    pixels = np.asarray(image, dtype=np.float32).reshape(pre.size, pre.size, pre.channels) * pre.scale
    pixels = (pixels - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
