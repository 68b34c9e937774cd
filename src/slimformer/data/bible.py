"""English-Spanish parallel verses: World English Bible 2015 <-> Reina-Valera 1909 (public domain).

The text comes from the SWORD modules of the Debian packages `sword-text-web` and `sword-text-sparv`,
rendered by `diatheke`. Rendering the whole Bible takes ~11 s, so the cleaned pairs are cached once as
a gzipped TSV under `paths.cache_dir()`.

What the cleaning handles (see DATA.md): a verse starts at its `Book C:V:` key and runs over the
following lines (poetry) until a blank line; the English renderer repeats a psalm's title before every
verse (we keep it once, on the first verse, where the Spanish module has it too); the Spanish module
carries Strong's numbers like `<G5547>`; the English one has a few markup tags in the apocrypha (which
have no Spanish counterpart and drop out of the join anyway).

The split is by book, so held-out sentences are not near-duplicates of training ones: `DEV_BOOKS` and
`TEST_BOOKS` are fixed lists of whole books, everything else is training data.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import atomic, paths
from ..errors import SlimformerError

log = logging.getLogger(__name__)

EN_MODULE = "engWEB2015eb"
ES_MODULE = "spaRV1909eb"
PACKAGES = "sword-text-web sword-text-sparv diatheke"
DEFAULT_DATA_DIR = Path("/usr/share/sword")
RANGE = "Genesis 1:1-Revelation of John 22:21"
CACHE_NAME = "bible-en-es-v2.tsv.gz"  # bump the version when the cleaning changes

# Held-out books: a mix of narrative, wisdom, prophecy and letters from both testaments. Mark is
# deliberately *not* held out: most of it has near-verbatim parallels in Matthew and Luke.
DEV_BOOKS = ("Esther", "Nahum", "Philippians")
TEST_BOOKS = ("Ruth", "Ecclesiastes", "Jonah", "Acts", "James")

# A verse key: optional roman-numeral prefix, capitalized words ("Song of Solomon", "Esther (Greek)").
_KEY = re.compile(r"(?:^|\s)(?P<book>(?:(?:I{1,3}|IV) )?[A-Z][a-z]+(?: of [A-Z][a-z]+| [A-Z][a-z]+| \(Greek\))*)"
                  r" (?P<chapter>\d+):(?P<verse>\d+):(?: |$)")
_TAG = re.compile(r"<[^>]*>")  # Strong's numbers <G5547> <H2416> and OSIS markup
_SPACES = re.compile(r"\s+")
_TRAILER = re.compile(r"^\(\w+\)$")  # diatheke ends its output with "(moduleName)"


@dataclass(frozen=True)
class VersePair:
    book: str
    chapter: int
    verse: int
    en: str
    es: str

    @property
    def key(self) -> str:
        return f"{self.book} {self.chapter}:{self.verse}"


def _clean(text: str) -> str:
    return _SPACES.sub(" ", _TAG.sub(" ", text)).strip()


def parse_diatheke(text: str) -> dict[tuple[str, int, int], str]:
    """Parse `diatheke -f plain` output into {(book, chapter, verse): cleaned text}.

    A verse starts at its key and takes every following line until the next key: poetry continues on
    the next lines, and a paragraph break inside a verse (John 19:24) shows up as a blank line followed
    by more of the same verse. Titles are told apart by repetition: the renderer prints a psalm's title
    before *every* verse (and, by a bug, keeps repeating some titles for hundreds of verses into later
    books), so a line that directly precedes a key twice or more is a title. A title is kept once,
    prefixed to the verse it first introduces (the Spanish module has it in verse 1 too). Text after
    three or more blank lines is back matter (the WEB's glossary follows Revelation 22:21), not a verse.
    """
    lines = [_clean(raw) for raw in text.splitlines()]
    keys = [_KEY.search(line) for line in lines]
    before_key = Counter(line for line, nxt in zip(lines, keys[1:], strict=False) if line and nxt is not None)
    titles = {line for line, n in before_key.items() if n >= 2}
    verses: dict[tuple[str, int, int], list[str]] = {}
    current: list[str] = []  # where non-title lines go (before the first key: nowhere)
    last_title = ""
    title = ""  # a new title waiting for the next key
    blanks = 0
    for line, m in zip(lines, keys, strict=True):
        if line and m is None and (blanks >= 3 or _TRAILER.match(line)):
            current = []  # back matter (the WEB's glossary) or diatheke's "(module)" trailer: no verse
        blanks = 0 if line else blanks + 1
        if m is not None:
            prefix = line[:m.start()].strip()  # same-line title (OSIS-marked apocrypha)
            if prefix and prefix != last_title:
                title = last_title = prefix
            current = [title] if title else []
            title = ""
            rest = line[m.end():].strip()
            if rest:
                current.append(rest)
            verses[(m["book"], int(m["chapter"]), int(m["verse"]))] = current
        elif line in titles:
            if line != last_title:  # repeats are dropped (which also drops a title shared by two
                title = last_title = line  # psalms in a row: rare, and only costs a prefix)
        elif line:
            current.append(line)
    return {k: " ".join(v).strip() for k, v in verses.items()}


def _run_diatheke(module: str, data_dir: Path) -> str:
    env = None if data_dir == DEFAULT_DATA_DIR else {**os.environ, "SWORD_PATH": str(data_dir)}
    result = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", RANGE],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0 or "Genesis 1:1:" not in result.stdout:
        raise SlimformerError(f"diatheke could not render SWORD module {module} from {data_dir} "
                              f"(exit {result.returncode}); install it: apt-get install {PACKAGES}")
    return result.stdout


def _check_installed(data_dir: Path) -> None:
    if shutil.which("diatheke") is None:
        raise SlimformerError(f"the `diatheke` program is missing; install: apt-get install {PACKAGES}")
    missing = [m for m in (EN_MODULE, ES_MODULE)
               if not any((data_dir / "mods.d").glob(f"{m.lower()}.conf"))
               and not (data_dir / "mods.d" / f"{m}.conf").exists()]
    if missing:
        raise SlimformerError(f"SWORD module(s) {', '.join(missing)} not found under {data_dir}/mods.d; "
                              f"install: apt-get install {PACKAGES} (or pass --data-dir with a SWORD data path)")


def extract_pairs(data_dir: str | Path | None = None) -> list[VersePair]:
    """Render both modules with diatheke (in parallel, ~11 s) and join them on the verse key."""
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    _check_installed(data_dir)
    with ThreadPoolExecutor(2) as pool:
        en_text, es_text = pool.map(lambda m: _run_diatheke(m, data_dir), (EN_MODULE, ES_MODULE))
    en, es = parse_diatheke(en_text), parse_diatheke(es_text)
    pairs = [VersePair(book, ch, v, en[(book, ch, v)], text) for (book, ch, v), text in es.items()
             if text and en.get((book, ch, v))]
    log.info("extracted %d verse pairs (%d English, %d Spanish verses)", len(pairs), len(en), len(es))
    return pairs


def _write_tsv(pairs: Iterable[VersePair], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(["book", "chapter", "verse", "en", "es"])
    for p in pairs:
        writer.writerow([p.book, p.chapter, p.verse, p.en, p.es])
    atomic.write_bytes(path, gzip.compress(buf.getvalue().encode("utf-8"), mtime=0))


def _read_tsv(path: Path) -> list[VersePair]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        header = next(rows)
        if header != ["book", "chapter", "verse", "en", "es"]:
            raise SlimformerError(f"{path} is not a verse-pair cache (header {header}); delete it to rebuild")
        return [VersePair(b, int(c), int(v), en, es) for b, c, v, en, es in rows]


_MEMO: dict[str, list[VersePair]] = {}


def load_pairs(data_dir: str | Path | None = None, cache: bool = True) -> list[VersePair]:
    """All cleaned verse pairs in canonical order (~31,000), from the cache when there is one.

    data_dir: a SWORD data path (holding `mods.d/` and `modules/`), default /usr/share/sword. A
    non-default path gets its own cache file so two sources are never mixed.
    """
    suffix = "" if data_dir is None or Path(data_dir) == DEFAULT_DATA_DIR else \
        "-" + hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]
    path = paths.cache_dir() / CACHE_NAME.replace(".tsv.gz", f"{suffix}.tsv.gz")
    if cache and str(path) in _MEMO:
        return _MEMO[str(path)]
    if cache and path.exists():
        pairs = _read_tsv(path)
    else:
        pairs = extract_pairs(data_dir)
        if cache:
            _write_tsv(pairs, path)
            log.info("cached verse pairs at %s", path)
    if cache:
        _MEMO[str(path)] = pairs
    return pairs


def split_pairs(pairs: list[VersePair] | None = None) -> dict[str, list[VersePair]]:
    """The fixed by-book split: {"train", "dev", "test"}; dev/test are the whole books listed above."""
    pairs = load_pairs() if pairs is None else pairs
    out: dict[str, list[VersePair]] = {"train": [], "dev": [], "test": []}
    for p in pairs:
        out["test" if p.book in TEST_BOOKS else "dev" if p.book in DEV_BOOKS else "train"].append(p)
    return out


def english_sentences(limit: int | None = None, data_dir: str | Path | None = None) -> list[str]:
    """Real English sentences (whole verses, 5 to 60 words, psalm titles included), in canonical order.

    `limit` takes an evenly spaced sample across the Bible, so a small limit still covers all genres.
    """
    sentences = [p.en for p in load_pairs(data_dir) if 5 <= len(p.en.split()) <= 60]
    if limit is not None:
        if limit < 1:
            raise SlimformerError(f"limit must be >= 1, got {limit}")
        step = max(1, len(sentences) // limit)
        sentences = sentences[::step][:limit]
    return sentences
