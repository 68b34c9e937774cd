"""(placeholder: commands filled in by the issue that owns them)."""

from . import app  # noqa: F401
