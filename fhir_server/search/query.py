"""Parsing of FHIR search parameters (FHIR R4 search.html) into clauses over index entries.

A search is an AND of clauses; a clause is an OR of its values. Each clause says which index entries
(``param|enc|``, see ``keys.py``) satisfy it as a ``KeySet`` of ranges, so that the same object drives an
index scan and re-checks a candidate's entries. Modifiers the entries cannot decide alone add a check on the
resource body. Chains and ``_has`` are sub-searches resolved by the engine.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from fhir_server.errors import BadRequest, Issue
from fhir_server.model.types import ID_RE, SUPPORTED_TYPES
from fhir_server.search.collation import has_reading, readable, sortable, sound
from fhir_server.search.entries import (
    FULL_TEXT,
    code_texts,
    date_range,
    entries_of_values,
    full_text,
    full_text_match,
    normalize_string,
    reference_type,
    strings_of,
    text_match,
    values_of,
)
from fhir_server.search.keys import (
    ABSENT,
    ABSENT_LAYOUT,
    LACKS,
    LACKS_LAYOUT,
    LONG_SPAN,
    MAX_TEXT,
    PHONETIC,
    PHONETIC_LAYOUT,
    PINYIN_LAYOUT,
    PRESENT,
    SOUNDS,
    decode_hex,
    encode,
    hexs,
    lacks_listed,
    local_reference,
    num,
    reads_absent_entries,
    sortable_int,
    split_date,
    string_enc,
    token_enc,
    within_code,
    within_value,
)
from fhir_server.search.paths import children
from fhir_server.search.registry import SearchParameter, custom_codes, indexed_as, parameters_for, split_union

__all__ = ["MODIFIERS", "Chain", "Clause", "Include", "KeyRange", "KeySet", "SearchQuery", "Span", "parse_search",
           "query_pairs", "refuse_ignored", "types_named"]

# parameters that shape the result and select nothing (FHIR R4 search.html#other)
RESULT_PARAMETERS = frozenset({"_format", "_pretty", "_summary", "_elements", "_count", "_cursor", "_sort", "_total",
                               "_include", "_revinclude", "_contained", "_containedType"})
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# the modifiers each parameter type supports here (the CapabilityStatement lists these; ":[type]" on references)
MODIFIERS = {"string": ("exact", "contains", "missing"), "token": ("not", "text", "of-type", "missing"),
             "reference": ("[type]", "identifier", "missing"), "uri": ("below", "above", "missing"),
             "date": ("missing",), "number": ("missing",), "quantity": ("missing",), "composite": ()}
TOP = "~"  # above every character an entry uses
MICROS_PER_DAY = 86_400_000_000


@dataclass(frozen=True, slots=True)
class KeyRange:
    """Entries ``lo <= e < hi`` (strings in ``param|enc|`` space) that pass ``accept`` (if given).

    ``containing``: texts of which every entry ``accept`` passes contains one; the store filters a scan by them
    (a substring test on the index, not a read of every key of the range): ``accept`` still decides."""

    lo: str
    hi: str
    accept: Callable[[str], bool] | None = None
    containing: tuple[str, ...] = ()

    def holds(self, entry: str) -> bool:
        return self.lo <= entry < self.hi and (self.accept is None or self.accept(entry))


class Span(NamedTuple):
    """A stretch of keys to scan: ``low <= e < high``; ``containing`` as in ``KeyRange`` (empty: every key)."""

    low: str
    high: str
    containing: tuple[str, ...] = ()


def _common_prefix(a: str, b: str) -> str:
    if b.startswith(a):  # an exact value's range: ``p|enc|`` to ``p|enc|~``
        return a
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


@dataclass(frozen=True, slots=True)
class KeySet:
    """A union of key ranges; ``spans`` are its disjoint covering intervals, in order (what a scan reads)."""

    ranges: tuple[KeyRange, ...]
    # the ranges' own entries when each holds exactly one and all share one ``accept`` (``reference_entries``: a
    # chain's targets, which may be thousands): an entry is then held by a lookup, not by a test of each range
    exact: frozenset[str] | None = None
    # what every entry it holds starts with (each range's bounds' common prefix; of ``exact``, the entries'):
    # a cheap first filter
    prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prefixes: tuple[str, ...]
        if self.exact is not None:
            prefixes = (_common_prefix(min(self.exact), max(self.exact)),) if self.exact else ()  # (of them all)
        else:
            prefixes = tuple({_common_prefix(r.lo, r.hi) for r in self.ranges})
        object.__setattr__(self, "prefixes", prefixes)

    def holds(self, entry: str) -> bool:
        if self.exact is not None:
            accept = self.ranges[0].accept if self.ranges else None
            return entry in self.exact and (accept is None or accept(entry))
        return any(r.holds(entry) for r in self.ranges)

    @property
    def spans(self) -> list[Span]:
        """The disjoint stretches that cover the ranges, in order; a stretch filters by ``containing`` only when
        every range in it does (then by any of their texts)."""
        out: list[Span] = []
        for r in sorted(self.ranges, key=lambda r: r.lo):
            texts = r.containing if all(r.containing) else ()  # an empty text: every entry contains it
            if out and r.lo <= out[-1].high:
                last = out[-1]
                both = tuple(dict.fromkeys(last.containing + texts)) if last.containing and texts else ()
                out[-1] = Span(last.low, max(last.high, r.hi), both)
            else:
                out.append(Span(r.lo, r.hi, texts))
        return out


@dataclass(slots=True)
class Chain:
    """``param[:Type].rest=value``: resources whose reference ``param`` points at a match of ``queries``."""

    param: str
    queries: list[SearchQuery]


@dataclass(slots=True)
class Has:
    """``_has:Type:param:rest=value``: resources referred to by ``param`` of a ``query`` match."""

    param: str
    query: SearchQuery


@dataclass(slots=True)
class Join:
    """A chain or ``_has`` whose sub-search matches more than ``search_chain_max``: not resolved into keys or ids
    before the scan but checked on each candidate, by ``verdicts`` that the engine settles (``_settle``) for a
    batch of candidates before it checks them: by reference (``Type/id``) for a chain, whether that target matches
    its type's sub-search; by the candidate's id for ``_has``, whether a match of the sub-search refers to it
    through ``param``. ``inner``: each sub-search's type and its clauses, resolved (they may hold joins too)."""

    param: str
    inner: dict[str, list[Clause]]
    reverse: bool  # ``_has``
    verdicts: dict[str, bool] = field(default_factory=dict)

    def verdict(self, key: str) -> bool:
        found = self.verdicts.get(key)
        if found is None:
            raise AssertionError("a joined clause checked before its verdicts were settled")
        return found

    def target(self, entry: str) -> str:
        """The reference (``Type/id``) of a chain's entry of its parameter (``param|hex(Type/id)|``)."""
        return decode_hex(entry[len(self.param) + 1:-1])

    def holds_entry(self, entry: str) -> bool:
        """Whether the target of a chain's entry matches."""
        return self.verdict(self.target(entry))


