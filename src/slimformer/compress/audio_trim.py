"""`audio-trim`: run Whisper's audio encoder only over the frames that hold audio, not the 30 s window.

Why: Whisper pads every clip to 30 s of log-mel frames (3000, 1500 after the strided conv) and its
encoder attends over all of them; a 5 s clip is 83 % padding, and the encoder is most of the time.
Encoding only the frames with audio (plus a margin of padding, which the model was trained to see
after speech) shrinks the encoder's work linearly (attention quadratically) and the decoder's
cross-attention memory with it. This is input compression: no weight changes.

Where audio ends is read from the features themselves, so callers change nothing: the feature
extractor pads with digital silence, whose log-mel frames all sit exactly at the clip's floor value
(`max - 8` in log10 units, then scaled), so the last frame with any bin above its row's floor ends
the audio. The kept length is that plus `margin_s`, rounded up to `bucket_s` (fewer distinct shapes
for kernel caches and compiled graphs), the same for every row of a batch (the longest row), and
never more than the full window. Positional embeddings are sliced to the kept length: position i
still means time 20 ms * i, exactly as in the full window.

Hugging Face's `WhisperEncoder.forward` refuses any length but 3000, so the step swaps the encoder's
class for a subclass with a forward that differs only in slicing (the layers, norms and weights are
the same objects); `restore` swaps it again on a loaded skeleton.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from .registry import Knob, Step, StepContext, register

log = logging.getLogger(__name__)

FRAME_S = 0.01  # one log-mel frame is 10 ms (hop 160 at 16 kHz)
_SUBCLASSES: dict[type, type] = {}


@dataclass
class AudioTrimOptions:
    margin_s: float = 1.0  # padding kept after the last audio frame
    bucket_s: float = 1.0  # kept length is rounded up to a multiple of this

    def __post_init__(self) -> None:
        if not 0 <= self.margin_s <= 30:
            raise SlimformerError(f"option 'margin_s' of step 'audio-trim' must be in [0, 30] s, got {self.margin_s}")
        if not 0.02 <= self.bucket_s <= 30:
            raise SlimformerError(f"option 'bucket_s' of step 'audio-trim' must be in [0.02, 30] s, got "
                                  f"{self.bucket_s}")


def audio_frames(features: Tensor) -> int:
    """Frames up to the last one that holds audio, over the batch `[B, mels, frames]` (longest row)."""
    floor = features.amin(dim=(1, 2), keepdim=True)
    above = (features > floor + 1e-4).any(dim=1)  # [B, frames]
    if not bool(above.any()):
        return 0
    index = torch.arange(features.shape[-1], device=features.device)
    return int((above * (index + 1)).amax())


def kept_frames(features: Tensor, margin_s: float, bucket_s: float) -> int:
    """The number of input frames to encode: audio + margin, rounded up to the bucket, even, <= window."""
    total = features.shape[-1]
    bucket = max(2, 2 * round(bucket_s / FRAME_S / 2))
    want = audio_frames(features) + round(margin_s / FRAME_S)
    return min(total, max(bucket, math.ceil(want / bucket) * bucket))


def _trimmed_forward(self, input_features: Tensor, attention_mask=None, **kwargs):
    """`WhisperEncoder.forward` on the kept frames only (same layers, positions sliced)."""
    from transformers.modeling_outputs import BaseModelOutput

    frames = kept_frames(input_features, self.trim_margin_s, self.trim_bucket_s)
    x = input_features[..., :frames]
    x = nn.functional.gelu(self.conv1(x))
    x = nn.functional.gelu(self.conv2(x)).permute(0, 2, 1)
    hidden = x + self.embed_positions.weight[:x.shape[1]]
    for layer in self.layers:
        hidden = layer(hidden, None, **kwargs)
    return BaseModelOutput(last_hidden_state=self.layer_norm(hidden))


def _whisper_encoder(model: nn.Module) -> nn.Module | None:
    encoder = getattr(getattr(model, "model", None), "encoder", None)
    ok = encoder is not None and all(hasattr(encoder, a) for a in ("conv1", "conv2", "embed_positions", "layers"))
    return encoder if ok else None


def _encoder(model: nn.Module) -> nn.Module:
    encoder = _whisper_encoder(model)
    if encoder is None:
        raise SlimformerError(f"step 'audio-trim': {type(model).__name__} is not a Hugging Face Whisper model "
                              "(model.encoder with conv1, conv2, embed_positions, layers)")
    return encoder


def trim(model: nn.Module, opts: AudioTrimOptions) -> nn.Module:
    """Swap the Whisper encoder's class for its trimming subclass (idempotent)."""
    encoder = _encoder(model)
    base = type(encoder)
    if base not in _SUBCLASSES.values():
        if base not in _SUBCLASSES:
            _SUBCLASSES[base] = type(f"Trimmed{base.__name__}", (base,), {"forward": _trimmed_forward,
                                                                         "__module__": __name__})
        encoder.__class__ = _SUBCLASSES[base]
    encoder.trim_margin_s, encoder.trim_bucket_s = opts.margin_s, opts.bucket_s
    return model


def _apply(model: nn.Module, opts: AudioTrimOptions, ctx: StepContext) -> nn.Module:
    log.info("audio-trim: encoder runs over audio + %.2f s margin (bucket %.2f s)", opts.margin_s, opts.bucket_s)
    return trim(model, opts)


def _restore(model: nn.Module, opts: AudioTrimOptions, state: dict) -> nn.Module:
    return trim(model, opts)


register(Step("audio-trim", AudioTrimOptions, _apply,
              "Whisper: encode only the frames holding audio (+ margin), not the 30 s window", restore=_restore,
              order=95, role="tokens", applies=lambda m: _whisper_encoder(m) is not None,
              # the margin of padding kept after the audio, mild to aggressive (30 s keeps the whole window)
              knob=Knob("margin_s", (2.0, 1.0, 0.5), identity=30.0),
              detect=lambda m: any(type(x) in _SUBCLASSES.values() for x in m.modules())))
