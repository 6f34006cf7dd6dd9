"""``_sort`` by one parameter read in the order of its index entries.

A sorted search over many matches is then paged like an unsorted one: a page reads the parameter's entries from
its cursor on and the resources they name, at any depth and however many resources match, instead of every
match being read and sorted for each page (engine.py keeps that for a few matches; with several sort keys it
walks the first here and sorts each run of one value of it by the others).

The entries of the kinds served here sort by value in the store (search/keys.py): numbers (``n(value)``),
quantities (``N n(value)``), tokens (``hex(code).hex(system)``: the ``.`` after the code sorts below every hex
digit, so a code sorts before its extensions), strings (``hex(normalized value).``, likewise; the order of the
normalized values, case and accents folded, as the sort in memory) and dates by their low bound
(``L n(low).n(high)``). References and uris end with nothing below the hex digits: their key order is not
their values' order, and they are sorted in memory. FHIR R4
search.html#sort orders a resource by its lowest value ascending and its highest descending, a date by its start
ascending and its end descending, so a resource is emitted at one entry, its first in the order of the walk's
*pairs* (value, key); its other entries are passed over (``canonical``). A resource with several values of the
parameter says so in the keys of those others (``order_marks``: ``^a`` after the vid of an entry an ascending sort
passes over, ``^d`` descending), so that the walk passes over them without reading the resource: names held in
pinyin and in characters made the last pages of ``_sort=family`` read every Patient at its second name.

A descending date is ordered by its high bound: a date spanning a second or more (``LONG_SPAN``) has an entry in
that order (``H n(high).n(low)``); a shorter one is read by its low bound and held until no entry still to be read
can end later (it ends less than a second after it starts). ``_lastUpdated`` holds instants (low = high: the hub
writes them to the millisecond, search/entries.py gives a fractional second no span), read by their low bound both
ways.

Resources with the same value come in the order of their entries' keys (for one code or instant, by id), which
FHIR leaves open. Resources without a sortable value come last in either order: those without the element
(``@absent`` entries, keys.py) then those with it but no value (``~``), each by id, read from those entries
(``tail``); on a store not yet indexed with ``@absent`` entries, and for a custom parameter (its entries come
with its ``$reindex``), by id from the type's resources (engine.py). ``_id`` itself is the order of the
resources' own keys.

A date of ``SORTS_WITHIN`` (keys.py) also has its entries within each status code or subject id of the resource
(``authored@status@<hex(active)>|L…|``): ``within`` gives the order of those, for a search that names one such
value, which then reads only its own resources' dates; those without a date it reads from the date's own ``tail``.
A given name has its entries within each family name of the person (``within_group``): a sort by family then
given takes a family's members in given-name order from them.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from fhir_server.search.keys import (
    ABSENT,
    LONG_SPAN,
    PRESENT,
    SORTED_KINDS,
    SORTS_WITHIN,
    base_code,
    hexs,
    reads_absent_entries,
    sort_value,
    sortable_int,
    split_date,
    within_code,
)
from fhir_server.search.registry import indexed_as, parameters_for
from fhir_server.storage import ResourceStore, Version
from fhir_server.storage.versions import index_key, items_starting, split_item

__all__ = ["IndexOrder", "index_order", "marks_of", "order_marks", "within", "within_group"]

Pair = tuple[Any, str]  # (sort value, index key)
# what follows the vid in the ``ix`` item (and ``search_index`` key) of an entry an ascending (False) or descending
# (True) sort passes over: ``^`` is in no type, parameter code, encoding, id or vid
PASSED_OVER = {False: "^a", True: "^d"}
# after ``Type|param|`` in a position of a descending date's walk (``start_of``): no date encoding starts with it
AT_VALUE = "@"


def marks_of(vid: str) -> str:
    """The marks of an ``ix`` item's vid part (``12^a``: ``^a``)."""
    return vid.lstrip("0123456789")


def _marked(key: str, mark: str) -> bool:
    """Whether the ``search_index`` key carries the mark (after its vid, the text after its last ``|``)."""
    return mark in key[key.rindex("|"):]