def reference_entries(param: str, refs: Iterable[str], accept: Callable[[str], bool] | None = None) -> KeySet:
    """The entries of reference parameter ``param`` naming each of ``refs`` (``Type/id``), held by a lookup (a
    reference's hex holds no ``|``: an entry its range holds is the range's own)."""
    entries = sorted({f"{param}|{hexs(ref)}|" for ref in refs})
    return KeySet(tuple(KeyRange(entry, entry + TOP, accept) for entry in entries), exact=frozenset(entries))


def joined_chain(clause: Clause, join: Join, among: list[str] | None) -> Clause:
    """``clause``, a chain, checked on each candidate by ``join`` (``Join``): it scans the entries of the chain's
    parameter that name one of ``among`` (``Type/id``: targets every match is among), or, without those, every
    entry that refers to a sub-search's type, and holds those whose target matches. Its keys are those the chain
    resolved first would have (the matching targets' entries), so a page cursor holds in either form."""
    if among is not None:
        return replace(clause, chain=None, keys=reference_entries(join.param, among, join.holds_entry), join=join)
    ranges = tuple(_starting(f"{join.param}|{hexs(target + '/')}", join.holds_entry) for target in join.inner)
    return replace(clause, chain=None, keys=KeySet(ranges), join=join)


@dataclass(slots=True)
class Clause:
    """One search parameter with its values (OR). ``test`` re-checks a candidate; ``keys`` can drive a scan."""

    name: str
    keys: KeySet | None = None
    ids: frozenset[str] | None = None
    check: Callable[[dict[str, Any]], bool] | None = None
    negate: bool = False
    chain: Chain | None = None
    has: Has | None = None
    check_if: KeySet | None = None  # ``check`` only a version holding one of these entries (None: every one)
    # the clause to search by instead on a store whose resources are not all indexed under the layout
    # ``fallback_below`` (keys.py ``INDEX_LAYOUT``): one that wrote the entries this one reads (``:missing=true``
    # reads ``@absent`` entries; a string with Chinese characters, their sortable form)
    fallback: Clause | None = None
    fallback_below: int = ABSENT_LAYOUT
    # (parameter, value) that every match of a token or reference clause of one value holds, as ``SORTS_WITHIN``
    # entries name it (keys.py ``within_value``: the code, the target's id): a sort by a date may read the date's
    # entries within it (index_order.py ``within``)
    within: tuple[str, str] | None = None
    # ``within`` names the value that a string clause's matches start with (``family=王``): they all hold it only
    # when no longer value of the parameter starts so, which the engine asks the store (``_prefix_values``)
    within_prefix: bool = False
    # the longer values that start with ``within``'s (王小 beside 王): each match holds one of them or that value,
    # so a date is read within each (``read_within``); a sort walks one value's run only (none of these)
    within_also: tuple[str, ...] = ()
    # a date clause of one value with a prefix that bounds its values on one side: (parameter, prefix, the value's
    # low and high bound in µs); two or more of one parameter make a window (``date_window``)
    dated: tuple[str, str, int, int] | None = None
    # another clause drives in its place (engine ``_resolve``): a window of its date parameter, or the date's entries
    # within its value (``read_within``); it only checks
    checks_only: bool = False
    join: Join | None = None  # a chain or ``_has`` checked on each candidate (``Join``)

    @property
    def drives(self) -> bool:
        return not self.negate and not self.checks_only and (self.keys is not None or self.ids is not None)


@dataclass(frozen=True, slots=True)
class Include:
    source: str
    param: str
    targets: frozenset[str] | None  # the target types it includes (None: any)
    iterate: bool


@dataclass(slots=True)
class SearchQuery:
    rtype: str
    clauses: list[Clause] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    total: str | None = None
    summary_count: bool = False
    ignored: list[str] = field(default_factory=list)
    # parameters the type does not define, with their message in ``ignored``: in a search over several types, a
    # type that lacks a parameter others define has no match
    undefined: list[tuple[str, str]] = field(default_factory=list)
    ignored_at: dict[str, str] = field(default_factory=dict)  # each message of ``ignored``: the parameter's name
    text: str = ""


def types_named(pairs: list[tuple[str, str]]) -> list[str]:
    """The types named by ``_type`` (comma-separated, may repeat), in order."""
    return [t for k, v in pairs if k == "_type" for t in v.split(",") if t]


def query_pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query.split("?", 1)[1] if "?" in query else query, keep_blank_values=True)


def _bad(msg: str, *, code: str = "value", where: str | None = None) -> BadRequest:
    return BadRequest(msg, issues=[Issue(code=code, diagnostics=msg, expression=(where,) if where else ())])


def _split_values(value: str) -> list[str]:
    """Comma-separated OR values; ``\\,`` is a literal comma (FHIR R4 search.html#escaping)."""
    out, cur, i = [], "", 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] in ",$|\\":
            cur += value[i + 1]
            i += 2
            continue
        if ch == ",":
            out.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    out.append(cur)
    return [v for v in out if v != ""]


