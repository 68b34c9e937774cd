"""Where slimformer keeps things it can rebuild (trained demo models, extracted corpora)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$SLIMFORMER_CACHE`, else `$XDG_CACHE_HOME/slimformer`, else `~/.cache/slimformer`."""
    if os.environ.get("SLIMFORMER_CACHE"):
        return Path(os.environ["SLIMFORMER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slimformer"