def order_marks(rtype: str, entries: list[str]) -> dict[str, str]:
    """The marks (``PASSED_OVER``, in that order) of the entries (``param|enc|``) of one resource at which a sort
    does not emit it, because another entry of the same parameter comes first in the sort's order (``canonical``);
    entries with no mark are absent. Only parameters with two values or more have marks."""
    params = parameters_for(rtype)
    by_param: dict[str, list[str]] = {}
    for entry in entries:
        by_param.setdefault(entry[:entry.index("|")], []).append(entry)
    marks: dict[str, str] = {}
    for code, group in by_param.items():
        parameter = params.get(base_code(code))  # a date within a status or subject sorts as the date
        if len(group) < 2 or parameter is None or parameter.type not in SORTED_KINDS:
            continue
        kind = parameter.type
        for descending in (False, True):
            if kind == "date":  # by the bounds the walk reads (``value``), which the encodings do not sort by
                order = index_order(rtype, code, descending)
                assert order is not None  # a date parameter's entries are its own (``indexed_as``)
                pairs = [(value, e) for e in group if (value := order.value(e[len(code) + 1:-1])) is not None]
                standing = [e for _, e in pairs]
                first = (max(pairs) if descending else min(pairs))[1] if pairs else ""
            else:  # those with a value (a quantity's N entries) sort like their pairs (keys.py): by the entry
                standing = [e for e in group if e[len(code) + 1] != PRESENT and (kind != "quantity" or
                                                                                  e[len(code) + 1] == "N")]
                first = (max(standing) if descending else min(standing)) if standing else ""
            if len(standing) < 2:
                continue
            for entry in standing:  # keys of one resource compare as their entries do
                if entry != first:
                    marks[entry] = marks.get(entry, "") + PASSED_OVER[descending]
    return marks


def index_order(rtype: str, code: str, descending: bool) -> IndexOrder | None:
    """The index order of ``_sort=code`` (``-code``: descending) on ``rtype``, or None when its entries do not sort
    by value (references and uris: a value sorts after its extensions there). ``code`` may be a ``within_code``:
    the order of its date's entries within one status or subject (``within``)."""
    if code == "_id":
        return IndexOrder(rtype, "_id", "id", descending)
    params, named = parameters_for(rtype), base_code(code)
    if named not in params:
        return None
    base, only = indexed_as(rtype, named)
    kind = params[base].type
    if only is not None or kind not in SORTED_KINDS:
        return None
    return IndexOrder(rtype, base + code[len(named):], kind, descending, instants=base == "_lastUpdated",
                      absent=reads_absent_entries(rtype, base, params[base]))


def within(order: IndexOrder, by: str, value: str) -> IndexOrder | None:
    """``order`` restricted to the resources with ``value`` (``within_value``) of the parameter ``by``, read from its
    ``SORTS_WITHIN`` entries; None when the type has no such entries. The resources without a value of the order's
    parameter are read from its own ``tail``, whatever their ``by``."""
    if (by, order.param) not in SORTS_WITHIN.get(order.rtype, ()):
        return None
    return index_order(order.rtype, within_code(order.param, by, value), order.descending)


def within_group(order: IndexOrder, second: IndexOrder, key: str) -> IndexOrder | None:
    """``second`` within the group of resources that ``order``'s ``key`` stands at: read from the ``SORTS_WITHIN``
    entries of a string within a string (given names within a family name), or None when the type has none. The
    run holds every resource with that value, not only those it is the first of (each is checked when read)."""
    if order.kind != "string" or order.narrowed:
        return None
    return within(second, order.param, order.string_hex(key))