def _prefixed(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in _PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def _string_keys(code: str, modifier: str, normalized: list[str], form: Callable[[str], str]) -> KeySet:
    """The entries of a string search (``modifier``: "", ``exact`` or ``contains``) for normalized values whose
    entries hold ``form`` of the text (``collation.sortable``; a store indexed before layout 8: the text)."""
    if modifier == "contains":
        parts = [readable(form(n)) for n in normalized]

        def contains(e: str) -> bool:
            text = readable(decode_hex(e.split("|", 2)[1].split(".", 1)[0]))
            return any(part in text for part in parts)
        return KeySet((_starting(f"{code}|", contains, tuple(hexs(form(n)) for n in normalized)),))
    if modifier == "exact":
        return KeySet(tuple(exact_entry(f"{code}|{string_enc(n, form)}") for n in normalized))
    return KeySet(tuple(_starting(f"{code}|{hexs(form(n))}") for n in normalized))


def _plain(normalized: str) -> str:
    return normalized


def exact_entry(prefix: str) -> KeyRange:
    """The entries ``prefix|`` exactly (``param|enc``: one value; its keys follow with the resource ids)."""
    return KeyRange(prefix + "|", prefix + "|" + TOP)


def _starting(prefix: str, accept: Callable[[str], bool] | None = None,
              containing: tuple[str, ...] = ()) -> KeyRange:
    return KeyRange(prefix, prefix + TOP, accept, containing)


# ---- value types ------------------------------------------------------------------------------------------

def _decimal_bounds(text: str, where: str) -> tuple[float, float, float]:
    """The value and the half-open interval its significant digits stand for (FHIR R4 search.html#number)."""
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise _bad(f"'{text}' is not a number", where=where) from None
    if not d.is_finite():
        raise _bad(f"'{text}' is not a number", where=where)
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    half = Decimal(5) * Decimal(10) ** (exp - 1)
    return float(d), float(d - half), float(d + half)


def _number_ranges(family: str, prefix: str, text: str, where: str,
                   accept: Callable[[str], bool] | None = None) -> list[KeyRange]:
    """Ranges of ``family + num(x) ...`` entries for ``[prefix]number`` (FHIR R4 search.html#prefix)."""
    value, low, high = _decimal_bounds(text, where)
    if prefix == "eq":
        return [KeyRange(family + num(low), family + num(high), accept)]
    if prefix == "ne":  # some value outside the interval (a resource without a value does not match)
        return [KeyRange(family, family + num(low), accept), KeyRange(family + num(high), family + TOP, accept)]
    if prefix in ("gt", "sa"):
        return [KeyRange(family + num(value) + TOP, family + TOP, accept)]
    if prefix in ("lt", "eb"):
        return [KeyRange(family, family + num(value), accept)]
    if prefix == "ge":
        return [KeyRange(family + num(value), family + TOP, accept)]
    if prefix == "le":
        return [KeyRange(family, family + num(value) + TOP, accept)]
    spread = abs(value) * 0.1  # ap: within 10 % (FHIR R4 search.html#prefix)
    return [KeyRange(family + num(value - spread), family + num(value + spread) + TOP, accept)]


def _high(e: str) -> int:
    return split_date(e[e.index("|") + 1:])[1]


def _ends_after(p: str, b: int) -> list[KeyRange]:
    """Dates whose high bound is after ``b``: long ones by their H entry, short ones (under ``LONG_SPAN``, a
    second, no H entry, keys.py) by their low bound, which is then less than that before ``b``. A long one's L
    entry in that range is not held: its H entry holds it, and each would have its resource read (``birthdate=
    ge1970`` read every Patient born since twice)."""
    def short_and_after(e: str) -> bool:
        low, high = split_date(e[e.index("|") + 1:])
        return high > b and high - low < LONG_SPAN

    return [KeyRange(f"{p}|H{sortable_int(b + 1)}", f"{p}|H{TOP}"),
            KeyRange(f"{p}|L{sortable_int(b + 1 - LONG_SPAN)}", f"{p}|L{TOP}", short_and_after)]


def _ends_before(p: str, a: int) -> list[KeyRange]:
    """Dates whose high bound is before ``a``."""
    return [KeyRange(f"{p}|H", f"{p}|H{sortable_int(a)}"),
            KeyRange(f"{p}|L", f"{p}|L{sortable_int(a)}", lambda e: _high(e) < a)]


def _approximately(a: int, b: int, now: int) -> tuple[int, int]:
    """``ap``'s range for a date of bounds ``a``, ``b``: widened by a tenth of its distance from ``now``, at least a
    day (FHIR R4 search.html#prefix leaves the amount to the server)."""
    spread = max(abs(now - a) // 10, MICROS_PER_DAY)
    return a - spread, b + spread


def _date_clause(p: str, values: list[str], zone: ZoneInfo, where: str, now: int) -> list[KeyRange]:
    ranges: list[KeyRange] = []
    for raw in values:
        prefix, text = _prefixed(raw)
        found = date_range(text, zone)
        if found is None:
            raise _bad(f"'{text}' is not a FHIR date, dateTime or instant", where=where)
        a, b = found
        low_family = f"{p}|L"

        def hi_at_most(e: str, b: int = b) -> bool:
            return split_date(e[e.index("|") + 1:])[1] <= b

        if prefix == "eq":
            ranges.append(KeyRange(low_family + sortable_int(a), low_family + sortable_int(b) + TOP, hi_at_most))
        elif prefix == "ne":  # some value not within the search range; a resource without one does not match
            def outside(e: str, a: int = a, b: int = b) -> bool:
                lo, hi = split_date(e[e.index("|") + 1:])
                return not (lo >= a and hi <= b)

            ranges.append(KeyRange(low_family, low_family + TOP, outside))
        elif prefix == "gt":
            ranges += _ends_after(p, b)
        elif prefix == "lt":
            ranges.append(KeyRange(low_family, low_family + sortable_int(a)))
        elif prefix == "ge":
            ranges += [*_ends_after(p, b),
                       KeyRange(low_family + sortable_int(a), low_family + sortable_int(b) + TOP, hi_at_most)]
        elif prefix == "le":
            def before_or_within(e: str, a: int = a, b: int = b) -> bool:
                lo, hi = split_date(e[e.index("|") + 1:])
                return lo < a or hi <= b

            ranges.append(KeyRange(low_family, low_family + sortable_int(b) + TOP, before_or_within))
        elif prefix == "sa":
            ranges.append(KeyRange(low_family + sortable_int(b + 1), low_family + TOP))
        elif prefix == "eb":
            ranges += _ends_before(p, a)
        else:  # ap: overlaps the value widened by 10 % of its distance from now, at least a day
            lowest, highest = _approximately(a, b, now)

            def reaches(e: str, lowest: int = lowest) -> bool:
                return split_date(e[e.index("|") + 1:])[1] >= lowest

            ranges.append(KeyRange(low_family, low_family + sortable_int(highest) + TOP, reaches))
    return ranges


# what a value (low ``lo``, high ``hi``) must be to match a date of bounds ``a``, ``b`` with each prefix: as
# ``_date_clause`` finds them (FHIR R4 search.html#prefix; ``ne`` bounds no side)
_WINDOWED: dict[str, Callable[[int, int, int, int], bool]] = {
    "eq": lambda lo, hi, a, b: a <= lo and hi <= b,
    "gt": lambda lo, hi, a, b: hi > b,
    "lt": lambda lo, hi, a, b: lo < a,
    "ge": lambda lo, hi, a, b: hi > b or (a <= lo and hi <= b),
    "le": lambda lo, hi, a, b: lo <= b and (lo < a or hi <= b),
    "sa": lambda lo, hi, a, b: lo > b,
    "eb": lambda lo, hi, a, b: hi < a,
    "ap": lambda lo, hi, a, b: hi >= a and lo <= b,  # (``a``, ``b``: the range ``_approximately`` widened)
}


def date_window(clauses: list[Clause], longest: int) -> Clause | None:
    """One clause that can drive a search by several ``dated`` clauses of one date parameter (AND) when each
    resource has at most one value of it: the values whose start lies where every clause allows it, read by their
    ``L`` entries, and that meet every clause. A clause that bounds the end (``gt``, ``ge``) bounds the start by
    ``longest``, the longest span of the parameter's values (date_spans.py). None when the clauses bound no
    window. The clauses themselves stay, to check each candidate, but no longer drive: the window holds no value
    that the ``le``, ``lt`` or ``eq`` clause's scan does not, and with the longest span short (a day, a second) few
    that the ``ge`` or ``gt`` clause's does not; probing them too cost a search of an hour of results a probe of
    each at every size (engine ``_PROBE_LIMITS``)."""
    code = clauses[0].dated[0] if clauses[0].dated else ""
    bottom, top = -(1 << 62), 1 << 62
    start, end = bottom, top  # bounds of a matching value's low bound
    for clause in clauses:
        assert clause.dated is not None and clause.dated[0] == code
        _, prefix, a, b = clause.dated
        if prefix == "eq":
            start, end = max(start, a), min(end, b)
        elif prefix == "sa":
            start = max(start, b + 1)
        elif prefix in ("gt", "ge"):
            start = max(start, b + 1 - longest if prefix == "gt" else min(a, b + 1 - longest))
        elif prefix in ("lt", "eb"):
            end = min(end, a - 1)
        elif prefix == "le":
            end = min(end, b)
        elif prefix == "ap":  # ends at a or later, starts at b or earlier: alone, a window of its own
            start, end = max(start, a - longest), min(end, b)
    if start == bottom and end == top:
        return None
    tests = [(_WINDOWED[c.dated[1]], c.dated[2], c.dated[3]) for c in clauses if c.dated is not None]

    def within(e: str) -> bool:
        lo, hi = split_date(e[e.index("|") + 1:])
        return all(test(lo, hi, a, b) for test, a, b in tests)

    family = f"{code}|L"
    low = family if start == bottom else family + sortable_int(start)
    high = family + TOP if end == top else family + sortable_int(end) + TOP
    name = "&".join(c.name for c in clauses)
    return Clause(name, keys=KeySet((KeyRange(low, high, within),) if low < high else ()))


def keyed_code(clause: Clause) -> str | None:
    """The one parameter code whose entries every key range of ``clause`` reads (``authored`` of
    ``authored|L…``), when none filters by a substring and they are not a set of exact entries; else None."""
    keys = clause.keys
    if keys is None or keys.exact is not None or not keys.ranges:
        return None
    code = keys.ranges[0].lo.partition("|")[0]
    head = f"{code}|"
    held = all(r.lo.startswith(head) and r.hi.startswith(head) and not r.containing for r in keys.ranges)
    return code if held else None


def read_within(clause: Clause, code: str, by: str, values: Iterable[str]) -> Clause:
    """``clause``, whose ranges all read the entries of ``code`` (``keyed_code``), read instead from that code's
    entries kept again within each of ``values`` of ``by`` (keys.py ``SORTS_WITHIN``, ``within_code``:
    ``authored@status@<hex(active)>|L…``): each range's bounds moved under that code, with its own test (which
    reads an entry after its first ``|``, the same in both). It holds a resource that has an entry of the
    clause's ranges and one of those values; beside a clause every match of which holds one of them
    (``Clause.within``, ``within_also``; which still checks), it matches what the clause did, from the entries of
    those values alone."""
    assert clause.keys is not None
    at = len(code) + 1
    ranges = tuple(replace(r, lo=moved + r.lo[at:], hi=moved + r.hi[at:])
                   for moved in (f"{within_code(code, by, value)}|" for value in values) for r in clause.keys.ranges)
    return replace(clause, keys=KeySet(ranges))


def _token_ranges(p: str, value: str) -> list[KeyRange]:
    if "|" not in value:
        return [_starting(f"{p}|{hexs(value)}.")]
    system, _, code = value.partition("|")
    if code == "":  # "system|": any code in that system
        want = hexs(system)
        return [_starting(f"{p}|", lambda e: e.rstrip("|").rsplit(".", 1)[-1] == want, (f".{want}|",))]
    return [exact_entry(f"{p}|{token_enc(system, code)}")]


def _reference_ranges(p: str, parameter: SearchParameter, value: str, type_modifier: str | None,
                      base_url: str, only: str | None = None) -> list[KeyRange]:
    """``only``: a derived parameter's type (Observation ``patient``): other references never match."""
    ref = local_reference(value, base_url)
    if only is not None and "/" in value and reference_type(ref) != only:
        return []
    if type_modifier is not None:
        if "/" in ref:
            raise _bad(f"With the modifier :{type_modifier} the value is an id, not '{value}'", where=p)
        return [exact_entry(f"{p}|{hexs(f'{type_modifier}/{ref}')}")]
    if "/" in ref or ":" in ref:
        return [exact_entry(f"{p}|{hexs(ref)}")]
    targets = parameter.targets or tuple(SUPPORTED_TYPES)
    return [exact_entry(f"{p}|{hexs(ref)}"), *(exact_entry(f"{p}|{hexs(f'{t}/{ref}')}") for t in targets)]


def _quantity_ranges(p: str, raw: str, where: str) -> list[KeyRange]:
    prefix, text = _prefixed(raw)
    number, _, rest = text.partition("|")
    system, _, code = rest.partition("|")
    if code:
        want = hexs(system)
        accept = None if not system else (lambda e: e.rstrip("|").rsplit(".", 1)[-1] == want)
        return _number_ranges(f"{p}|C{hexs(code)}.", prefix, number, where, accept)
    if system:
        raise _bad(f"'{raw}': a quantity with a system needs a code (number|system|code)", where=where)
    return _number_ranges(f"{p}|N", prefix, number, where)


def _string_check(parameter: SearchParameter, wanted: list[str]) -> Callable[[dict[str, Any]], bool]:
    def check(resource: dict[str, Any]) -> bool:
        return any(s in wanted for v in values_of(parameter, resource) for s in strings_of(v))
    return check


def _text_check(parameter: SearchParameter, wanted: list[str]) -> Callable[[dict[str, Any]], bool]:
    """``:text`` on tokens: the text of a CodeableConcept, a Coding's display or an Identifier's type text."""
    def check(resource: dict[str, Any]) -> bool:
        found = [normalize_string(t) for v in values_of(parameter, resource) for t in code_texts(v)]
        return any(text_match(t, w) for t in found for w in wanted)
    return check


def _of_type_check(parameter: SearchParameter, wanted: list[tuple[str, str, str]]) -> Callable[[dict[str, Any]], bool]:
    def check(resource: dict[str, Any]) -> bool:
        for ident in values_of(parameter, resource):
            if not isinstance(ident, dict):
                continue
            codings = (ident.get("type") or {}).get("coding") or []
            for system, code, value in wanted:
                if ident.get("value") == value and any(
                        isinstance(c, dict) and c.get("system") == system and c.get("code") == code for c in codings):
                    return True
        return False
    return check


def _uri_above(p: str, value: str) -> list[KeyRange]:
    out = [exact_entry(f"{p}|{hexs(value)}")]
    cut = value
    while "/" in cut.rstrip("/"):
        cut = cut.rstrip("/").rsplit("/", 1)[0]
        if cut.endswith(":/") or cut.endswith(":"):
            break
        out.append(exact_entry(f"{p}|{hexs(cut)}"))
    return out


_KM = {"km": 1.0, "m": 0.001, "[mi_i]": 1.609344, "mi": 1.609344}
NEAR_DEFAULT_KM = 10.0


def _near_value(value: str, name: str) -> tuple[float, float, float]:
    """``latitude|longitude|distance|units`` (FHIR R4 location.html#positional; units km when omitted, the
    distance NEAR_DEFAULT_KM when omitted) as (latitude, longitude, km)."""
    parts = [*value.split("|"), "", "", ""]  # absent parts are empty
    units = parts[3] or "km"
    if units not in _KM:
        raise _bad(f"{name}: units must be km, m or [mi_i], not '{units}'", where=name)
    try:
        lat, lon = float(parts[0]), float(parts[1])
        km = float(parts[2]) * _KM[units] if parts[2] else NEAR_DEFAULT_KM
    except ValueError:
        raise _bad(f"{name} takes latitude|longitude|distance|units, e.g. 31.19|121.43|5|km", where=name) from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and km >= 0):
        raise _bad(f"{name}: latitude -90..90, longitude -180..180, distance not negative", where=name)
    return lat, lon, km


def _near_check(parameter: SearchParameter, points: list[tuple[float, float, float]]
                ) -> Callable[[dict[str, Any]], bool]:
    """Locations whose position is within the distance of one of ``points`` (great-circle, WGS84 mean
    radius); a check on each candidate, positions are not indexed."""
    def check(resource: dict[str, Any]) -> bool:
        for position in values_of(parameter, resource):
            if not isinstance(position, dict):
                continue
            lat, lon = position.get("latitude"), position.get("longitude")
            if not isinstance(lat, int | float) or not isinstance(lon, int | float):
                continue
            for plat, plon, km in points:
                a = (math.sin(math.radians(lat - plat) / 2) ** 2 + math.cos(math.radians(plat))
                     * math.cos(math.radians(lat)) * math.sin(math.radians(lon - plon) / 2) ** 2)
                if 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a))) <= km:
                    return True
        return False
    return check


