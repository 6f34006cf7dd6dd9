"""Search index entries as strings that sort and prefix-match like the values they stand for.

An entry is ``param|enc|`` (the trailing ``|`` ends the value). The store keeps one index document per
entry and resource version, ``_id`` = ``Type|param|enc|rid|vid`` (the vid may be followed by marks:
index_order.py ``order_marks``), so every search is a few ``_id`` range
scans: a prefix of ``enc`` is a string prefix, a range of ``enc`` is a range of dates or numbers. Only
characters above ``"`` and without JSON escapes appear (hex digits, ``.``, ``|``, ``~``, letters): on
FerretDB's SQLite backend, ``_id`` ranges of such strings use the ``_id`` index (scripts/install-ferretdb.sh).

Encodings (``hex`` is the hex of the UTF-8 bytes, ``n`` a sortable 16-hex-digit number):

- string: ``hex(sortable form of the normalized text).`` (case and accents folded, at most ``MAX_TEXT`` characters,
  Chinese characters with their pinyin: collation.py; the ``.``, below every hex digit, puts a value before its
  extensions: ``wang`` before ``wangx``, as ``_sort`` orders them)
- token: ``hex(code).hex(system)`` (``hex(code).`` when the code has no system); for ``:text``, each word of
  the code's text (and each tail of a word from a Chinese character on) under ``<code>:text``
- reference: ``hex(Type/id)`` for resources on this server, ``hex(url)`` otherwise; the reference's
  identifier as a token of the parameter ``<code>:identifier``
- date: ``L n(low).n(high)``, and ``H n(high).n(low)`` when the value spans a second or more (microseconds)
- number: ``n(value)``; quantity: ``N n(value)`` and ``C hex(code or unit).n(value).hex(system)``
- uri: ``hex(uri)``
- ``phonetic`` (a string parameter): its entries as a string, and under ``phonetic:pinyin`` the hex of each sound of
  the names (collation.py ``sounds``: 王小东 ``wangxiaodong``, ``xiaodong``, ``wxd``...), which a search without a
  modifier reads by prefix
- ``_text`` and ``_content``: ``hex(full text)`` (entries.full_text) when it has at most ``MAX_FULL_TEXT`` bytes,
  else ``~`` (found by reading the resource); searched by a scan of the parameter's keys that the store filters
  by the hex of a word
- absence: ``@absent|<code>|`` for each parameter of the type that sorts in index order (``SORTED_KINDS``; not the
  ``meta`` ones) of which the resource has no element (``@absent`` is no parameter code): ``:missing=true`` reads
  these, and a sort by the parameter reads them (with its ``~`` entries) for the resources it places last, a
  page at a time. Not for references and uris (sorted in memory), nor ``_tag``, ``_profile``, ``_security`` and
  ``_source``: each absent entry is one more index document to write (``has_absent_entries``). Those others a
  resource lacks are listed in one entry, ``@lacks|.<code>.<code>.|`` (codes in order, ``.`` around each; codes
  hold no ``.``: registry ``CODE_RE``), with the parameters restricted to one type of reference that it has none
  of (Observation ``patient``: a subject that is no Patient): ``:missing=true`` on one of them scans the type's
  ``@lacks`` entries for ``.<code>.`` (a substring test the store runs on its index: the hub's FerretDB patch
  takes letters, digits, ``_``, ``-``, ``.`` and ``|`` in it), instead of reading every resource of the type
- a date within a token's code or a reference's target (``SORTS_WITHIN``): the date's entries again, under the code
  ``<date>@<token or reference>@<hex(code or id)>`` (``within_code``); a given name within a family name likewise,
  ``given@family@<hex(sortable family)>``, and ``~`` there for a person with a family and no given name; a birth date
  within a family name, ``birthdate@family@<hex(sortable family)>`` (``~``: none)
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable
from typing import Any
from zoneinfo import ZoneInfo

from fhir_server.search.collation import sortable, sounds
from fhir_server.search.compartment import patient_compartment_params
from fhir_server.search.entries import (
    ANY_SYSTEM,
    FULL_TEXT,
    code_texts,
    entries_of_values,
    full_text,
    narrative_text,
    normalize_string,
    text_words,
    tokens_of,
    values_of,
)
from fhir_server.search.registry import SearchParameter, custom_codes, indexed_as, parameters_for

__all__ = [
    "ABSENT",
    "ABSENT_LAYOUT",
    "COMPARTMENT",
    "INDEX_LAYOUT",
    "LACKS",
    "LACKS_LAYOUT",
    "LAYOUT_MARKER",
    "LONG_SPAN",
    "MAX_FULL_TEXT",
    "MAX_TEXT",
    "PHONETIC",
    "PHONETIC_LAYOUT",
    "PINYIN_LAYOUT",
    "PRESENT",
    "SORTS_WITHIN",
    "SOUNDS",
    "SPANS_LAYOUT",
    "WITHIN",
    "WITHIN_LAYOUT",
    "base_code",
    "decode_hex",
    "decode_number",
    "encode",
    "entry_keys",
    "has_absent_entries",
    "hexs",
    "lacks_listed",
    "local_reference",
    "num",
    "reads_absent_entries",
    "reindexed_since",
    "sort_value",
    "sortable_int",
    "split_date",
    "start_ordered_date",
    "string_enc",
    "token_enc",
    "within_code",
    "within_layout",
    "within_value",
]

# The index layout: raised whenever ``entry_keys`` gives resources already stored entries they lack. A hub whose
# store was indexed under an older layout re-indexes it by itself, in the background (service/reindex.py).
# 2: token ``:text`` entries; 3: ``_text`` and ``_content`` entries; 4: ``H`` entries of dates spanning a second or more
# (a day or more before); 5: string values end with ``.`` (their keys sort in value order); 6: ``@absent`` entries;
# 7: the marks of the entries a sort passes over (search/index_order.py ``order_marks``); 8: strings in their
# sortable form, Chinese characters with their pinyin (collation.py); 9: dates within a status or a subject
# (``SORTS_WITHIN``); 10: Observation dates within the Patient compartment; 11: given names within family names;
# 12: ``@lacks`` entries listed with commas (never read: the store scans for a comma without its index); 13: ``@lacks``
# entries; 14: ``phonetic:pinyin`` entries; 15: no new entries, but the longest span of each date parameter's values is
# known for every stored resource (search/date_spans.py); 16: Patient birth dates within family names.
INDEX_LAYOUT = 16
ABSENT_LAYOUT = 6  # the first layout with ``@absent`` entries
LACKS_LAYOUT = 13  # the first layout with ``@lacks`` entries
PINYIN_LAYOUT = 8  # the first layout with strings in their sortable form
PHONETIC_LAYOUT = 14  # the first layout with ``phonetic:pinyin`` entries
SPANS_LAYOUT = 15  # the first layout whose dates' longest spans cover every stored value (search/date_spans.py)
PHONETIC = "phonetic"  # the code of the parameters searched by how a name sounds (``SOUNDS``)
SOUNDS = f"{PHONETIC}:pinyin"  # the code of their entries of sounds
WITHIN_LAYOUT = 9  # the first layout with the entries of ``SORTS_WITHIN`` (some pairs came later: ``within_layout``)
# the ``jobs`` document {"layout": n} that records the INDEX_LAYOUT the store's resources are indexed under
# (service/reindex.py writes it, search/engine.py reads it)
LAYOUT_MARKER = "index-layout"
# µs: dates spanning this or more (a minute, an hour, a day... precision) also get an entry ordered by their high
# bound; the others (seconds and finer, instants) are read by their low bound, less than this before their high one:
# a search for dates ending after a moment (query.py) and a descending sort by dates (index_order.py) read this
# much of the low bounds ahead. It was a day: a descending sort then held a day of entries (300 orders of the
# benchmark's day, thousands a day in a hospital); day-precision values (birthDate) now get the second entry.
LONG_SPAN = 1_000_000
PRESENT = "~"  # the entry of a parameter that is present without a searchable value
ABSENT = "@absent"  # the entries ``@absent|<code>|``: the parameters of which a resource has no element
LACKS = "@lacks"  # the entry ``@lacks|.<code>.….|``: the other parameters (``lacks_listed``) it has no element of
SORTED_KINDS = ("date", "number", "quantity", "token", "string")  # entries that sort by value (index_order.py)
# A date's entries again within each value of a token (its code, whatever the system) or a reference (its target's
# id) parameter, by type: (that parameter, the date). ``authored@status@<hex(active)>|L…|`` entries hold the active
# orders in the order of their ``authored`` dates, so that a worklist (``ServiceRequest?status=active&_sort=
# -authored``) or a patient's timeline (``Observation?patient=…&_sort=-date``) reads the next matches in the index
# instead of passing over the other statuses' or patients' resources in the date's order (index_order.py).
# ``COMPARTMENT`` in place of the parameter: within each Patient whose compartment holds the resource (the ids its
# compartment parameters name, compartment.py), so that ``Patient/<id>/Observation?_sort=-date``, and every
# Observation search of a ``patient/``-scoped token, reads one run though the compartment is subject or performer.
# A string within a string: every given name of a person within each of its family names (``given@family@<hex of the
# sortable family>``), so that ``Patient?_sort=family,given`` takes a family's thousands of members in given-name
# order from their own run (engine.py ``_large_group``) instead of learning the members from the family's entries and
# passing over the other families' given names. A date within a string: a person's birth date within each of its
# family names, so that ``Patient?family=王&birthdate=1970`` (a clerk's lookup) reads the 王 born that year, not
# every 王 nor everyone born that year (engine.py ``_read_within``; family is a prefix search: within it and the few
# longer families that start with it, ``Clause.within_prefix``), and ``_sort=family,birthdate`` takes a family's
# members by date.
COMPARTMENT = "Patient"
SORTS_WITHIN: dict[str, tuple[tuple[str, str], ...]] = {
    "ServiceRequest": (("status", "authored"),),
    "DiagnosticReport": (("status", "issued"), ("subject", "date")),
    "ImagingStudy": (("status", "started"),),
    "Task": (("status", "authored-on"),),
    "Observation": (("subject", "date"), (COMPARTMENT, "date")),
    "Patient": (("family", "given"), ("family", "birthdate")),
    "Practitioner": (("family", "given"),),
}
# the layout from which the store's resources have the entries of a pair of ``SORTS_WITHIN`` (others: WITHIN_LAYOUT)
_WITHIN_SINCE = {(COMPARTMENT, "date"): 10, ("family", "given"): 11, ("family", "birthdate"): 16}
# the types whose entries a layout changed, where it changed only some: a store a layout or more behind re-indexes
# the types that any layout since changed (``reindexed_since``), every type when one of them is not listed here
_LAYOUT_TYPES = {16: ("Patient",)}
WITHIN = "@"  # joins the codes of such entries: ``<date>@<token or reference>@<value>``; in no parameter code
_META = frozenset({"_tag", "_profile", "_security", "_source"})  # on few resources, rarely sorted by
log = logging.getLogger("medunion.search")
MAX_TEXT = 100  # characters of a string value that are indexed (longer values match on these)
# bytes (UTF-8) of a resource's _text or _content held in its entry; a longer one is checked on its body. The
# benchmark's resources have at most 186; of the 210 clinical R4 examples (Patient, Observation, DiagnosticReport,
# ...), 122 have more than 1,024, 6 more than 4,096; 4,096 bytes are 1,365 Chinese characters (a long pathology
# conclusion). The entry (hex: twice that) is also in the version's ``ix``: the cost of a long text
MAX_FULL_TEXT = 4096
_INT_OFFSET = 2**63
_DATE_ENC = 34  # len("L" + 16 hex + "." + 16 hex): a date's encoding


def hexs(text: str) -> str:
    return text.encode("utf-8").hex()


def decode_hex(enc: str) -> str:
    return bytes.fromhex(enc).decode("utf-8", errors="replace")


def sortable_int(value: int) -> str:
    """16 hex digits that sort like the signed 64-bit integer ``value`` (clamped)."""
    return f"{max(0, min(value + _INT_OFFSET, 2**64 - 1)):016x}"


def num(value: float) -> str:
    """16 hex digits that sort like the double ``value`` (IEEE 754 bits, sign-adjusted)."""
    bits: int = struct.unpack(">Q", struct.pack(">d", float(value) + 0.0))[0]
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | 1 << 63
    return f"{bits:016x}"


def decode_number(enc: str) -> float:
    bits = int(enc[:16], 16)
    bits = bits ^ (1 << 63) if bits >> 63 else bits ^ 0xFFFFFFFFFFFFFFFF
    value: float = struct.unpack(">d", struct.pack(">Q", bits))[0]
    return value


def split_date(enc: str) -> tuple[int, int]:
    """``(low, high)`` of a date encoding (either form)."""
    first, second = int(enc[1:17], 16) - _INT_OFFSET, int(enc[18:_DATE_ENC], 16) - _INT_OFFSET
    return (first, second) if enc[0] == "L" else (second, first)


def start_ordered_date(rest: str) -> tuple[int, int] | None:
    """``(low, high)`` when ``rest`` (an ``ix`` item after its parameter code: ``enc|vid``) is a date's ``L``
    entry, the one each date value has (ordered by its start); None for any other entry."""
    if len(rest) <= _DATE_ENC or rest[0] != "L" or rest[17] != "." or rest[_DATE_ENC] != "|":
        return None
    return split_date(rest[:_DATE_ENC])


def sort_value(kind: str, enc: str, descending: bool) -> Any:
    """What ``_sort`` orders an entry ``param|enc|`` of a parameter of type ``kind`` by (FHIR R4 search.html#sort:
    a date by its start ascending, its end descending), None for no value (``PRESENT``: an element present without
    a searchable value; a quantity's ``C`` entry)."""
    if enc == PRESENT:
        return None
    if kind == "date":
        low, high = split_date(enc)
        return high if descending else low
    if kind == "number":
        return decode_number(enc)
    if kind == "quantity":
        return decode_number(enc[1:]) if enc.startswith("N") else None
    if kind in ("token", "string"):  # a token's code; a string's value before its "."
        return decode_hex(enc.split(".", 1)[0])
    return decode_hex(enc)


def string_enc(normalized: str, form: Callable[[str], str] = sortable) -> str:
    """The encoding of a normalized string value (``entries.normalize_string``): its sortable form (collation.py;
    ``form``: another, e.g. the text itself as a store indexed before ``PINYIN_LAYOUT`` holds it)."""
    return f"{hexs(form(normalized[:MAX_TEXT]))}."


def token_enc(system: str | None, code: str) -> str:
    return f"{hexs(code)}.{hexs(system or '')}"


def within_code(dated: str, by: str, value: str) -> str:
    """The code of the entries of ``dated`` (a date, or a given name) within ``value`` of ``by`` (``SORTS_WITHIN``;
    ``value``: ``within_value``)."""
    return f"{dated}{WITHIN}{by}{WITHIN}{value}"


def within_value(kind: str, text: str) -> str:
    """What ``SORTS_WITHIN`` entries are kept under for a value of a token (``kind``; ``text``: its code), reference
    (``text``: ``Type/id`` or a URL) or string (``text``: its sortable form) parameter: the hex of the code, of the id,
    of the sortable form (a string's encoding without its ``.``). A reference's id: a search by ``patient=123`` or
    ``subject=Patient/123`` reads one run, the other types' ``123`` passed over."""
    return hexs(text.rsplit("/", 1)[-1] if kind == "reference" else text)


def within_layout(by: str, dated: str) -> int:
    """The first layout whose resources all have the ``SORTS_WITHIN`` entries of ``dated`` within values of ``by``."""
    return _WITHIN_SINCE.get((by, dated), WITHIN_LAYOUT)


def reindexed_since(layout: int) -> tuple[str, ...] | None:
    """The types whose entries changed after ``layout`` (a store indexed under it re-indexes those to reach
    ``INDEX_LAYOUT``); None: every type."""
    changed: set[str] = set()
    for later in range(layout + 1, INDEX_LAYOUT + 1):
        if later not in _LAYOUT_TYPES:
            return None
        changed.update(_LAYOUT_TYPES[later])
    return tuple(sorted(changed))


def base_code(code: str) -> str:
    """The parameter whose entries an index code holds (``within_code``: the date; ``@absent``: "")."""
    return code.split(WITHIN, 1)[0]


def _within_entries(rtype: str, params: dict[str, SearchParameter], found: set[str]) -> set[str]:
    """The ``SORTS_WITHIN`` entries of a resource whose other entries are ``found``."""
    out: set[str] = set()
    for by, dated in SORTS_WITHIN.get(rtype, ()):
        if (by not in params and by != COMPARTMENT) or dated not in params:
            continue
        values = set()
        if by == COMPARTMENT:
            holders = {indexed_as(rtype, code)[0] for code in patient_compartment_params(rtype)}
            for entry in found:
                code, _, rest = entry.partition("|")
                if code in holders and rest != f"{PRESENT}|" and (target := decode_hex(rest[:-1])).startswith(
                        f"{COMPARTMENT}/"):
                    values.add(within_value("reference", target))
        else:
            kind = params[by].type
            for entry in found:
                if entry.startswith(f"{by}|") and (enc := entry[len(by) + 1:-1]) != PRESENT:
                    values.add(enc[:-1] if kind == "string" else  # the sortable form's hex, as it is held
                               within_value(kind, decode_hex(enc.split(".", 1)[0] if kind == "token" else enc)))
        dates = [entry[len(dated):] for entry in found
                 if entry.startswith(f"{dated}|") and entry[len(dated) + 1:-1] != PRESENT]
        if not dates and by != COMPARTMENT and params[by].type == "string":  # a family without a given name: the
            dates = [f"|{PRESENT}|"]  # group's members that sort last, found apart from the other persons'
        out.update(f"{within_code(dated, by, value)}{date}" for value in values for date in dates)
    return out


def local_reference(reference: str, base_url: str) -> str:
    """``Type/id`` for a reference to this server (relative or absolute with our base); others as written."""
    ref = reference.split("/_history/", 1)[0]
    base = base_url.rstrip("/") + "/"
    if ref.startswith(base):
        ref = ref[len(base):]
    return ref


def _tokens(entries: Iterable[str]) -> list[str]:
    out = []
    for entry in entries:  # "system|code" or "|code"; the "any system" duplicates are not needed here
        if entry.startswith(ANY_SYSTEM):
            continue
        system, _, code = entry.partition("|")
        out.append(token_enc(system, code))
    return out


def encode(parameter: SearchParameter, values: list[Any], base_url: str) -> list[str]:
    kind = parameter.type
    if kind == "string":
        return [string_enc(v) for v in values]
    if kind == "token":
        return _tokens(values)
    if kind == "reference":
        return [hexs(local_reference(v, base_url)) for v in values]
    if kind == "date":
        out = []
        for low, high in values:
            lo, hi = sortable_int(low), sortable_int(high)
            out.append(f"L{lo}.{hi}")
            if high - low >= LONG_SPAN:  # short values are found by their low bound (query.py widens by LONG_SPAN)
                out.append(f"H{hi}.{lo}")
        return out
    if kind == "number":
        return [num(v) for v in values]
    if kind == "quantity":
        out = []
        for q in values:
            out.append(f"N{num(q['v'])}")
            unit = q.get("c") or q.get("u")
            if unit:
                out.append(f"C{hexs(unit)}.{num(q['v'])}.{hexs(q.get('s') or '')}")
        return out
    return [hexs(v) for v in values]  # uri


def _names(values: list[Any]) -> list[list[str]]:
    """The names a ``phonetic`` parameter's values hold, each as its normalized texts (collation.py ``sounds``): a
    HumanName's family then given names, and its text apart; a string (an organization's name) alone."""
    out = []
    for value in values:
        if isinstance(value, str):
            out.append([value])
        elif isinstance(value, dict):
            given = [g for g in value.get("given") or [] if isinstance(g, str)]
            family = [value["family"]] if isinstance(value.get("family"), str) else []
            out += [family + given, [value["text"]] if isinstance(value.get("text"), str) else []]
    return [[normalize_string(text) for text in name] for name in out if name]


def _reference_identifiers(values: list[Any]) -> list[str]:
    out = []
    for value in values:
        if isinstance(value, dict) and isinstance(value.get("identifier"), dict):
            out += _tokens(tokens_of(value["identifier"]))
    return out


def has_absent_entries(code: str, parameter: SearchParameter) -> bool:
    """Whether a resource without an element of the parameter gets its ``@absent`` entry (the kinds a sort reads in
    index order, the ``meta`` ones aside)."""
    return parameter.type in SORTED_KINDS and code not in _META


def lacks_listed(code: str, parameter: SearchParameter) -> bool:
    """Whether a resource without an element of the parameter names it in its ``@lacks`` entry: the parameters
    with entries of their own but no ``@absent`` entries (references, uris, the ``meta`` ones)."""
    return parameter.type not in ("composite", "special") and not has_absent_entries(code, parameter)


def reads_absent_entries(rtype: str, code: str, parameter: SearchParameter) -> bool:
    """Whether searches may read the parameter's ``@absent`` entries (on a store of ``ABSENT_LAYOUT`` or later): it
    has them, and is no custom parameter (the resources stored before it came have them after its ``$reindex``
    only)."""
    return has_absent_entries(code, parameter) and code not in custom_codes(rtype)


def entry_keys(resource: dict[str, Any], *, zone: ZoneInfo, base_url: str,
               parameters: dict[str, SearchParameter] | None = None) -> list[str]:
    """Every index entry (``param|enc|``) of ``resource``, sorted and unique.

    ``_id`` is not indexed (the resource's own key serves it); composite and special parameters have no
    entries of their own, and a reference parameter that is another restricted to one type (``indexed_as``)
    has that one's entries. A parameter whose elements are present but give no searchable value (a
    CodeableConcept with text only, a Reference with display only) gets the entry ``param|~|``, so that
    ``:missing`` tells present from absent (FHIR R4 search.html#missing), and a parameter of which the resource
    has no element gets ``@absent|param|`` (``ABSENT``; ``has_absent_entries``) or is named in its one entry
    ``@lacks|.param.….|`` (``LACKS``; ``lacks_listed``). ``_text`` and ``_content`` have one entry each (none without
    text).
    """
    params = parameters if parameters is not None else parameters_for(resource.get("resourceType", ""))
    found: set[str] = set()
    rtype = resource.get("resourceType", "")
    lacking = []
    restricted = []  # (code, what its base's entries start with): a reference parameter restricted to one type
    for code, parameter in params.items():
        if code == "_id" or parameter.type in ("composite", "special"):
            continue
        base, only = indexed_as(rtype, code)
        if base != code:
            if only is not None:
                restricted.append((code, f"{base}|{hexs(only + '/')}"))
            continue
        try:
            values = values_of(parameter, resource)
        except Exception as exc:  # a FHIRPath engine error on odd data: the resource is stored, not indexed here
            log.warning("search parameter %s.%s could not be evaluated: %s", rtype, code, type(exc).__name__)
            found.add(f"{code}|{PRESENT}|")  # something is there: not missing, and no value to sort it by
            continue
        if not values:
            if has_absent_entries(code, parameter):
                found.add(f"{ABSENT}|{code}|")
            elif lacks_listed(code, parameter):
                lacking.append(code)
            continue
        encoded = encode(parameter, entries_of_values(parameter, values, zone), base_url)
        for enc in encoded or [PRESENT]:
            found.add(f"{code}|{enc}|")
        if parameter.type == "reference":
            for enc in _reference_identifiers(values):
                found.add(f"{code}:identifier|{enc}|")
        elif parameter.type == "token":
            for word in text_words([t for v in values for t in code_texts(v)]):
                found.add(f"{code}:text|{hexs(word[:MAX_TEXT])}|")
        elif code == PHONETIC and parameter.type == "string":
            found.update(f"{SOUNDS}|{hexs(heard[:MAX_TEXT])}|" for heard in sounds(_names(values)))
    lacking += [code for code, start in restricted if not any(entry.startswith(start) for entry in found)]
    if lacking:
        found.add(f"{LACKS}|.{'.'.join(sorted(lacking))}.|")
    found |= _within_entries(rtype, params, found)
    narrative = narrative_text(resource)  # in both texts: read once
    for code in FULL_TEXT:
        text = full_text(resource, code, longest=MAX_FULL_TEXT, narrative=narrative)
        if text is None or len(text.encode()) > MAX_FULL_TEXT:
            found.add(f"{code}|{PRESENT}|")  # too long to hold: found by reading the resource
        elif text:
            found.add(f"{code}|{hexs(text)}|")
    return sorted(found)
