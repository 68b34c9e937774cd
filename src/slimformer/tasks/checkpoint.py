"""Training checkpoints that survive a crash: a model dir (written atomically by `io.save_model`) holding the
weights, plus the optimizer's tensors as safetensors and the rest of the training state as JSON.

No pickles: the optimizer state dict is split into its tensors (`state.<param>.<key>`) and its plain
values, so a checkpoint loads with the same guarantees as a model dir. `settings` (epochs, lr, seed,
config...) are stored beside it; resuming with different settings is refused rather than silently
mixing two runs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from .. import io
from ..errors import SlimformerError

log = logging.getLogger(__name__)
OPTIMIZER_FILE = "optimizer.safetensors"


def checkpoint_dir(out: str | Path) -> Path:
    """Where the checkpoint of a run writing model dir `out` lives: beside it, `<out>.checkpoint`."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoint")


def _split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, plain = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["plain"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: nn.Module, state: dict, settings: dict[str, Any]) -> None:
    """Write `model` and `state` (`fit`'s checkpoint dict) to the dir `path`, replacing it atomically."""
    tensors, optimizer_meta = _split_optimizer(state["optimizer"])
    train_state = {"settings": settings, "optimizer": optimizer_meta, "scheduler": state["scheduler"],
                   "history": state["history"]}
    io.save_model(model, path, extra={"checkpoint": train_state},
                  files={OPTIMIZER_FILE: save_tensors(tensors) if tensors else b""})
    log.info("checkpoint after epoch %d: %s", len(state["history"]), path)


def load_checkpoint(path: str | Path, model: nn.Module, settings: dict[str, Any]) -> dict | None:
    """Restore `model`'s weights from the checkpoint at `path`; return the state for `fit(resume=...)`.

    None when there is no checkpoint. Raises if it was written with other `settings`.
    """
    path = Path(path)
    if not path.exists():
        return None
    meta = io.read_meta(path)
    saved = meta.get("checkpoint")
    if not isinstance(saved, dict):
        raise SlimformerError(f"{path}: not a training checkpoint (no 'checkpoint' field)")
    wanted = json.loads(json.dumps(settings))  # as JSON stores it (tuples become lists)
    if saved["settings"] != wanted:
        diff = sorted(k for k in set(saved["settings"]) | set(wanted) if saved["settings"].get(k) != wanted.get(k))
        raise SlimformerError(f"{path}: checkpoint was written with other settings ({', '.join(diff)}); "
                              "rerun with the same ones to resume, or delete it to start over")
    model.load_state_dict(io.load_model_dir(path).state_dict())
    raw = (path / OPTIMIZER_FILE).read_bytes()
    optimizer = _join_optimizer(load_tensors(raw) if raw else {}, saved["optimizer"])
    log.info("resuming from %s after epoch %d", path, len(saved["history"]))
    return {"optimizer": optimizer, "scheduler": saved["scheduler"], "history": saved["history"]}


def remove_checkpoint(path: str | Path) -> None:
    """Drop a checkpoint once the finished model is saved."""
    shutil.rmtree(path, ignore_errors=True)