def _full_text_clause(name: str, code: str, wanted: list[list[str]]) -> Clause:
    """``_text`` and ``_content``: a scan of the parameter's entries (keys.py), which the store filters by the hex
    of the longest word of each value, each entry then matched on the text it holds (exactly: the resource's
    whole text); the entries of texts too long to hold (``~``) are all candidates, checked on their body."""
    def accept(e: str) -> bool:
        return full_text_match(decode_hex(e.split("|", 2)[1]), wanted)

    def check(resource: dict[str, Any]) -> bool:
        return full_text_match(full_text(resource, code) or "", wanted)

    literals = tuple(hexs(max(words, key=len)) for words in wanted)
    too_long = exact_entry(f"{code}|{PRESENT}")
    return Clause(name, keys=KeySet((_starting(f"{code}|", accept, literals), too_long)), check=check,
                  check_if=KeySet((too_long,)))


# ---- parameters -------------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, *, zone: ZoneInfo, base_url: str, depth: int = 0) -> None:
        self.zone = zone
        self.base_url = base_url
        self.depth = depth

    def clause(self, rtype: str, name: str, value: str, ignored: list[str]) -> Clause | None:
        if name.startswith("_has:"):
            return self._has(rtype, name, value, ignored)
        code, _, modifier = name.partition(":")
        chained = ""
        if "." in name:
            head, _, chained = name.partition(".")
            code, _, modifier = head.partition(":")
        if code in FULL_TEXT and not chained:
            if modifier:
                raise _bad(f"{code} takes no modifier", code="not-supported", where=name)
            words = [[normalize_string(w) for w in v.split()] for v in _split_values(value)]
            if not any(words):
                raise _bad(f"Search parameter '{name}' has no value", where=name)
            return _full_text_clause(name, code, [w for w in words if w])
        params = parameters_for(rtype)
        parameter = params.get(code)
        if parameter is None:
            raise _Undefined(code, rtype)
        if value == "":
            raise _bad(f"Search parameter '{name}' has no value", where=name)
        asked = code
        code, only = indexed_as(rtype, code)  # e.g. Observation "patient" is "subject" restricted to Patient
        if only is not None:
            parameter = replace(params[code], targets=(only,))
        if chained:
            return self._chain(rtype, parameter, code, modifier or None, chained, value, ignored)
        if modifier == "missing":
            if value not in ("true", "false"):
                raise _bad(f"{name} takes true or false, not '{value}'", where=name)
            present = (_starting(f"{code}|{hexs(only + '/')}"),) if only else (
                _starting(f"{code}|"), exact_entry(f"{code}|{PRESENT}"))
            scan = Clause(name, keys=KeySet(present), negate=value == "true")  # true: every resource read
            if value == "false":
                return scan
            if reads_absent_entries(rtype, code, parameter):
                return Clause(name, keys=KeySet((exact_entry(f"{ABSENT}|{code}"),)), fallback=scan)
            # the resources whose ``@lacks`` entry names it (keys.py; a parameter restricted to one type of
            # reference by its own code); a custom parameter's, only after its $reindex
            if lacks_listed(code, parameter) and asked not in custom_codes(rtype):
                listed = f".{asked}."
                lacking = _starting(f"{LACKS}|", lambda entry: listed in entry, (listed,))
                return Clause(name, keys=KeySet((lacking,)), fallback=scan, fallback_below=LACKS_LAYOUT)
            return scan
        if code == "_id":
            if modifier:
                raise _bad(f"The modifier :{modifier} is not supported on _id", code="not-supported", where=name)
            values = _split_values(value)
            bad = [v for v in values if not ID_RE.match(v)]
            if bad:
                raise _bad(f"_id values must be FHIR ids (A-Z a-z 0-9 - ., 1-64), not '{bad[0]}'", where=name)
            return Clause(name, ids=frozenset(values))
        return self._typed(rtype, parameter, code, modifier, value, name, only)

    def _typed(self, rtype: str, parameter: SearchParameter, code: str, modifier: str, value: str,
               name: str, only: str | None = None) -> Clause | None:
        kind = parameter.type
        values = _split_values(value)
        if kind == "special":
            if code != "near":
                raise _Unsupported(f"Search parameter '{code}' ({kind}) is not supported by this hub")
            if modifier:
                raise _bad_modifier(modifier, kind, name)
            return Clause(name, check=_near_check(parameter, [_near_value(v, name) for v in values]))
        if kind == "composite":
            if modifier:
                raise _bad_modifier(modifier, kind, name)
            return self._composite(rtype, parameter, value, name)
        if kind == "string":
            if modifier not in ("", "exact", "contains"):
                raise _bad_modifier(modifier, kind, name)
            normalized = [normalize_string(v)[:MAX_TEXT] for v in values]
            check = _string_check(parameter, values) if modifier == "exact" else None
            keys = _string_keys(code, modifier, normalized, sortable)
            one = within_value(kind, sortable(normalized[0])) if len(normalized) == 1 and modifier != "contains" else ""
            clause = Clause(name, keys=keys, check=check, within=(code, one) if one else None,
                            within_prefix=modifier == "")
            if any(has_reading(n) for n in normalized):  # a store indexed before layout 8 holds the plain text
                both = keys.ranges + _string_keys(code, modifier, normalized, _plain).ranges
                clause.fallback = Clause(name, keys=KeySet(both), check=check)
                clause.fallback_below = PINYIN_LAYOUT
            if code == PHONETIC and not modifier:  # by how the names sound (keys.py ``SOUNDS``), by prefix
                heard = [sound(n)[:MAX_TEXT] for n in normalized]
                if not all(heard):
                    raise _bad(f"{name} takes a name in letters or Chinese characters, not '{value}'", where=name)
                return Clause(name, keys=KeySet(tuple(_starting(f"{SOUNDS}|{hexs(h)}") for h in heard)),
                              fallback=clause, fallback_below=PHONETIC_LAYOUT)
            return clause
        if kind == "token":
            if modifier in ("in", "not-in", "above", "below"):
                raise _bad(f"The modifier :{modifier} needs a terminology server; none is loaded in this hub",
                           code="not-supported", where=name)
            if modifier == "text":  # driven by the first word of each value (keys.py), checked on the text
                texts = [" ".join(normalize_string(v).split()) for v in values]
                if not all(texts):
                    raise _bad(f"Search parameter '{name}' has no value", where=name)
                keys = KeySet(tuple(_starting(f"{code}:text|{hexs(t.split()[0][:MAX_TEXT])}") for t in texts))
                # a value of one word (up to MAX_TEXT characters) matches exactly when an entry of the current
                # version starts with it (entries.text_words): only longer values need the text read
                whole = all(" " not in t and len(t) <= MAX_TEXT for t in texts)
                return Clause(name, keys=keys, check=None if whole else _text_check(parameter, texts))
            if modifier == "of-type":
                wanted = []
                for v in values:
                    parts = v.split("|")
                    if len(parts) != 3 or not all(parts):
                        raise _bad(f"{name} takes system|code|value, not '{v}'", where=name)
                    wanted.append((parts[0], parts[1], parts[2]))
                keys = KeySet(tuple(_starting(f"{code}|{hexs(w[2])}.") for w in wanted))
                return Clause(name, keys=keys, check=_of_type_check(parameter, wanted))
            if modifier not in ("", "not"):
                raise _bad_modifier(modifier, kind, name)
            keys = KeySet(tuple(r for v in values for r in _token_ranges(code, v)))
            one = values[0].rpartition("|")[2] if len(values) == 1 and not modifier else ""
            return Clause(name, keys=keys, negate=modifier == "not",
                          within=(code, within_value(kind, one)) if one else None)
        if kind == "reference":
            if modifier == "identifier":
                return Clause(name, keys=KeySet(tuple(r for v in values for r in _token_ranges(f"{code}:identifier",
                                                                                                v))))
            type_modifier = None
            if modifier:
                if modifier not in SUPPORTED_TYPES:
                    raise _bad_modifier(modifier, kind, name)
                type_modifier = modifier
            ranges = [r for v in values
                      for r in _reference_ranges(code, parameter, v, type_modifier, self.base_url, only)]
            one = local_reference(values[0], self.base_url) if len(values) == 1 and ranges else ""
            return Clause(name, keys=KeySet(tuple(ranges)), within=(code, within_value(kind, one)) if one else None)
        if kind == "uri":
            if modifier == "below":
                return Clause(name, keys=KeySet(tuple(_starting(f"{code}|{hexs(v)}") for v in values)))
            if modifier == "above":
                return Clause(name, keys=KeySet(tuple(r for v in values for r in _uri_above(code, v))))
            if modifier:
                raise _bad_modifier(modifier, kind, name)
            return Clause(name, keys=KeySet(tuple(exact_entry(f"{code}|{hexs(v)}") for v in values)))
        if modifier:
            raise _bad_modifier(modifier, kind, name)
        if kind == "date":
            now = int(time.time() * 1_000_000)
            clause = Clause(name, keys=KeySet(tuple(_date_clause(code, values, self.zone, name, now))))
            prefix, text = _prefixed(values[0])
            if len(values) == 1 and prefix in _WINDOWED and (bounds := date_range(text, self.zone)) is not None:
                clause.dated = (code, prefix, *(_approximately(*bounds, now) if prefix == "ap" else bounds))
            return clause
        all_ranges: list[KeyRange] = []
        for v in values:
            if kind == "number":
                all_ranges += _number_ranges(f"{code}|", *_prefixed(v), name)
            else:
                all_ranges += _quantity_ranges(code, v, name)
        return Clause(name, keys=KeySet(tuple(all_ranges)))

    def _composite(self, rtype: str, parameter: SearchParameter, value: str, name: str) -> Clause:
        """``code-value-quantity=http://loinc.org|8480-6$gt100``: the components must hold in one element
        (FHIR R4 search.html#composite). Driven by the first component's entries, checked on the body."""
        params = parameters_for(rtype)
        parts_of: list[tuple[SearchParameter, str]] = []
        for component in parameter.components:
            found = next(((c, p) for c, p in params.items() if p.url == component.definition), None)
            if found is None:
                raise _Unsupported(f"Search parameter '{name}': a component is not defined for {rtype}")
            parts_of.append((found[1], found[0]))
        alternatives: list[list[Clause]] = []
        for one in _split_values(value):
            pieces = _split_composite(one)
            if len(pieces) != len(parts_of):
                raise _bad(f"{name} takes {len(parts_of)} values joined by $, not '{one}'", where=name)
            clauses = []
            for (component_parameter, component_code), piece in zip(parts_of, pieces, strict=True):
                clause = self._typed(rtype, component_parameter, component_code, "", piece.replace(",", "\\,"),
                                     name)
                assert clause is not None and clause.keys is not None
                clauses.append(clause)
            alternatives.append(clauses)
        expressions = [c.expression for c in parameter.components]
        zone, base_url = self.zone, self.base_url

        def check(resource: dict[str, Any]) -> bool:
            for element in values_of(parameter, resource):
                for clauses in alternatives:
                    if all(_component_holds(resource, element, expression, component_parameter, component_code,
                                            clause, zone, base_url)
                           for expression, (component_parameter, component_code), clause in zip(
                               expressions, parts_of, clauses, strict=True)):
                        return True
            return False

        first = KeySet(tuple(r for clauses in alternatives for r in clauses[0].keys.ranges))  # type: ignore[union-attr]
        return Clause(name, keys=first, check=check)

    def _chain(self, rtype: str, parameter: SearchParameter, code: str, type_modifier: str | None, rest: str,
               value: str, ignored: list[str]) -> Clause:
        if parameter.type != "reference":
            raise _bad(f"'{code}' is not a reference parameter and cannot be chained", where=f"{code}.{rest}")
        if self.depth >= 4:
            raise _bad("Chains and _has may nest 4 levels at most", code="too-costly", where=f"{code}.{rest}")
        targets = [type_modifier] if type_modifier else list(parameter.targets)
        inner_code = rest.split(":", 1)[0].split(".", 1)[0]
        targets = [t for t in targets if t in SUPPORTED_TYPES and (inner_code in parameters_for(t) or
                                                                   rest.startswith("_has:"))]
        if not targets:
            raise _bad(f"No target type of '{code}' has a search parameter '{inner_code}'", where=f"{code}.{rest}")
        inner = _Parser(zone=self.zone, base_url=self.base_url, depth=self.depth + 1)
        queries = []
        for target in targets:
            query = SearchQuery(rtype=target, text=f"{target}?{rest}={value}")  # (what an error names)
            try:
                found = inner.clause(target, rest, value, [])
            except _Undefined:
                continue
            if found is None:
                continue
            query.clauses.append(found)
            queries.append(query)
        return Clause(f"{code}.{rest}", chain=Chain(code, queries))

    def _has(self, rtype: str, name: str, value: str, ignored: list[str]) -> Clause:
        parts = name.split(":", 3)
        if len(parts) < 4 or not parts[1] or not parts[2] or not parts[3]:
            raise _bad(f"'{name}': _has takes the form _has:Type:reference-parameter:parameter=value", where=name)
        _, source, param, rest = parts
        param_code = param
        if source not in SUPPORTED_TYPES:
            raise _bad(f"'{source}' in {name} is not a resource type this hub serves", where=name)
        ref = parameters_for(source).get(param_code)
        if ref is None or ref.type != "reference":
            raise _bad(f"'{param}' is not a reference search parameter of {source}", where=name)
        param, only = indexed_as(source, param_code)
        if only is not None and only != rtype:
            return Clause(name, ids=frozenset())  # e.g. Group?_has:Observation:patient:…: never a Patient
        if self.depth >= 4:
            raise _bad("Chains and _has may nest 4 levels at most", code="too-costly", where=name)
        inner = _Parser(zone=self.zone, base_url=self.base_url, depth=self.depth + 1)
        query = SearchQuery(rtype=source, text=f"{source}?{rest}={value}")
        try:
            found = inner.clause(source, rest, value, ignored)
        except _Undefined as exc:  # dropped and reported, as at the top level
            ignored.append(str(exc))
            found = None
        if found is not None:
            query.clauses.append(found)
        return Clause(name, has=Has(param, query))


