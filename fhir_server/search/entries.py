"""Typed search index entries of a resource, one list per search parameter (FHIR R4 search.html).

Pure functions from a resource to values a store can index and compare without FHIRPath:

- string: normalized text (case folded, accents removed; Chinese is unchanged), one per searchable part
  (HumanName family/given/prefix/suffix/text, Address parts, plain strings)
- token: ``system|code`` plus ``\\x00|code`` for "any system" (``|code`` when the code has no system);
  from code, Coding, CodeableConcept, Identifier, ContactPoint, boolean, id, uri, string
- reference: ``Type/id`` (or the absolute URL / canonical as written)
- date: ``[low, high]`` microseconds since the epoch, the interval the value's precision covers; a value
  without a zone is read in the hub's zone
- number: the decimal value; quantity: ``{"v": value, "s": system, "c": code, "u": unit}``; uri: the uri

Composite parameters are left to the query side (their components are ordinary parameters here).
"""

from __future__ import annotations

import html
import re
import unicodedata
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from fhir_server.search.paths import compile_path
from fhir_server.search.registry import SearchParameter, parameters_for

__all__ = ["ANY_SYSTEM", "FULL_TEXT", "code_texts", "date_range", "entries_for", "entries_of", "entries_of_parameter",
           "entries_of_values", "full_text", "full_text_match", "narrative_text", "normalize_string",
           "reference_type", "strings_of", "text_match", "text_words", "tokens_of", "values_of"]

ANY_SYSTEM = "\u0000"
_UTC = ZoneInfo("UTC")


