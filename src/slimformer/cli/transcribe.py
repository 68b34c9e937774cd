"""`slimformer transcribe`: speech to text with a Whisper model (built-in `whisper-tiny-en` or a model dir)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import app


@app.command()
def transcribe(
    model: str = typer.Argument(..., help="whisper-tiny-en, a slimformer / Hugging Face / CTranslate2 Whisper dir"),
    audio: list[Path] = typer.Argument(..., help="audio file(s): wav or flac, any sample rate, <= 30 s each"),
    recipe: str = typer.Option(None, "--recipe", "-r", help="compression recipe to apply first (inline or YAML)"),
    json_out: Path = typer.Option(None, "--json", help="also write per-file text and seconds to this JSON file"),
) -> None:
    """Print one transcript per audio file (greedy Whisper decoding; `path: text` when several files).

    Audio is read with soundfile, mixed to mono and resampled to 16 kHz with a polyphase filter. An
    empty, unreadable or longer-than-30-s file is an error. In --json, `seconds` is the time to
    transcribe that file, model loading excluded.

    Example: slimformer transcribe whisper-tiny-en clip.wav --recipe audio-trim --json out.json
    """
    import logging

    from .. import api, atomic

    for name in ("torch.utils._pytree", "torchao"):  # import-time notices of the int8 backend, not ours
        logging.getLogger(name).setLevel(logging.ERROR)

    results = api.transcribe(model, list(audio), recipe)
    for r in results:
        typer.echo(r["text"] if len(results) == 1 else f"{r['path']}: {r['text']}")
    if json_out is not None:
        atomic.write_text(json_out, json.dumps({"model": model, "recipe": recipe or "", "files": results}, indent=2))
