"""The order of string values: Chinese characters by their pinyin, as a Chinese reader looks a name up.

A string's index entry (keys.py ``string_enc``) holds the *sortable form* of its normalized text: each Chinese
character ``c`` (one of the 41,923 of ``data/pinyin.json``) written ``MARK + reading + SEP + c``, every other
character as it is. Entries sort by their bytes, so

- Chinese characters sort by reading (陈 chen, 李 li, 王 wang, 张 zhang), characters of one reading by code point
  (汪 before 王), a reading before its extensions (西 xi before 先 xian: ``SEP`` is below every letter);
- a Chinese character sorts after the Latin, Greek, Cyrillic, kana and Hangul text below ``MARK`` (U+FDD0, a
  noncharacter: Latin names first, then Chinese ones, as ICU's pinyin collation orders them);
- the form of a text is the concatenation of its characters' forms (one reading per character, whatever its
  context), so a prefix or a substring of a text has as its form a prefix or a substring of the text's form:
  prefix searches and the store's substring filter work on forms unchanged, and ``MARK`` keeps a reading from
  matching Latin text (``family=wang`` does not find 王). A ``:contains`` match is checked on ``readable``
  (``contains=ang`` does not find 王 either).

Readings are the most common one of each character, tones dropped, with the family-name reading for the
characters that have one (曾 zeng, 单 shan; ``scripts/derive_pinyin.py``). ``MARK`` and ``SEP`` in a text itself
are dropped from its form.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["MARK", "has_reading", "readable", "sortable"]

MARK = "\ufdd0"
SEP = "\x01"


def _forms() -> dict[int, str]:
    """``str.translate``'s table: each Chinese character to its form; ``MARK`` and ``SEP`` to nothing."""
    text = resources.files("fhir_server.search").joinpath("data/pinyin.json").read_text("utf-8")
    forms = {ord(c): f"{MARK}{reading}{SEP}{c}" for reading, chars in json.loads(text)["readings"].items()
             for c in chars}
    forms[ord(MARK)] = forms[ord(SEP)] = ""
    return forms


_FORMS = _forms()


def sortable(normalized: str) -> str:
    """The sortable form of a normalized text (entries.normalize_string)."""
    return normalized.translate(_FORMS)


def readable(form: str) -> str:
    """The text of a sortable form (``MARK`` and ``SEP`` never occur in the text)."""
    if MARK not in form:
        return form
    out = []
    for part in form.split(MARK):
        out.append(part.split(SEP, 1)[1] if SEP in part else part)
    return "".join(out)


def has_reading(text: str) -> bool:
    """Whether ``text`` holds a character that ``sortable`` writes otherwise (with its reading)."""
    return any(ord(c) in _FORMS for c in text)