def normalize_string(text: str) -> str:
    """Case- and accent-insensitive form (FHIR R4 search.html#string); CJK characters are kept as they are."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).strip()


def strings_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        return []
    out: list[str] = []
    for key in ("family", "text", "city", "district", "state", "postalCode", "country", "value", "display"):
        if isinstance(value.get(key), str):
            out.append(value[key])
    for key in ("given", "prefix", "suffix", "line"):
        out.extend(v for v in value.get(key) or [] if isinstance(v, str))
    return out


def code_texts(value: Any) -> list[str]:
    """The text that goes with a code (token ``:text``): CodeableConcept.text, a Coding's display (also each
    of a CodeableConcept's codings), and the same of an Identifier's type."""
    if not isinstance(value, dict):
        return []
    out = [value[k] for k in ("text", "display") if isinstance(value.get(k), str)]
    for coding in value.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            out.append(coding["display"])
    return out + code_texts(value.get("type"))


def _is_cjk(ch: str) -> bool:
    """A character of a script written without spaces between words: Chinese (and Japanese kana, Korean)."""
    o = ord(ch)
    return (0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x3134F
            or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF)


def text_match(text: str, wanted: str) -> bool:
    """Token ``:text`` on normalized strings: ``wanted`` starts a word of ``text``; or, when it begins with a
    Chinese character, it occurs anywhere in it (Chinese has no spaces: ``肺癌`` is found in ``原发性肺癌``)."""
    text = " ".join(text.split())
    return text.startswith(wanted) or f" {wanted}" in text or (_is_cjk(wanted[0]) and wanted in text)


def text_words(texts: list[str]) -> list[str]:
    """What ``:text`` is indexed under: each word of the normalized texts, and each tail of a word that begins
    with a Chinese character. A value is then found by a prefix scan of its first word (``text_match``)."""
    out: set[str] = set()
    for text in texts:
        for word in normalize_string(text).split():
            out.add(word)
            out.update(word[i:] for i in range(1, len(word)) if _is_cjk(word[i]))
    return sorted(out)


FULL_TEXT = ("_text", "_content")  # FHIR R4 search.html#text: the narrative; the whole resource
_TAG = re.compile(r"<[^>]*>")


def _all_strings(value: Any) -> list[str]:
    """Every string in ``value`` but ``resourceType`` and ``data`` (base64 of Attachment, Binary and Signature;
    SampledData's numbers): not text anyone searches, and megabytes of it would be normalized at each write."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _all_strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k not in ("resourceType", "data") for s in _all_strings(v)]
    return []


def narrative_text(resource: dict[str, Any]) -> str:
    """The narrative as read: markup removed, character references decoded (not normalized)."""
    narrative = resource.get("text")
    div = narrative.get("div") if isinstance(narrative, dict) else None
    return html.unescape(_TAG.sub(" ", div)) if isinstance(div, str) else ""


def full_text(resource: dict[str, Any], code: str, *, longest: int | None = None,
              narrative: str | None = None) -> str | None:
    """What ``_text`` searches (the narrative as read) or ``_content`` (every string of the resource, the
    narrative as read instead of its XHTML), normalized, each string on a line of its own. With ``longest``:
    None, without normalizing it, when the text has more than four times that many characters (its normalized
    form is then longer than ``longest`` bytes, or nearly all accents). ``narrative``: ``narrative_text`` of the
    resource, when the caller has it."""
    read = narrative_text(resource) if narrative is None else narrative
    parts = [read] if code == "_text" else [
        *(s for k, v in resource.items() if k not in ("resourceType", "text") for s in _all_strings(v)), read]
    if longest is not None and sum(map(len, parts)) > 4 * longest:
        return None
    return normalize_string("\n".join(parts))


def full_text_match(text: str, wanted: list[list[str]]) -> bool:
    """``_text``/``_content`` on a ``full_text``: one of the values (OR, by commas) whose every word (AND, by
    spaces; normalized) occurs in it. Words are substrings, so Chinese, written without spaces, matches too."""
    return any(all(word in text for word in words) for words in wanted)


def _token(system: Any, code: Any) -> list[str]:
    if not isinstance(code, str | bool | int) or code == "":
        return []
    code_text = str(code).lower() if isinstance(code, bool) else str(code)
    if isinstance(system, str) and system:
        return [f"{system}|{code_text}", f"{ANY_SYSTEM}|{code_text}"]
    return [f"|{code_text}", f"{ANY_SYSTEM}|{code_text}"]


def tokens_of(value: Any) -> list[str]:
    """Token index values of one code, Coding, CodeableConcept, Identifier, ContactPoint or boolean."""
    if isinstance(value, str | bool):
        return _token(None, value)
    if not isinstance(value, dict):
        return []
    if "coding" in value or ("text" in value and "value" not in value and "code" not in value):
        out: list[str] = []
        for coding in value.get("coding") or []:
            if isinstance(coding, dict):
                out += _token(coding.get("system"), coding.get("code"))
        return out
    if "code" in value:  # Coding (also Quantity-like codes)
        return _token(value.get("system"), value.get("code"))
    if "value" in value:  # Identifier, ContactPoint
        return _token(value.get("system"), value.get("value"))
    return []


def _reference(value: Any) -> list[str]:
    if isinstance(value, str):  # canonical / uri used as a reference
        return [value]
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        ref = value["reference"].split("/_history/", 1)[0]
        return [ref]
    return []


def reference_type(reference: str) -> str | None:
    """The type a literal reference names: ``Patient`` for ``Patient/1``, ``Patient/1/_history/2`` and
    ``https://other.org/fhir/Patient/1``; None for ``urn:uuid:…``, ``#contained`` and other forms."""
    parts = reference.split("/_history/", 1)[0].split("/")
    return parts[-2] if len(parts) >= 2 and parts[-2][:1].isupper() else None


def _parse_instant(text: str, zone: ZoneInfo) -> tuple[datetime, timedelta]:
    """A FHIR date/dateTime/instant and the length of the period its precision covers."""
    if len(text) == 4:
        start = datetime(int(text), 1, 1, tzinfo=zone)
        return start, start.replace(year=start.year + 1) - start
    if len(text) == 7:
        start = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=zone)
        nxt = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        return start, nxt - start
    if len(text) == 10:
        start = datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=zone)
        return start, timedelta(days=1)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    if "." in text:
        return parsed, timedelta(microseconds=1)
    precision = timedelta(seconds=1) if text.count(":") >= 2 else timedelta(minutes=1)
    return parsed, precision