@dataclass(frozen=True, slots=True)
class IndexOrder:
    rtype: str
    param: str
    kind: str  # date | number | quantity | token | string | id
    descending: bool
    instants: bool = False  # _lastUpdated: one instant per resource, which every resource has
    absent: bool = False  # the resources without the parameter have ``@absent`` entries (a store of layout 6 on)

    @property
    def narrowed(self) -> bool:
        """Whether this is the order of a date within one status or subject, or of a given name within a family
        (``within``)."""
        return base_code(self.param) != self.param

    @property
    def windowed(self) -> bool:
        """Whether the walk orders dates by their high bound (short ones read by their low bound, held a second)."""
        return self.kind == "date" and self.descending and not self.instants

    def value(self, enc: str) -> Any | None:
        """The sort value of the entry ``param|enc|``, None when it does not stand for its resource in this order
        (no sortable value; a long date's ``L`` entry when its ``H`` entry does; an ``H`` entry ascending)."""
        if self.kind == "date" and enc != PRESENT:
            if enc[0] == "H":
                return split_date(enc)[1] if self.windowed else None
            if self.windowed:
                low, high = split_date(enc)
                return high if high - low < LONG_SPAN else None
        return sort_value(self.kind, enc, self.descending)  # as the sort in memory (instants: high = low)

    def key_value(self, key: str) -> Any | None:
        """The sort value of a key of this order's parameter (``value`` of its encoding)."""
        return self.value(self._enc(key))

    def start_of(self, value: Any, *, rising: bool) -> str | None:
        """A position from which the walk (values ``rising`` or falling: the walk must be asked in that direction)
        meets first the pairs of sort value ``value``, or None where the order has no such position (numbers,
        quantities). Strings and tokens are encoded as the hex of the value then ``.`` (a value's extensions sort
        after it, ``/`` just after the ``.``); dates ascending by their low bound, ``L`` and its 16 digits then
        ``.``. Descending dates are walked by (high bound, key) pairs merged from two kinds of entries, so no key
        lies before or after every pair of one value: the position names the value itself (``AT_VALUE``), which
        ``_windowed`` places before all its pairs (``rising``) or after them."""
        if self.windowed and isinstance(value, int):
            return f"{self.rtype}|{self.param}|{AT_VALUE}{'<' if rising else '>'}{value}"
        if self.positioned and self.kind == "date" and isinstance(value, int):
            prefix = f"L{sortable_int(value)}"
        elif self.positioned and self.kind != "date" and isinstance(value, str):
            prefix = hexs(value)
        else:
            return None
        return f"{self.rtype}|{self.param}|{prefix}{'' if rising else '/'}"

    def past(self, value: Any, rid: str, *, up: bool) -> str | None:
        """A position from which a walk ``up`` (or down) meets the pairs of the string ``value`` whose ids come after
        (before) ``rid`` in the order of the keys, then the higher (lower) values; None if not a string order."""
        if self.kind != "string" or not isinstance(value, str):
            return None
        return f"{self.rtype}|{self.param}|{hexs(value)}.|{rid}|{'~' if up else ''}"

    @property
    def positioned(self) -> bool:
        """Whether ``start_of`` gives positions in this order."""
        return self.kind in ("string", "token", "date")

    def holds(self, key: str) -> bool:
        """Whether ``key`` is a key of this order's parameter that stands for a resource (a cursor's position)."""
        if not key.startswith(f"{self.rtype}|{self.param}|") or key.count("|") < 4:
            return False
        try:
            return self._pair(key) is not None
        except (ValueError, IndexError):  # not an encoding of this kind: a cursor made up or of another search
            return False

    def string_hex(self, key: str) -> str:
        """The hex of the sortable form a key of this (string) order's parameter holds: what the entries within its
        value are kept under (keys.py ``within_value``)."""
        return self._enc(key)[:-1]

    def _enc(self, key: str) -> str:
        """The encoding of a key of this order's parameter (``Type|param|enc|rid|vid``)."""
        return key[len(self.rtype) + len(self.param) + 2:key.rindex("|", 0, key.rindex("|"))]

    def _pair(self, key: str) -> Pair | None:
        """The key's pair, None if it does not stand for its resource in this order (no sortable value, or
        ``order_marks`` says the resource comes at another of its entries)."""
        if _marked(key, PASSED_OVER[self.descending]):
            return None
        value = self.key_value(key)
        return None if value is None else (value, key)

    def canonical(self, version: Version) -> str | None:
        """The key of the version's entry that stands for it in this order (its first: the lowest pair ascending,
        the highest descending), or None when it has no sortable value."""
        prefix = f"{self.param}|"
        pairs = []
        for item in items_starting(version.index, prefix):
            value = self.value(split_item(item)[0][len(prefix):-1])
            if value is not None:
                pairs.append((value, index_key(self.rtype, version.rid, item)))
        if not pairs:
            return None
        return (max(pairs) if self.descending else min(pairs))[1]

    @property
    def tail(self) -> tuple[tuple[str, str], ...]:
        """The entry ranges (low, high; in key order) that hold the resources without a sortable value: the
        parameter's ``@absent`` entries and its ``~`` entries (present, no value), each range in id order."""
        param = base_code(self.param)  # within a status or subject (``within``), the date's own
        return tuple(sorted(((f"{ABSENT}|{param}|", f"{ABSENT}|{param}|~"),
                             (f"{param}|{PRESENT}|", f"{param}|{PRESENT}|~"))))

    def tail_key(self, version: Version) -> str | None:
        """The key of the version's entry in ``tail`` (None if it has none: an older layout's resource)."""
        entries = {low for low, _ in self.tail}
        for item in version.index:
            if split_item(item)[0] in entries:
                return index_key(self.rtype, version.rid, item)
        return None

    def holds_tail(self, key: str) -> bool:
        """Whether ``key`` is a key of ``tail`` (a cursor's position there)."""
        return key.count("|") >= 4 and any(key.startswith(f"{self.rtype}|{low}") for low, _ in self.tail)

    def _range(self, first: str) -> tuple[str, str]:
        """The entries whose encodings start at ``first`` (a letter) or, with "", every entry with a value."""
        if not first:
            return f"{self.param}|", f"{self.param}|~"
        return f"{self.param}|{first}", f"{self.param}|{chr(ord(first) + 1)}"

    async def walk(self, store: ResourceStore, *, after: str | None, rising: bool,
                   batch: int) -> AsyncGenerator[Pair, None]:
        """The pairs after the key ``after`` (None: from the start), values rising or falling (the sort's order,
        or its reverse for a previous page); ``batch``: keys read by the first scan, doubling after."""
        if self.windowed:
            async for pair in self._windowed(store, after=after, rising=rising, batch=batch):
                yield pair
            return
        keys = _Keys(store, self.rtype, *self._range({"date": "L", "quantity": "N"}.get(self.kind, "")), rising, batch,
                     after=after, passing=PASSED_OVER[self.descending])
        while (key := await keys.take()) is not None:
            found = self._pair(key)
            if found is not None:
                yield found

    def run_prefix(self, key: str) -> str:
        """What the entries of the sort value of ``key`` (of a string or token parameter) start with, after the type:
        a string's one encoding (its value), a token's code then ``.`` (the code in any system: tokens sort by
        code, and no code's hex is followed by ``.`` in another's)."""
        enc = self._enc(key)
        if self.kind == "token":
            return f"{self.param}|{enc.split('.', 1)[0]}."
        assert self.kind == "string"
        return f"{self.param}|{enc}|"

    async def run(self, store: ResourceStore, *, after: str, rising: bool, batch: int) -> AsyncGenerator[str, None]:
        """The keys after ``after`` (a key of a string or token parameter, values ``rising`` or falling) that share
        its sort value (``run_prefix``) and stand for their resources in this order: the rest of its run of one
        value, as ``walk`` would give them, without decoding each."""
        run = self.run_prefix(after)
        keys = _Keys(store, self.rtype, run, f"{run}~", rising, batch, after=after,
                     passing=PASSED_OVER[self.descending])
        while (key := await keys.take()) is not None:
            yield key

    async def run_end(self, store: ResourceStore, key: str, *, rising: bool) -> str:
        """The last key of the run of ``key``'s value (a string's or a token's) in the walk's direction (values
        ``rising`` or falling) that stands for its resource: where a group entered at ``key`` ends (``key`` itself if
        no other)."""
        run = self.run_prefix(key)
        keys = _Keys(store, self.rtype, run, f"{run}~", not rising, 8, passing=PASSED_OVER[self.descending])
        return await keys.peek() or key

    def _mark(self, after: str | None) -> Pair | None:
        """The pair a windowed walk starts after: a cursor's (its key's, whatever its marks), or, for a position of
        ``start_of``, one below every pair of its value (walked rising) or above every one (falling): every key
        is above "" and below "~" (it starts with the type)."""
        if after is None:
            return None
        position = f"{self.rtype}|{self.param}|{AT_VALUE}"
        if after.startswith(position):
            return int(after[len(position) + 1:]), "" if after[len(position)] == "<" else "~"
        at = self.key_value(after)
        return None if at is None else (at, after)

    async def _windowed(self, store: ResourceStore, *, after: str | None, rising: bool,
                        batch: int) -> AsyncGenerator[Pair, None]:
        """Descending dates: pairs ordered by (high bound, key), merged from the ``H`` entries (in that order in
        the store) and the short dates' ``L`` entries (in the order of their low bounds: a pair is released once
        every ``L`` entry still unread has a low bound that puts its high bound on the far side)."""
        mark = self._mark(after)

        def beyond(pair: Pair) -> bool:  # strictly after the cursor in the walk's order
            return mark is None or (pair > mark if rising else pair < mark)

        h_low, h_high = self._range("H")
        l_low, l_high = self._range("L")
        if mark is not None:  # only entries that can lie beyond the cursor: H by its high bound, L by its low
            if rising:
                h_low = f"{self.param}|H{sortable_int(mark[0])}"
                l_low = f"{self.param}|L{sortable_int(mark[0] - LONG_SPAN + 1)}"
            else:
                h_high = f"{self.param}|H{sortable_int(mark[0] + 1)}"
                l_high = f"{self.param}|L{sortable_int(mark[0] + 1)}"
        ends = _Keys(store, self.rtype, h_low, h_high, rising, batch, passing=PASSED_OVER[self.descending])
        starts = _Keys(store, self.rtype, l_low, l_high, rising, batch, passing=PASSED_OVER[self.descending])
        # the walk needs the first batch of each before it can release a pair: asked for at once, they share a
        # command (storage/batching.py ``ScanBatcher``) instead of following one another
        await asyncio.gather(ends.peek(), starts.peek())
        held: list[Pair] = []  # short dates read, sorted by pair
        low_read: int | None = None  # the low bound of the last L entry read
        while True:
            ahead_key = await ends.peek()
            ahead = None if ahead_key is None else self._pair(ahead_key)  # an H entry: (high bound, key)
            candidate = ahead
            if held:
                nearest = held[0] if rising else held[-1]
                if candidate is None or (nearest < candidate if rising else nearest > candidate):
                    candidate = nearest
            # an unread L entry starts at or past low_read (rising: at or before, falling), so its high bound is
            # at least low_read (rising) or below low_read + LONG_SPAN (falling)
            safe = starts.done or (candidate is not None and low_read is not None and (
                candidate[0] < low_read if rising else candidate[0] >= low_read + LONG_SPAN))
            if candidate is not None and safe:
                if candidate is ahead:
                    await ends.take()
                else:
                    held.pop(0 if rising else -1)
                if beyond(candidate):
                    yield candidate
                continue
            if starts.done:
                return
            key = await starts.take()
            if key is None:
                continue
            low_read = split_date(self._enc(key))[0]
            short = self._pair(key)
            if short is not None and beyond(short):
                bisect.insort(held, short)


