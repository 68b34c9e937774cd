"""The verse-pair loader on the real SWORD modules, plus the parser's rules on a hand-made sample."""

import re

import pytest

from slimformer.data import bible
from slimformer.errors import SlimformerError

SAMPLE = """Psalms 2:12: Give sincere homage to the Son,
for his wrath will soon be kindled.


A Psalm by David.
  Psalms 3:1: Yahweh, how my adversaries have increased!
Many are those who rise up against me.

A Psalm by David.
  Psalms 3:2: Many there are who say of my soul,
Selah.

A Psalm by David.
  Psalms 3:3: But you, Yahweh, are a shield around me,
A Psalm by David.
  John 19:24: They cast lots.

Therefore the soldiers did these things.
A Psalm by David.
  John 19:25: La gracia de nuestro Señor Jesucristo <G5547> sea con vosotros.
(engWEB2015eb)
"""


def test_parser_rules_on_a_sample():
    verses = bible.parse_diatheke(SAMPLE)
    assert verses[("Psalms", 3, 1)] == ("A Psalm by David. Yahweh, how my adversaries have increased! "
                                        "Many are those who rise up against me.")  # title once, poetry joined
    assert verses[("Psalms", 3, 2)] == "Many there are who say of my soul, Selah."  # repeated title dropped
    assert verses[("Psalms", 3, 3)] == "But you, Yahweh, are a shield around me,"
    assert verses[("John", 19, 24)] == "They cast lots. Therefore the soldiers did these things."
    assert verses[("John", 19, 25)] == "La gracia de nuestro Señor Jesucristo sea con vosotros."
    assert len(verses) == 6


def test_real_modules_parse_into_clean_pairs(bible_pairs):
    pairs = bible_pairs
    assert len(pairs) >= 30_000
    assert not [p.key for p in pairs if re.search(r"[<>]|\b[GH]\d{3,4}\b", p.en + p.es)][:5]  # no Strong's tags
    assert all(p.en and p.es for p in pairs)
    by_key = {p.key: p for p in pairs}
    assert by_key["Genesis 1:1"].es == "EN el principio crió Dios los cielos y la tierra."
    assert by_key["Revelation of John 22:21"].es.endswith("sea con todos vosotros. Amén.")
    assert by_key["Psalms 3:1"].en.startswith("A Psalm by David, when he fled from Absalom his son. Yahweh")
    assert by_key["Psalms 3:2"].en.startswith("Many there are")
    # the renderer repeats Psalm 145's title for thousands of lines: it must survive exactly once
    assert [p.key for p in pairs if "A praise psalm by David" in p.en] == ["Psalms 145:1"]


def test_split_is_by_whole_book_and_fixed(bible_pairs):
    split = bible.split_pairs(bible_pairs)
    books = {name: {p.book for p in part} for name, part in split.items()}
    assert books["test"] == set(bible.TEST_BOOKS)
    assert books["dev"] == set(bible.DEV_BOOKS)
    assert not books["train"] & (books["dev"] | books["test"])
    assert sum(len(v) for v in split.values()) == len(bible_pairs)
    assert len(split["test"]) > 1000 and len(split["train"]) > 25_000


def test_cache_round_trip_and_reuse(bible_pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path))
    monkeypatch.setattr(bible, "_MEMO", {})
    monkeypatch.setattr(bible, "extract_pairs", lambda data_dir=None: bible_pairs[:500])
    first = bible.load_pairs()
    assert (tmp_path / bible.CACHE_NAME).exists()

    def fail(data_dir=None):
        raise AssertionError("cache not used")

    monkeypatch.setattr(bible, "extract_pairs", fail)
    monkeypatch.setattr(bible, "_MEMO", {})
    assert bible.load_pairs() == first == bible_pairs[:500]
    sentences = bible.english_sentences(limit=7)
    assert len(sentences) == 7 and all(5 <= len(s.split()) <= 60 for s in sentences)


def test_missing_data_names_the_packages(tmp_path):
    with pytest.raises(SlimformerError, match="apt-get install sword-text-web sword-text-sparv diatheke"):
        bible.load_pairs(data_dir=tmp_path, cache=False)
    with pytest.raises(SlimformerError, match="limit must be >= 1"):
        bible.english_sentences(limit=0)
