"""`slimformer translate`: English -> Spanish with a trained translation model dir."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .app import app


@app.command()
def translate(
    model: str = typer.Argument(..., help="translation model dir (from `slimformer train translation`)"),
    text: list[str] = typer.Argument(None, help="English text(s); '-' reads one sentence per line from stdin"),
    beam: int = typer.Option(1, min=1, max=64, help="beam size (1 = greedy)"),
    compiled: bool = typer.Option(False, "--compile", help="decode on a static cache with the step compiled: "
                                 "faster for many lines, after tens of seconds of compiling"),
) -> None:
    """Translate English text to Spanish, one output line per input.

    Empty text is an error. Text longer than the model's positions (128 tokens, about 90 words) is
    truncated to fit, with a warning on stderr. Characters the training text never had are encoded as
    bytes, so any input translates without an error (the output for them may be poor).

    Example: slimformer translate ~/.cache/slimformer/translation-s2s "In the beginning was the Word."
    Example: slimformer translate --compile ~/.cache/slimformer/translation-s2s - < verses.txt
    """
    import logging

    from .. import io
    from ..errors import SlimformerError
    from ..tasks import translation

    texts = list(text or [])
    if texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin]
    if not texts or not any(t.strip() for t in texts):
        raise SlimformerError("nothing to translate: TEXT is empty; give a sentence, e.g. "
                              f"slimformer translate {model} \"Hello.\"")
    logging.getLogger("slimformer.tasks.translation").setLevel(logging.WARNING)
    net = io.load(model)
    tok = translation.load_tokenizer(model if Path(model).is_dir() else None)
    for line in translation.translate(translation.check_tokenizer(net, tok), tok, texts, beam=beam,
                                          compiled=compiled):
        typer.echo(line)