class _Keys:
    """The keys of one range of the index, read in batches (doubling up to 1,000) in one direction.

    ``passing``: the mark of the keys the walk passes over (``order_marks``), which are not returned. Once a full
    batch is mostly such keys (a stretch of second names), the batches after it ask the store to leave them out, if
    it can do so by its index (``ResourceStore.leaves_out_in_index``): the 100,000 Chinese family names after the
    last pinyin one then stay in the store (0.3 s instead of 0.7 s on the bench store). Until then the walk's scans
    are plain ones, which concurrent requests share (``ScanBatcher``); a filtered one is read alone."""

    def __init__(self, store: ResourceStore, rtype: str, low: str, high: str, rising: bool, batch: int, *,
                 after: str | None = None, passing: str = "") -> None:
        self.store, self.rtype, self.low, self.high, self.rising, self.batch = store, rtype, low, high, rising, batch
        self.keys: list[str] = []
        self.at = 0
        self.position = after  # the last key read (None: none yet)
        self.exhausted = False  # nothing more in the store
        self.passing = passing
        self.leaving_out = False  # whether the scans leave out the keys marked ``passing``

    @property
    def done(self) -> bool:
        return self.exhausted and self.at >= len(self.keys)

    async def _fill(self) -> None:
        while self.at >= len(self.keys) and not self.exhausted:
            read = await self.store.scan_index(self.rtype, self.low, self.high, after=self.position,
                                               limit=self.batch, backward=not self.rising,
                                               without=self.passing if self.leaving_out else "")
            self.exhausted = len(read) < self.batch
            if read:
                self.position = read[-1]
            kept = [key for key in read if not _marked(key, self.passing)] if self.passing else read
            if self.passing and not self.leaving_out and not self.exhausted:
                self.leaving_out = len(kept) * 2 < len(read) and await self.store.leaves_out_in_index()
            self.keys, self.at = kept, 0
            self.batch = min(self.batch * 2, 1000)

    async def peek(self) -> str | None:
        """The next key, or None when there is none."""
        await self._fill()
        return self.keys[self.at] if self.at < len(self.keys) else None

    async def take(self) -> str | None:
        await self._fill()
        if self.at >= len(self.keys):
            return None
        self.at += 1
        return self.keys[self.at - 1]