class _Unsupported(Exception):
    pass


class _Undefined(_Unsupported):
    """A search parameter the resource type does not define."""

    def __init__(self, code: str, rtype: str) -> None:
        super().__init__(f"Search parameter '{code}' is not defined for {rtype}")
        self.code = code


def _split_composite(value: str) -> list[str]:
    """The ``$``-separated parts of one composite value (``\\$`` is a literal dollar)."""
    parts, cur, i = [], "", 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            cur += value[i:i + 2]
            i += 2
            continue
        if value[i] == "$":
            parts.append(cur)
            cur = ""
        else:
            cur += value[i]
        i += 1
    parts.append(cur)
    return parts


_STEP = re.compile(r"^(?P<path>[a-z][A-Za-z]*(?:\.[a-z][A-Za-z]*)*)(?:\.as\((?P<cast>[A-Za-z]+)\))?$")


def _component_values(resource: dict[str, Any], element: Any, expression: str) -> list[Any]:
    """A component's values in one element: ``code``, ``value.as(Quantity) | value.as(Range)``,
    ``%resource.referenceSeq.chromosome`` (the component expressions R4 uses)."""
    out: list[Any] = []
    for part in split_union(expression):
        start: Any = element
        if part.startswith("%resource."):
            start, part = resource, part[len("%resource."):]
        m = _STEP.match(part)
        if m is None:
            continue
        items = [start]
        steps = m.group("path").split(".")
        for i, step in enumerate(steps):
            items = children(items, step, m.group("cast") if i == len(steps) - 1 else None)
        out += items
    return out


