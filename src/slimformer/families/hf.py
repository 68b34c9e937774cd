"""What Hugging Face layouts share: matching by `config.model_type`, sizes read from the config (which
maps the common names `hidden_size`, `num_attention_heads`, `num_hidden_layers` onto each model's own),
synthetic inputs and input checks by model kind, and site builders for the usual projection names.

A family subclass names its model types, its stacks, its FFN width field, and how one attention module
and one FFN look; the rest follows from its `kind`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import SlimformerError
from ..models.hf import is_hf_model
from .base import Dims, Family, Inputs, attr_path, check_len, random_ids
from .checks import check_features, check_images, check_tokens
from .sites import FFNSite, HeadSite, Slot, has_modules, slot

UNBOUNDED = 1 << 20  # relative-position models (T5) take any length; memory checks bound it instead


class HFFamily(Family):
    model_types: frozenset[str] = frozenset()
    stack_paths: dict[str, tuple[str, ...]] = {}  # role -> candidate paths from the base model
    ff_fields: tuple[str, ...] = ("intermediate_size",)
    low_id = 5  # synthetic ids start here (clear of pad / bos / eos / unk), lowered for tiny vocabularies

    def matches(self, model: nn.Module) -> bool:
        return is_hf_model(model) and getattr(model.config, "model_type", None) in self.model_types

    # ---- structure
    def attention_site(self, name: str, m: nn.Module) -> HeadSite | None:
        raise NotImplementedError

    def ffn_site(self, name: str, m: nn.Module) -> FFNSite | None:
        raise NotImplementedError

    def head_sites(self, model: nn.Module) -> list[HeadSite]:
        return [s for n, m in model.named_modules() if (s := self.attention_site(n, m)) is not None]

    def ffn_sites(self, model: nn.Module) -> list[FFNSite]:
        return [s for n, m in model.named_modules() if (s := self.ffn_site(n, m)) is not None]

    def stacks(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        out = {}
        for role, paths in self.stack_paths.items():
            for path in paths:
                try:
                    out[role] = attr_path(model.base_model, path)
                    break
                except AttributeError:
                    continue
        return out

    def ff(self, config) -> int:
        for f in self.ff_fields:
            value = getattr(config, f, None)
            if value:
                return int(value)
        return 4 * int(config.hidden_size)

    def max_len(self, config) -> int:
        return int(getattr(config, "max_position_embeddings", None) or UNBOUNDED)

    def dims(self, model: nn.Module) -> Dims:
        c = model.config
        layers = sum(len(s) for s in self.stacks(model).values())
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        vocab = int(getattr(c, "vocab_size", 0) or 0) if head is not None else 0
        return Dims(int(c.hidden_size), int(c.num_attention_heads), self.ff(c), layers, vocab, self.max_len(c))

    # ---- inputs, by kind
    def vocab(self, model: nn.Module) -> int:
        return int(model.config.vocab_size)

    def decoder_start(self, model: nn.Module) -> int:
        start = getattr(model.config, "decoder_start_token_id", None)
        return int(start) if start is not None else 0

    def example_inputs(self, model: nn.Module, batch: int, seq_len: int, g: torch.Generator) -> Inputs:
        check_len(seq_len, self.max_len(model.config), model)
        ids = random_ids(g, self.vocab(model), (batch, seq_len), self.low_id)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.kind == "seq2seq":
            dec = random_ids(g, self.vocab(model), (batch, seq_len), self.low_id)
            dec[:, 0] = self.decoder_start(model)
            kwargs["decoder_input_ids"] = dec
        return (), kwargs

    def check_inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            raise SlimformerError(f"{type(model).__name__} takes keyword inputs (input_ids=..., ...), "
                                  f"got {len(args)} positional")
        if "input_ids" not in kwargs:
            raise SlimformerError(f"{type(model).__name__} needs input_ids; got {', '.join(kwargs) or 'nothing'}")
        vocab, max_len = self.vocab(model), self.max_len(model.config)
        check_tokens(kwargs["input_ids"], vocab, max_len, kwargs.get("attention_mask"), "input_ids")
        if "decoder_input_ids" in kwargs:
            check_tokens(kwargs["decoder_input_ids"], vocab, max_len, field="decoder_input_ids")


class ImageFamily(HFFamily):
    """Image classifiers and encoders: pixel_values of a fixed size, class token first."""

    kind = "image"

    def n_tokens(self, config) -> int:
        return (config.image_size // config.patch_size) ** 2 + 1

    def dims(self, model: nn.Module) -> Dims:
        d = super().dims(model)
        return Dims(d.d, d.heads, d.ff, d.layers, 0, self.n_tokens(model.config), images=True)

    def example_inputs(self, model: nn.Module, batch: int, seq_len: int, g: torch.Generator) -> Inputs:
        c = model.config
        return (), {"pixel_values": torch.randn(batch, c.num_channels, c.image_size, c.image_size, generator=g)}

    def check_inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        c = model.config
        images = kwargs.get("pixel_values", args[0] if args else None)
        check_images(images, c.num_channels, c.image_size, "pixel_values")

    def protected_tokens(self, model: nn.Module) -> int:
        return 1


class SpeechFamily(HFFamily):
    """Speech encoder-decoders: log-mel input_features over a fixed window, text decoder_input_ids."""

    kind = "speech"

    def frames(self, config) -> int:
        raise NotImplementedError

    def max_len(self, config) -> int:
        return int(config.max_target_positions)

    def example_inputs(self, model: nn.Module, batch: int, seq_len: int, g: torch.Generator) -> Inputs:
        c = model.config
        check_len(seq_len, self.max_len(c), model)
        features = torch.randn(batch, c.num_mel_bins, self.frames(c), generator=g)
        dec = random_ids(g, self.vocab(model), (batch, seq_len), self.low_id)
        dec[:, 0] = self.decoder_start(model)
        return (), {"input_features": features, "decoder_input_ids": dec}

    def check_inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        c = model.config
        check_features(kwargs.get("input_features"), c.num_mel_bins, self.frames(c))
        if "decoder_input_ids" in kwargs:
            check_tokens(kwargs["decoder_input_ids"], self.vocab(model), self.max_len(c), field="decoder_input_ids")

    def token_count(self, model: nn.Module, seq_len: int) -> int:
        return self.frames(model.config) // 2


# ---- site builders for the usual layouts ----------------------------------------------------------

def counts_setter(m: nn.Module, heads: str | None = None,
                  extra: Callable[[int], None] | None = None) -> Callable[[int, int], None]:
    """A `set_heads(n, n_kv)` that updates the module's own head-count attribute, where it has one (the
    layouts using this keep no key/value count of their own)."""
    def set_heads(n: int, _n_kv: int) -> None:
        if heads and hasattr(m, heads):
            setattr(m, heads, n)
        if extra:
            extra(n)
    return set_heads


def proj_site(name: str, m: nn.Module, attrs: tuple[str, str, str, str], heads: str, head_dim: int,
              n_kv: int = 0, set_heads: Callable[[int, int], None] | None = None, **extra) -> HeadSite:
    """A HeadSite over four separate projections named `attrs` (q, k, v, o) on `m`."""
    q, k, v, o = (slot(m, a, name) for a in attrs)
    n = int(getattr(m, heads))
    return HeadSite(name, q, k, v, o, n, head_dim, set_heads or counts_setter(m, heads), n_kv_heads=n_kv, **extra)


def ffn(name: str, m: nn.Module, up: str, down: str, gate: str | None = None) -> FFNSite | None:
    """An FFNSite if `m` holds the named projections."""
    if not has_modules(m, up, down, *([gate] if gate else [])):
        return None
    gate_slot: Slot | None = slot(m, gate, name) if gate else None
    return FFNSite(name, slot(m, up, name), slot(m, down, name), gate_slot)


# ---- pipeline stage parts ---------------------------------------------------------------------------

def module_path(model: nn.Module, module: nn.Module | None) -> str | None:
    """The dotted name of `module` inside `model` ("" for the model itself), None if it is not in it."""
    if module is None:
        return None
    return next((name for name, m in model.named_modules() if m is module), None)


def carried_mask(kwargs: dict, x: torch.Tensor) -> torch.Tensor:
    """The 2-D padding mask as floats (1 = real token), the form a pipeline can carry between stages."""
    mask = kwargs.get("attention_mask")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    return mask.to(x.dtype)


def real_tokens(mask: torch.Tensor) -> torch.Tensor:
    """A carried float mask back as the boolean mask the model's own mask builders take."""
    return mask > 0.5
