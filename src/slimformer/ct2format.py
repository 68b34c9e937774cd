"""The CTranslate2 model file (`model.bin`), read and written by our own parser: no pickles, no CTranslate2.

Why our own: CTranslate2 has no API that hands back its weights, and the format is small and
documented by its writer (`ctranslate2/specs/model_spec.py`). Binary version 6, little-endian:

    uint32 binary version
    string spec name                  (a string: uint16 length incl. a trailing NUL, UTF-8 bytes, NUL)
    uint32 spec revision
    uint32 variable count
    per variable: string name, uint8 rank, rank x uint32 dims, uint8 dtype, uint32 byte count, bytes
    uint32 alias count, then pairs of strings (alias, target variable)

Every count, length and size is checked against what is left of the file before it is used, so a
truncated or malformed file is one `SlimformerError` naming the file and the field, and nothing is
returned half-read.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import atomic
from .errors import SlimformerError

BINARY_VERSIONS = (5, 6)  # 5 and 6 share this layout up to the aliases, which version 6 always has
MAX_RANK = 8
MAX_VARIABLES = 1 << 20
DTYPES: dict[int, torch.dtype] = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32,
                                  4: torch.float16, 5: torch.bfloat16}
DTYPE_IDS = {v: k for k, v in DTYPES.items()}


@dataclass
class CT2Model:
    """A parsed `model.bin`: spec name and revision, variables by name (CPU tensors), aliases."""

    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)
    binary_version: int = 6

    def get(self, name: str) -> torch.Tensor:
        """A variable by name, following an alias; a missing one is named."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            raise SlimformerError(f"CTranslate2 {self.spec} model: variable {name!r} missing")
        return self.variables[target]


class _Reader:
    """Bounds-checked little-endian reads over the file's bytes; every failure names the file and field."""

    def __init__(self, data: bytearray, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def fail(self, what: str) -> SlimformerError:
        return SlimformerError(f"{self.source}: not a valid CTranslate2 model file: {what} (at byte {self.pos:,} "
                               f"of {len(self.data):,}; truncated or corrupt)")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"{what} needs {n:,} bytes, {len(self.data) - self.pos:,} left")
        view = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return view

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.uint("H", f"length of {what}")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise self.fail(f"{what} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not UTF-8") from e


def _variable(r: _Reader) -> tuple[str, torch.Tensor]:
    name = r.string("variable name")
    rank = r.uint("B", f"rank of {name!r}")
    if rank > MAX_RANK:
        raise r.fail(f"variable {name!r} has rank {rank}, more than {MAX_RANK}")
    shape = tuple(r.uint("I", f"dimension of {name!r}") for _ in range(rank))
    dtype_id = r.uint("B", f"dtype of {name!r}")
    if dtype_id not in DTYPES:
        raise r.fail(f"variable {name!r} has dtype id {dtype_id}; valid: {sorted(DTYPES)}")
    dtype = DTYPES[dtype_id]
    n_bytes = r.uint("I", f"byte count of {name!r}")
    expected = math.prod(shape) * dtype.itemsize
    if n_bytes != expected:
        raise r.fail(f"variable {name!r} of shape {shape} {dtype} holds {n_bytes:,} bytes, expected {expected:,}")
    raw = r.take(n_bytes, f"data of {name!r}")
    tensor = torch.frombuffer(raw, dtype=dtype).clone() if n_bytes else torch.empty(0, dtype=dtype)
    return name, tensor.reshape(shape)


def parse(data: bytes | bytearray, source: str = "model.bin") -> CT2Model:
    """Parse the bytes of a `model.bin` (see the module doc); `source` names it in errors."""
    r = _Reader(bytearray(data), source)
    version = r.uint("I", "binary version")
    if version not in BINARY_VERSIONS:
        raise r.fail(f"binary version {version}; this reader knows {', '.join(map(str, BINARY_VERSIONS))}")
    spec = r.string("spec name")
    revision = r.uint("I", "spec revision")
    count = r.uint("I", "variable count")
    if count > MAX_VARIABLES:
        raise r.fail(f"variable count {count:,} is more than {MAX_VARIABLES:,}")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(count):
        name, tensor = _variable(r)
        if name in variables:
            raise r.fail(f"variable {name!r} appears twice")
        variables[name] = tensor
    aliases: dict[str, str] = {}
    if version >= 6:
        for _ in range(r.uint("I", "alias count")):
            alias, target = r.string("alias name"), r.string("alias target")
            if target not in variables:
                raise r.fail(f"alias {alias!r} points to missing variable {target!r}")
            aliases[alias] = target
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos:,} unexpected bytes after the last field")
    return CT2Model(spec, revision, variables, aliases, version)


def read(path: str | Path) -> CT2Model:
    """Read a `model.bin` file or a CTranslate2 model dir holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise SlimformerError(f"{path}: missing; a CTranslate2 model dir holds model.bin")
    return parse(path.read_bytes(), str(path))


def _string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def serialize(model: CT2Model) -> bytes:
    """The bytes of a binary-version-6 `model.bin` holding `model` (the inverse of `parse`)."""
    parts = [struct.pack("<I", 6), _string(model.spec), struct.pack("<II", model.revision, len(model.variables))]
    for name, t in model.variables.items():
        if t.dtype not in DTYPE_IDS:
            raise SlimformerError(f"variable {name!r}: dtype {t.dtype} has no CTranslate2 type; "
                                  f"valid: {', '.join(map(str, DTYPE_IDS))}")
        t = t.detach().contiguous().cpu()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        parts += [_string(name), struct.pack("<B", t.dim()), struct.pack(f"<{t.dim()}I", *t.shape),
                  struct.pack("<BI", DTYPE_IDS[t.dtype], len(raw)), raw]
    parts.append(struct.pack("<I", len(model.aliases)))
    for alias, target in model.aliases.items():
        parts += [_string(alias), _string(target)]
    return b"".join(parts)


def write(model: CT2Model, path: str | Path) -> Path:
    """Write `model` as a `model.bin` file, atomically."""
    atomic.write_bytes(Path(path), serialize(model))
    return Path(path)
