"""Typed step configs: one class per compression step, so a recipe can be written as objects.

    import slimformer
    from slimformer.steps import Int8, Tome

    slimformer.compress_(model, [Tome(r=8), Int8(activations="static")], calib=batches)

A config's *type* picks its step (as torchao's `quantize_(model, config)` does); its fields are the
step's options, validated exactly like `tome:r=8+int8:activations=static` or the same recipe in YAML,
and all three forms parse to the same recipe. Each class is the options dataclass the step registered.
"""

from __future__ import annotations

from .compress.attention_bf16 import Bf16AttentionOptions as Bf16Attention
from .compress.audio_trim import AudioTrimOptions as AudioTrim
from .compress.distill import DistillOptions as Distill
from .compress.lowrank import LowRankOptions as LowRank
from .compress.prune import PruneFFNOptions as PruneFFN
from .compress.prune import PruneHeadsOptions as PruneHeads
from .compress.prune_layers import PruneLayersOptions as PruneLayers
from .compress.quantize import Bf16Options as Bf16
from .compress.quantize import Int8Options as Int8
from .compress.quantize import Int8WeightOptions as Int8Weight
from .compress.steps import step_for
from .compress.tokens import PruneOptions as TokenPrune
from .compress.tokens import TomeOptions as Tome

__all__ = ["AudioTrim", "Bf16", "Bf16Attention", "Distill", "Int8", "Int8Weight", "LowRank", "PruneFFN", "PruneHeads",
           "PruneLayers", "TokenPrune", "Tome", "step_name"]


def step_name(config: object) -> str:
    """The registered step name of a typed config, e.g. `step_name(Int8Weight()) == "int8-weight"`."""
    return step_for(config).name
