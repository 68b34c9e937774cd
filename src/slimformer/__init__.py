"""slimformer: make Transformer models smaller and faster, and prove it with honest measurements.

    import slimformer
    from slimformer.steps import Int8, Tome
    slimformer.compress_(model, [Tome(r=8), Int8()], calib=batches)   # in place, like torchao's quantize_
    small = slimformer.compress("minilm", "int8", out="runs/minilm-int8")  # a new model (saved when out=)
    slimformer.load("runs/minilm-int8")                                  # exactly what was saved

docs/python-api.md documents the API; docs/contract.md the model dir, results JSON and CLI.
"""

from . import steps
from .api import compress, compress_, compress_model, embed, evaluate, load, transcribe, write_results
from .errors import SlimformerError
from .io import load_model_dir, save_model

__all__ = ["SlimformerError", "compress", "compress_", "compress_model", "embed", "evaluate", "load", "load_model_dir",
           "save_model", "steps", "transcribe", "write_results"]
