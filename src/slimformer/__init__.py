"""slimformer: make Transformer models smaller and faster, and prove it with honest measurements."""

from .api import compress, compress_model, embed, evaluate, load, write_results
from .errors import SlimformerError
from .io import load_model_dir, save_model

__all__ = ["SlimformerError", "compress", "compress_model", "embed", "evaluate", "load", "load_model_dir",
           "save_model", "write_results"]
