"""Shared by the hardening tests (fuzz, corrupt files, kill-during-save, overload): a hard time bound per
case, the tally of what each case ended in, and where the tally goes.

`benchmarks/hardening.py` runs those tests with `SLIMFORMER_HARDENING_OUT` set and aggregates the JSON
lines they append, so the reported counts come from exactly the cases the tests ran.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator

log = logging.getLogger("slimformer.hardening")

TALLY: dict[str, Counter] = defaultdict(Counter)
EXAMPLES: dict[str, dict[str, str]] = defaultdict(dict)  # section -> kind -> first message seen

# Coarse kinds of SlimformerError / CLI messages, first match wins.
KINDS = [
    ("checksum", r"checksum"),
    ("too-large", r"GiB|bytes; recipes are at most|holds only|more than any real"),
    ("nan-weights", r"NaN/Inf value\(s\); the weights"),
    ("missing-or-extra-tensor", r"tensor '.*' missing|unexpected tensor"),
    ("unreadable-safetensors", r"not a readable safetensors"),
    ("wrong-shape", r"has shape|shape \("),
    ("wrong-dtype", r"has dtype|dtype"),
    ("unfinished-save", r"staging dir of an unfinished"),
    ("pickle-refused", r"pickled weights|unpickling"),
    ("unknown-step", r"unknown step"),
    ("unknown-option", r"unknown option|No such option"),
    ("unknown-command", r"No such command"),
    ("bad-order", r"cannot come after|both set|both \w+; keep one"),
    ("bad-yaml", r"not valid YAML|top-level key|list of steps|must be a name or"),
    ("bad-syntax", r"empty step|not key=value"),
    ("bad-json", r"not valid JSON"),
    ("bad-config", r"config|architecture|field|format is not|alias|recipe entry"),
    ("missing-file", r"missing|not found|no such|No such file"),
    ("bad-option-value", r"must be|Invalid value|Missing|requires an argument|Got unexpected|needs option|"
                         r"give option|not a training checkpoint"),
    ("unknown-task-or-model", r"unknown task|not found|neither a slimformer|unknown built-in"),
    ("bad-input", r"NaN|empty batch|exceeds|vocabulary|images"),
]


def kind_of(message: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, message):
            return kind
    return "other"


def record(section: str, outcome: str, message: str = "") -> None:
    """Count one case of `section` ending in `outcome` ("ok", "error:<kind>", "killed", "lost", ...)."""
    TALLY[section][outcome] += 1
    if message:
        EXAMPLES[section].setdefault(outcome, message[:300])


def record_error(section: str, message: str) -> None:
    record(section, "error:" + kind_of(message), message)


def flush(section: str) -> dict[str, int]:
    """Log the section's counts and append them to $SLIMFORMER_HARDENING_OUT (JSON lines) if set."""
    counts = dict(sorted(TALLY.pop(section, Counter()).items()))
    examples = dict(sorted(EXAMPLES.pop(section, {}).items()))
    log.warning("hardening %s: %d cases %s", section, sum(counts.values()), counts)
    out = os.environ.get("SLIMFORMER_HARDENING_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"section": section, "counts": counts, "examples": examples}) + "\n")
    return counts


def scale(n: int) -> int:
    """`n` examples, scaled by $SLIMFORMER_FUZZ_SCALE (the benchmark's --tiny mode uses a small one)."""
    return max(1, int(n * float(os.environ.get("SLIMFORMER_FUZZ_SCALE", "1"))))


class CaseTimeout(BaseException):
    """A case ran past its bound (BaseException: no `except Exception` in the code under test eats it)."""


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` of wall time, restoring pytest-timeout's own alarm after."""
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran longer than {seconds} s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 0.01), old_interval)
