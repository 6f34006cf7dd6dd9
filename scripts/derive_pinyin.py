"""Derives fhir_server/search/data/pinyin.json: the reading by which each Chinese character sorts.

Source: the single-character table of pypinyin (MIT; its readings come from the Unicode Unihan database's
kHanyuPinyin / kMandarin / kXHC1983 fields). Each character gets its first (most common) reading, tones dropped
and ``ü`` written ``v`` (``lv`` sorts after ``luo``, as in a dictionary). Characters whose first reading is not
the one they have as a family name get the family-name reading (``SURNAMES``): sorting is mostly of names, and
one reading per character keeps the sortable form of a text the concatenation of its characters' (collation.py).

Run: .venv/bin/python scripts/derive_pinyin.py  (pypinyin is a test dependency; ``--check`` compares, writes nothing)
"""

from __future__ import annotations

import json
import sys
import unicodedata
from importlib import metadata, resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fhir_server" / "search" / "data" / "pinyin.json"

# family names whose reading is not the character's first one in the table (checked one by one against it)
SURNAMES = {"曾": "zeng", "单": "shan", "解": "xie", "仇": "qiu", "区": "ou", "朴": "piao", "查": "zha", "盖": "ge",
            "乐": "yue", "缪": "miao", "翟": "zhai", "覃": "qin", "种": "chong", "秘": "bi", "薄": "bo",
            "长": "chang", "重": "chong", "员": "yun", "繁": "po", "召": "shao"}


def plain(reading: str) -> str:
    """``lǚ`` -> ``lv``: tones dropped, ``ü`` as ``v``."""
    decomposed = unicodedata.normalize("NFKD", reading).replace("u\u0308", "v")
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def derive() -> dict[str, object]:
    table = json.loads(resources.files("pypinyin").joinpath("pinyin_dict.json").read_text("utf-8"))
    by_reading: dict[str, list[str]] = {}
    for point, readings in sorted(table.items(), key=lambda item: int(item[0])):
        char = chr(int(point))
        reading = plain(readings.split(",")[0])
        if char in SURNAMES:
            if SURNAMES[char] == reading or SURNAMES[char] not in map(plain, readings.split(",")):
                raise SystemExit(f"SURNAMES: {char} is read {readings}; its entry is not needed or not a reading")
            reading = SURNAMES[char]
        if not reading.isascii() or not reading.isalpha() or not reading.islower():
            raise SystemExit(f"unexpected reading {reading!r} of U+{int(point):04X}")
        by_reading.setdefault(reading, []).append(char)
    return {"source": f"pypinyin {metadata.version('pypinyin')} pinyin_dict (MIT; Unicode Unihan readings), "
                      "first reading, tones dropped, family names per scripts/derive_pinyin.py SURNAMES",
            "readings": {reading: "".join(chars) for reading, chars in sorted(by_reading.items())}}


def main() -> None:
    derived = derive()
    text = json.dumps(derived, ensure_ascii=False, indent=0) + "\n"
    readings = derived["readings"]
    assert isinstance(readings, dict)
    count = sum(len(chars) for chars in readings.values())
    if "--check" in sys.argv:
        held = json.loads(OUT.read_text("utf-8"))["readings"]
        if held != readings:
            raise SystemExit(f"{OUT.relative_to(ROOT)} differs from pypinyin's table: run this script")
        print(f"{OUT.relative_to(ROOT)} matches pypinyin ({count:,} characters)")
        return
    OUT.write_text(text, encoding="utf-8")
    print(f"{count:,} characters, {len(readings)} readings -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