def _component_holds(resource: dict[str, Any], element: Any, expression: str, parameter: SearchParameter,
                     code: str, clause: Clause, zone: ZoneInfo, base_url: str) -> bool:
    """Does the component (``code``, its ``clause``) hold for the values ``expression`` selects in ``element``?"""
    assert clause.keys is not None
    values = entries_of_values(parameter, _component_values(resource, element, expression), zone)
    return any(clause.keys.holds(f"{code}|{enc}|") for enc in encode(parameter, values, base_url))


def _bad_modifier(modifier: str, kind: str, name: str) -> BadRequest:
    return _bad(f"The modifier :{modifier} is not supported on {kind} parameters", code="not-supported", where=name)


def _includes(rtype: str, values: list[str], name: str, *, reverse: bool, searched: frozenset[str]) -> list[Include]:
    out = []
    iterate = name.endswith(":iterate") or name.endswith(":recurse")
    for value in values:
        parts = value.split(":")
        if value == "*":
            out.append(Include(rtype, "*", None, iterate))
            continue
        if len(parts) not in (2, 3) or parts[0] not in SUPPORTED_TYPES:
            raise _bad(f"{name}={value}: expected SourceType:parameter[:TargetType]", where=name)
        source, param = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        definition = parameters_for(source).get(param)
        if param != "*" and (definition is None or definition.type != "reference"):
            raise _bad(f"{name}={value}: '{param}' is not a reference search parameter of {source}", where=name)
        param, only = indexed_as(source, param)
        target = target or only
        if not reverse and not iterate and source not in searched:
            what = rtype if len(searched) == 1 else "one of the types searched"
            raise _bad(f"{name}={value}: the source type must be {what} (or use {name}:iterate)", where=name)
        out.append(Include(source, param, None if target is None else frozenset((target,)), iterate))
    return out


