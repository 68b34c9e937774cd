"""Imports every module that registers built-in steps. Add a line here when adding a step module."""

from . import attention_bf16, audio_trim, depth, distill, lowrank, prune, quantize, tokens  # noqa: F401
