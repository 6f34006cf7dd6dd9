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

The same readings give a name's *sound* (``sounds``), which the ``phonetic`` parameters (Patient, Practitioner,
Person, RelatedPerson, Organization, InsurancePlan: R4 "some kind of phonetic matching algorithm") search by: the
name in pinyin without spaces or marks (王小东 ``wangxiaodong``; Latin letters and digits as they are) and its
initials (``wxd``), as a Chinese registration desk types a name.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["MARK", "has_reading", "readable", "sortable", "sound", "sounds"]

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
_READINGS = {c: form[1:form.index(SEP)] for c, form in _FORMS.items() if form}  # code point: its reading


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


def _syllables(normalized: str) -> list[str]:
    """The syllables of a normalized text as it sounds: each Chinese character's reading, each run of letters and
    digits of other scripts; spaces, punctuation and marks are dropped."""
    out: list[str] = []
    run = ""
    for ch in normalized:
        reading = _READINGS.get(ord(ch))
        if reading is not None or not ch.isalnum():
            if run:
                out.append(run)
                run = ""
            if reading is not None:
                out.append(reading)
        else:
            run += ch
    return [*out, run] if run else out


def sound(normalized: str) -> str:
    """What a ``phonetic`` search value (normalized) is matched by: its syllables run together (王 ``wang``,
    ``Wang Xiao`` ``wangxiao``)."""
    return "".join(_syllables(normalized))


def sounds(names: list[list[str]]) -> set[str]:
    """The sounds a ``phonetic`` search finds a resource by, from its names (each the normalized texts of one
    name: its family name and given names in that order, its text, or an organization's name): each text and each
    name's texts run together (family then given: 王 + 小东 ``wangxiaodong``), and the initials of those
    (``wxd``). A search value matches when one of them starts with its ``sound``, so a sound that starts another
    is left out (``wang`` beside ``wangxiaodong``: one index entry less)."""
    found: set[str] = set()
    for texts in names:
        whole = [syllable for text in texts for syllable in _syllables(text)]
        for syllables in [_syllables(text) for text in texts] + [whole]:
            if syllables:
                found.add("".join(syllables))
                found.add("".join(syllable[0] for syllable in syllables))
    ordered = sorted(found)  # a sound that starts another comes right before one that it starts
    return {heard for heard, after in zip(ordered, [*ordered[1:], ""], strict=True) if not after.startswith(heard)}