def _micros(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=_UTC)) / timedelta(microseconds=1))


def date_range(text: str, zone: ZoneInfo) -> tuple[int, int] | None:
    """``[low, high]`` in microseconds of a FHIR date value (inclusive bounds), or None if it is not one."""
    try:
        start, span = _parse_instant(text, zone)
    except ValueError:
        return None
    low = _micros(start)
    return low, low + int(span / timedelta(microseconds=1)) - 1


def _dates(value: Any, zone: ZoneInfo) -> list[list[int]]:
    if isinstance(value, str):
        found = date_range(value, zone)
        return [list(found)] if found else []
    if not isinstance(value, dict):
        return []
    if "start" in value or "end" in value:  # Period: open ends are unbounded (FHIR R4 search.html#date)
        low = date_range(value["start"], zone) if isinstance(value.get("start"), str) else None
        high = date_range(value["end"], zone) if isinstance(value.get("end"), str) else None
        return [[low[0] if low else -(2**62), high[1] if high else 2**62]]
    if "event" in value:  # Timing
        return [r for e in value.get("event") or [] for r in _dates(e, zone)]
    return []


def _number(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float | Decimal):  # fhirpathpy gives decimals as Decimal
        return [float(value)]
    if isinstance(value, str):
        try:
            return [float(Decimal(value))]
        except InvalidOperation:
            return []
    return []


def _quantity(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float | Decimal) or isinstance(
            value.get("value"), bool):
        return []
    entry: dict[str, Any] = {"v": float(value["value"])}
    for key, short in (("system", "s"), ("code", "c"), ("unit", "u")):
        if isinstance(value.get(key), str):
            entry[short] = value[key]
    return [entry]


def values_of(parameter: SearchParameter, resource: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for part in parameter.paths:
        found = compile_path(part.expression)(resource)
        if part.resolve_is is not None:  # X.where(resolve() is T): references to T only
            found = [v for v in found if isinstance(v, dict) and isinstance(v.get("reference"), str)
                     and reference_type(v["reference"]) == part.resolve_is]
        out.extend(found)
    return out


def entries_of_parameter(parameter: SearchParameter, resource: dict[str, Any], zone: ZoneInfo) -> list[Any]:
    return entries_of_values(parameter, values_of(parameter, resource), zone)


def entries_of_values(parameter: SearchParameter, values: list[Any], zone: ZoneInfo) -> list[Any]:
    """The typed entries of values the parameter's expression selected."""
    if not values:
        return []
    if parameter.type == "string":
        return sorted({normalize_string(s) for v in values for s in strings_of(v) if s.strip()})
    if parameter.type == "token":
        return sorted({t for v in values for t in tokens_of(v)})
    if parameter.type == "reference":
        return sorted({r for v in values for r in _reference(v)})
    if parameter.type == "date":
        return [d for v in values for d in _dates(v, zone)]
    if parameter.type == "number":
        return [n for v in values for n in _number(v)]
    if parameter.type == "quantity":
        return [q for v in values for q in _quantity(v)]
    return sorted({v for v in values if isinstance(v, str)})  # uri


def entries_of(resource: dict[str, Any], code: str, *, zone: ZoneInfo) -> list[Any]:
    """Index entries of one search parameter (empty if the type has no such parameter)."""
    parameter = parameters_for(resource.get("resourceType", "")).get(code)
    if parameter is None or parameter.type in ("composite", "special"):
        return []
    return entries_of_parameter(parameter, resource, zone)


def entries_for(resource: dict[str, Any], *, zone: ZoneInfo) -> dict[str, list[Any]]:
    """Index entries of every search parameter of the resource's type that has a value in it."""
    entries: dict[str, list[Any]] = {}
    for code, parameter in parameters_for(resource.get("resourceType", "")).items():
        if parameter.type in ("composite", "special"):
            continue
        found = entries_of_parameter(parameter, resource, zone)
        if found:
            entries[code] = found
    return entries