def refuse_ignored(ignored: list[str], at: dict[str, str]) -> None:
    """``Prefer: handling=strict``: what lenient handling would ignore and report is a 400 instead, each issue
    at the parameter (``at``: message -> parameter name as sent)."""
    if ignored:
        raise BadRequest(ignored[0], issues=[Issue(code="not-supported", diagnostics=m,
                                                   expression=(at[m],) if m in at else ()) for m in ignored])


def parse_search(rtype: str, pairs: list[tuple[str, str]], *, zone: ZoneInfo, base_url: str,
                 strict: bool = False, searched: frozenset[str] | None = None) -> SearchQuery:
    """The search ``pairs`` (from a query string or form) of type ``rtype``; ``searched``: every type of a search
    over several (an ``_include`` may name any of them as its source).

    Unknown parameters are listed in ``ignored`` (``strict``: a 400 instead, FHIR R4 search.html#errors).
    """
    parser = _Parser(zone=zone, base_url=base_url)
    query = SearchQuery(rtype=rtype)
    canonical = []
    for name, value in pairs:
        base_name = name.split(":", 1)[0]
        if base_name in ("_include", "_revinclude"):
            found = _includes(rtype, _split_values(value), name, reverse=base_name == "_revinclude",
                              searched=searched or frozenset({rtype}))
            (query.revincludes if base_name == "_revinclude" else query.includes).extend(found)
            continue
        if name == "_sort":
            for key in _split_values(value):
                desc = key.startswith("-")
                code = key.lstrip("-")
                if code not in parameters_for(rtype) and any(code in parameters_for(t) for t in searched or ()):
                    query.sort.append((code, desc))  # another type searched has it: this type has no value
                    continue
                if code not in parameters_for(rtype) or parameters_for(rtype)[code].type in ("composite", "special"):
                    raise _bad(f"_sort: '{code}' is not a search parameter of {rtype}", where="_sort")
                query.sort.append((code, desc))
            continue
        if name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise _bad(f"_total takes none, estimate or accurate, not '{value}'", where="_total")
            query.total = value
            continue
        if name == "_summary" and value == "count":
            query.summary_count = True
            continue
        if name in RESULT_PARAMETERS or name == "_type":
            continue
        before = len(query.ignored)
        try:
            clause = parser.clause(rtype, name, value, query.ignored)
        except _Unsupported as exc:
            query.ignored.append(str(exc))
            if isinstance(exc, _Undefined):
                query.undefined.append((exc.code, query.ignored[-1]))
            clause = None
        for message in query.ignored[before:]:
            query.ignored_at.setdefault(message, name)
        if clause is None:
            continue
        query.clauses.append(clause)
        canonical.append(f"{name}={value}")
    if strict:
        refuse_ignored(query.ignored, query.ignored_at)
    query.text = f"{rtype}?{'&'.join(sorted(canonical))}"
    return query

