"""Runs parsed searches against the store: index scans, re-checks, paging, sorting, totals and includes.

A page is read by one *driver* (the most selective clause that can be scanned, or the type's resources in
id order) from its position in the ``search_index``; each candidate is re-checked against the current
version's entries, so orphans and stale entries never match. A resource with several entries in the driver's
ranges is emitted at its smallest one only. The cursor of the next page is the last key read: pages cost the
same at any depth and do not shift while writes happen. ``_sort`` over many matches walks the entries of its first
key in value order (index_order.py; the matches sharing a value of it sorted by the other keys); other sorts
collect the matches (up to ``search_sort_max``) and page through them with a keyset cursor.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson

from fhir_server.errors import BadRequest, Issue
from fhir_server.search.date_spans import UNBOUNDED, WINDOWED_SPAN, DateSpans
from fhir_server.search.entries import reference_type
from fhir_server.search.index_order import IndexOrder, index_order, within, within_group
from fhir_server.search.keys import (
    ABSENT_LAYOUT,
    COMPARTMENT,
    INDEX_LAYOUT,
    LAYOUT_MARKER,
    PRESENT,
    SORTS_WITHIN,
    SPANS_LAYOUT,
    WITHIN,
    decode_hex,
    hexs,
    sort_value,
    within_layout,
    within_value,
)
from fhir_server.search.query import (
    TOP,
    Clause,
    Join,
    KeyRange,
    KeySet,
    SearchQuery,
    Span,
    date_window,
    exact_entry,
    joined_chain,
    keyed_code,
    read_within,
    reference_entries,
)
from fhir_server.search.registry import generation, indexed_as, parameters_for
from fhir_server.settings import Settings
from fhir_server.storage import ResourceStore, Version
from fhir_server.storage.versions import index_key, items_starting, split_index_key, split_item

__all__ = ["SearchEngine", "SearchPage", "TooManyMatches", "compartment_clause", "entries_of_version"]

_T = TypeVar("_T")
log = logging.getLogger("medunion.search")


class TooManyMatches(BadRequest):
    pass


@dataclass(frozen=True, slots=True)
class _Group:
    """The matches of a sort by several keys that share one value of its first key, in the sort's order, with the
    positions of the walk where the group starts and ends in that order (``_in_groups``)."""
    made: float
    items: list[tuple[list[Any], str]]  # (sort values, id)
    head: tuple[str, str]  # (phase, position)
    tail: tuple[str, str]

    @property
    def size(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class _Members:
    """A large group of a sort by several keys as its first key's entries tell (``_large_group``): the value, the
    position where the cursor enters the group (its head; for a page before, its tail), the last of its entries in
    the walk's direction from there, and the ids its entries name: every member, and perhaps resources whose entry
    is stale or is not the one that stands for them (each is checked when read). None: not read, the second key
    is walked within the group (``within_group``), whose entries name only its members and the resources with its
    value among others of the first key (checked when read); ``far`` is then ``anchor`` (either names the group in
    a cursor: the walk within starts at the cursor's values), and the group's end is found when the walk goes
    beyond it."""
    value: Any
    anchor: str
    far: str
    rids: frozenset[str] | None
    made: float
    # a group too large to read its ids (``_large_group``): the resources without a value of the second key among
    # which its members without one are (``rids`` is None; every resource the walk meets is checked for the group)
    unvalued: frozenset[str] | None = None

    @property
    def size(self) -> int:
        if self.rids is not None:
            return len(self.rids)
        return 0 if self.unvalued is None else len(self.unvalued) + 1

    @property
    def checked(self) -> bool:
        """Whether the second key is walked over the whole type, each resource met checked for the group."""
        return self.unvalued is not None

    @property
    def walked_within(self) -> bool:
        """Whether the second key is walked within the group (``within_group``): its entries are the group's own."""
        return self.rids is None and self.unvalued is None

    @property
    def walk_limit(self) -> int | None:
        """Entries the walk of the second key may read before the group is read whole instead: four per member
        (at least 1,000); ``_Groups.CHECKED_WALK`` when checked; no limit walked within (the group's own entries)."""
        if self.unvalued is not None:
            return _Groups.CHECKED_WALK
        return None if self.rids is None else max(4 * len(self.rids), 1000)


class _Groups:
    """Large groups of recent sorts by several keys, kept ``ttl`` seconds (``search_sort_keep``; at most
    ``MAX_ITEMS`` matches in all, the least recently used dropped first), so that a page inside a group of
    thousands reads its own resources only, not the whole group again. Each is found by its search and the
    position a cursor names (the head for the pages after, the tail for the pages before). A page re-reads every
    resource it takes from a kept group; a resource written into the group since it was kept is missed until the
    group is read again.

    Likewise the ids of the large groups that pages take by their second key (``_Members``), found by the first
    key's order and the position a page enters the group at, so that the pages after the first do not read the
    group's entries again (a resource written into the group since is missed by them likewise)."""

    LARGE = 100  # matches
    # entries of one value of a string or token first key past which its members are not read from them, and the
    # walk of its second key checks each resource it meets instead (``_checked_group``), if the resources without a
    # second value are at most ``UNVALUED``; that walk reads at most ``CHECKED_WALK`` entries a page
    BY_IDS = 1024
    UNVALUED = 1000
    CHECKED_WALK = 10_000
    MAX_ITEMS = 200_000  # matches of the groups and ids of the members kept

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl  # 0: none kept
        self.kept: OrderedDict[tuple[Any, ...], _Group | _Members] = OrderedDict()
        self.size = 0
        self.reading: dict[tuple[Any, ...], asyncio.Event] = {}  # a group being read by a page: the others wait

    def get(self, key: tuple[Any, ...]) -> _Group | None:
        found = self._get(key)
        return found if isinstance(found, _Group) else None

    def members(self, key: tuple[Any, ...]) -> _Members | None:
        found = self._get(key)
        return found if isinstance(found, _Members) else None

    def _get(self, key: tuple[Any, ...]) -> _Group | _Members | None:
        found = self.kept.get(key)
        if found is None:
            return None
        if time.monotonic() - found.made > self.ttl:
            self._drop(key)
            return None
        self.kept.move_to_end(key)
        return found

    def put(self, shape: tuple[Any, ...], group: _Group) -> None:
        self._put({(shape, False, *group.head): group, (shape, True, *group.tail): group})

    def put_members(self, order: IndexOrder, back: bool, members: _Members) -> None:
        """Members found from ``members.anchor`` in the walk's direction (``back``), kept for pages entering the
        group at either end."""
        reverse = replace(members, anchor=members.far, far=members.anchor)
        self._put({self.members_key(order, back, members.anchor): members,
                   self.members_key(order, not back, members.far): reverse})

    @staticmethod
    def members_key(order: IndexOrder, back: bool, anchor: str) -> tuple[Any, ...]:
        return ("members", order, back, anchor)

    def _put(self, entries: dict[tuple[Any, ...], _Group | _Members]) -> None:
        if self.ttl <= 0:
            return
        for key, value in entries.items():
            if key in self.kept:
                self._drop(key)
            self.kept[key] = value
            self.size += value.size
        while self.size > self.MAX_ITEMS:
            self._drop(next(iter(self.kept)))

    def _drop(self, key: tuple[Any, ...]) -> None:
        self.size -= self.kept.pop(key).size


@dataclass(frozen=True, slots=True)
class _Placed:
    """A match of a search in index order with the cursors of the page after it and of the page before it."""
    version: Version
    ahead: dict[str, Any]
    behind: dict[str, Any]

    @classmethod
    def at(cls, version: Version, phase: str, position: str) -> _Placed:
        """A match of a sort by one key, at a position of the walk (``_in_order``)."""
        return cls(version, {"w": [phase, position]}, {"w": [phase, position], "p": 1})

    @classmethod
    def in_group(cls, version: Version, values: list[Any], head: tuple[str, str], tail: tuple[str, str]) -> _Placed:
        """A match of a group of a sort by several keys (``_in_groups``), with its sort values: the pages after it
        start from the group's head, those before it from its tail."""
        return cls(version, {"w": list(head), "s": values}, {"w": list(tail), "s": values, "p": 1})


class _OverBudget(Exception):
    """The first page of a search walked in index order read more resources that do not match than
    ``search_order_budget``."""


def entries_of_version(version: Version) -> list[str]:
    """The index entries (``param|enc|``) of a version, without the vids of the ``ix`` items."""
    return [split_item(item)[0] for item in version.index]


@dataclass(slots=True)
class _Scan:
    matches: list[Version]
    next_state: Any
    prev_state: Any


# the matches a probe of a search over several reads (``_Head``): its first store call reads this many keys + 1 and
# their resources whether it wants one match or all of them
_HEAD = 19


@dataclass(frozen=True, slots=True)
class _Head:
    """The first matches of a search (at most ``_HEAD`` + 1) with their positions in its driver's order, and the
    clauses they were read with: what a probe of a search over several read, for its first page."""

    clauses: list[Clause]
    driver: int
    items: list[tuple[str, Version]]

    def page(self, want: int) -> _Scan | None:
        """The first page of ``want`` matches, or None when that needs more than was read."""
        if len(self.items) > want:
            return _Scan([v for _, v in self.items[:want]], [self.driver, self.items[want - 1][0]], None)
        if len(self.items) <= _HEAD:  # every match
            return _Scan([v for _, v in self.items], None, None)
        return None


@dataclass(slots=True)
class SearchPage:
    matches: list[Version]
    next_cursor: str | None
    total: int | None = None
    previous_cursor: str | None = None
    included: list[Version] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def compartment_clause(rtype: str, compartment: str, cid: str, params: list[str]) -> Clause:
    """Resources of ``rtype`` in the compartment ``compartment/cid`` (FHIR R4 compartmentdefinition.html). A sort by
    a date may read the date within it (``Clause.within``): within the Patient compartment itself where the type
    has those entries (Observation: subject or performer), else within its one parameter (DiagnosticReport:
    subject)."""
    if rtype == compartment:
        return Clause(f"{compartment}/{cid}", ids=frozenset({cid}))
    target = hexs(f"{compartment}/{cid}")
    indexed, by = _compartment_entries(rtype, compartment, tuple(params), generation())
    return Clause(f"{compartment}/{cid}", keys=KeySet(tuple(exact_entry(f"{p}|{target}") for p in indexed)),
                  within=None if by is None else (by, within_value("reference", f"{compartment}/{cid}")))


@functools.cache
def _compartment_entries(rtype: str, compartment: str, params: tuple[str, ...],
                         _generation: int) -> tuple[list[str], str | None]:
    """The parameters (as indexed) whose entries place a resource of ``rtype`` in a compartment of that type, and
    the one a date's entries are kept within (``compartment_clause``), if any: the same for every compartment
    while the registry's custom parameters stay (``generation``)."""
    indexed = sorted({indexed_as(rtype, p)[0] for p in params})
    whole = compartment == COMPARTMENT and any(by == COMPARTMENT for by, _ in SORTS_WITHIN.get(rtype, ()))
    return indexed, COMPARTMENT if whole else indexed[0] if len(indexed) == 1 else None


def _candidate_ids(keys: KeySet, found: list[str]) -> list[tuple[str, str]]:
    """The (key, id) of the index keys ``found`` whose entries ``keys`` holds."""
    out = []
    for key in found:
        entry, rid = split_index_key(key)
        if keys.holds(entry):
            out.append((key, rid))
    return out


def _probed_ids(clause: Clause, probed: list[str]) -> frozenset[str]:
    """The ids of the resources a complete probe of ``clause`` found: every resource that can match it."""
    if clause.ids is not None:
        return clause.ids
    assert clause.keys is not None
    if clause.join is not None:  # (its verdicts are not settled for a probe: every resource its keys name)
        return frozenset(split_index_key(key)[1] for key in probed)
    return frozenset(rid for _, rid in _candidate_ids(clause.keys, probed))


def _in_every(keys: list[str], ids: list[frozenset[str]]) -> list[str]:
    """The index keys among ``keys`` (in their order) whose resource is in each of ``ids``: the driver's probe
    narrowed by the other complete probes (a resource none of them found cannot match)."""
    return [key for key in keys if all(split_index_key(key)[1] in some for some in ids)]


def _matching(rtype: str, clauses: list[Clause], keys: KeySet, candidates: list[tuple[str, str]],
              versions: dict[str, Version]) -> list[tuple[str, Version]]:
    """The matches among ``candidates`` (in their order), given their current ``versions``: each key must be its
    resource's smallest in the driver's ranges (a resource is emitted once) and the resource must pass every
    clause."""
    out = []
    for key, rid in candidates:
        version = versions.get(rid)
        if version is None or version.body is None:
            continue
        own = [index_key(rtype, rid, item) for item in _held(keys, version)]
        # else an orphan, or not its first entry
        if own and min(own) == key and _passes(clauses, version, held=keys):
            out.append((key, version))
    return out


def _held(keys: KeySet, version: Version) -> list[str]:
    """The ``ix`` items of ``version`` whose entries ``keys`` holds: those under each of its prefixes, found by
    bisection (a Patient has ~100 items; testing each was a fifth of a search's time when it read a thousand), an
    item under two of them twice."""
    return [item for prefix in keys.prefixes for item in items_starting(version.index, prefix)
            if keys.holds(split_item(item)[0])]


def _passes(clauses: list[Clause], version: Version, *, held: KeySet | None = None) -> bool:
    """Whether the version matches every clause. ``held``: keys known to hold one of its entries (the driver's,
    checked by the caller), not checked again."""
    if version.body is None:
        return False
    body: dict[str, Any] | None = None
    joins: list[Clause] = []
    for clause in clauses:
        if clause.join is not None:  # checked after the others: the engine settles verdicts for those that pass
            joins.append(clause)
            continue
        ok = True
        if clause.ids is not None:
            ok = version.rid in clause.ids
        if ok and clause.keys is not None and (clause.keys is not held or clause.negate):
            ok = bool(_held(clause.keys, version))
        if ok and clause.check is not None and (clause.check_if is None or _held(clause.check_if, version)):
            if body is None:
                body = orjson.loads(version.body)
            ok = clause.check(body)
        if ok == clause.negate:
            return False
    for clause in joins:
        join = clause.join
        assert join is not None
        if join.reverse:
            ok = join.verdict(version.rid)
        else:  # a chain: its keys hold an entry of the version only when the entry's target matches
            assert clause.keys is not None
            ok = clause.keys is held or bool(_held(clause.keys, version))
        if not ok:
            return False
    return True


def _encode_cursor(value: Any) -> str:
    """A page cursor: a position in the index, so it says which index layout (keys.py) it is a position in."""
    return f"{INDEX_LAYOUT}.{base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip('=')}"


_INVALID_CURSOR = "The page cursor is not valid; start again from the first page"


def _counted_cursor(cursor: str | None) -> tuple[str | None, int | None]:
    """A cursor without the total its first page counted (``_with_total``), and that total (None: none kept)."""
    if cursor is None or cursor.count(".") != 2:
        return cursor, None
    head, _, total = cursor.rpartition(".")
    if not total.isdigit() or len(total) > 12:
        raise _bad_cursor(_INVALID_CURSOR)
    return head, int(total)


def _with_total(page: SearchPage) -> SearchPage:
    """The page's cursors carrying its total: the pages after the first of a counted search (``_total``) give the
    total of its first page, as a paged result does, rather than count every match again on every page."""
    if page.total is not None:
        if page.next_cursor is not None:
            page.next_cursor = f"{page.next_cursor}.{page.total}"
        if page.previous_cursor is not None:
            page.previous_cursor = f"{page.previous_cursor}.{page.total}"
    return page


def _decode_cursor(text: str) -> Any:
    invalid = _INVALID_CURSOR
    layout, dot, encoded = text.partition(".")
    if not dot or not layout.isdigit():
        raise _bad_cursor(invalid)
    if int(layout) != INDEX_LAYOUT:  # keys encoded otherwise: it would skip or repeat matches
        raise _bad_cursor("The page cursor was made before the hub's search index changed (an upgrade); start "
                          "again from the first page")
    try:
        return orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise _bad_cursor(invalid) from None


_NOT_THIS_SEARCH = "The page cursor does not belong to this search; start again from the first page"


def _inner_cursor(cursor: str | None) -> tuple[int, str | None]:
    """The search a cursor of ``page_of_many`` is within, and its cursor there (-1, None: none; a cursor not of
    that form is refused where the page is read)."""
    state = _decode_cursor(cursor) if cursor else None
    if isinstance(state, list) and len(state) in (2, 3) and isinstance(state[0], int) and isinstance(state[1], str):
        return state[0], state[1]
    return -1, None


def _cursor_position(cursor: str, *, sorted_by: bool) -> str | None:
    """The index key a page cursor goes on from: a scan's (``[driver, key]``), or a sort's walk in index order
    (``{"w": [phase, key]}``); None for another (a sort in memory's values, an id)."""
    mark = _decode_cursor(cursor)
    if sorted_by:
        walk = mark.get("w") if isinstance(mark, dict) else None
        return walk[1] if isinstance(walk, list) and len(walk) == 2 and isinstance(walk[1], str) else None
    return mark[1] if isinstance(mark, list) and len(mark) in (2, 3) and isinstance(mark[1], str) else None


def _bad_cursor(message: str) -> BadRequest:
    return BadRequest(message, issues=[Issue(code="value", diagnostics=message, expression=("_cursor",))])


def _merge(out: SearchPage, page: SearchPage) -> None:
    """Add a page of one search to a page over several (its matches after those already there)."""
    out.matches += page.matches
    out.included += page.included
    out.warnings += page.warnings


# probes of a clause's keys (``_choose_driver``): a clause with up to 2,048 keys is found among larger ones (a birth
# year beside a common family name: ~2,049 keys read each, ~12 µs a key, where walking the wrong one reads thousands
# of resources at ~100 µs each); a clause scanned with a substring filter is probed once, at 256
_PROBE_LIMITS = (8, 64, 256, 2048)
# longer values of a string searched by prefix whose entries within each a date is read from (``_prefix_values``):
# one store command each (Hu: Huang); past these (``family=w``) the clauses read as before. A page after the first
# whose cursor lies within one takes up to ``_PREFIX_VALUES_PAGED`` (one written since need not turn it away)
_PREFIX_VALUES = 4
_PREFIX_VALUES_PAGED = 64
_SUBSTRING_PROBE = (256,)
# searches of a search over several types asked at once whether they have a match (``_page_of_many``): a window's
# scans share a few commands (``ScanBatcher``: 64 ranges a command); a page filled early asks this many in vain
_PROBED = 32


@dataclass(slots=True)
class _Probes:
    """What ``_next_with_matches`` learned of a search over several: the searches from ``probed`` on (or down,
    going backward) are not asked yet, those in ``empty`` have no match."""

    probed: int
    empty: set[int] = field(default_factory=set)
    # with ``heads``: the first matches of the searches probed forward, which their first pages take (``_Head``)
    heads: dict[int, _Head] | None = None


class _Selectivity:
    """How many keys the first probe of each parameter (per type) found lately, as a moving average of
    ``min(found, limit + 1)``. It only orders probes: a wrong guess costs one store command, never a result.

    Also the clauses (per type, by the key spans they scan) that a probe lately found larger than its limit:
    ``status=active``, ``gender=female``, a ``:missing=true`` that most resources match. Probing one of them again
    within ``LARGE_FOR`` seconds at that limit or below is known to say "more" and is not read; a clause that
    shrank since costs a slower walk until then, never a result."""

    MAX_SHAPES = 10_000  # clause names come from requests; forget everything rather than grow without bound
    LARGE_FOR = 10.0

    def __init__(self) -> None:
        self.recent: dict[tuple[str, str], float] = {}
        self.large: dict[tuple[str, tuple[Span, ...]], tuple[int, float]] = {}  # -> (limit exceeded, when)

    def known_larger(self, rtype: str, spans: tuple[Span, ...], limit: int) -> bool:
        seen = self.large.get((rtype, spans))
        return seen is not None and seen[0] >= limit and time.monotonic() - seen[1] < self.LARGE_FOR

    def learn_larger(self, rtype: str, spans: tuple[Span, ...], limit: int) -> None:
        if len(self.large) >= self.MAX_SHAPES:
            self.large.clear()
        seen = self.large.get((rtype, spans))
        now = time.monotonic()
        if seen is None or seen[0] <= limit or now - seen[1] >= self.LARGE_FOR:
            self.large[(rtype, spans)] = (limit, now)

    def learn(self, rtype: str, clause: Clause, found: int) -> None:
        if len(self.recent) >= self.MAX_SHAPES:
            self.recent.clear()
        key = (rtype, clause.name)
        size = float(min(found, _PROBE_LIMITS[0] + 1))
        before = self.recent.get(key)
        self.recent[key] = size if before is None else 0.8 * before + 0.2 * size

    def likely(self, rtype: str, clauses: list[Clause]) -> int | None:
        """The index of the clause that was selective lately (its probes mostly complete), if one was."""
        sizes = [self.recent.get((rtype, c.name)) for c in clauses]
        known = [(size, k) for k, size in enumerate(sizes) if size is not None and size <= _PROBE_LIMITS[0] * 3 / 4]
        return min(known)[1] if known else None


class SearchEngine:
    def __init__(self, *, store: ResourceStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.selectivity = _Selectivity()
        self.groups = _Groups(settings.search_sort_keep)
        self.keeping: set[asyncio.Task[None]] = set()  # groups being read whole behind a page (``_keep_later``)
        self._store_layout = 0  # once INDEX_LAYOUT, stays (``_layout``)
        self.spans = DateSpans(store.db["date_spans"])  # every writer's entries raise it first (ResourceService)
        self._layout_asked = -1e9

    async def stop(self) -> None:
        """Stop the reads of groups still being kept (``_keep_later``): the hub is stopping."""
        for task in list(self.keeping):
            task.cancel()
        await asyncio.gather(*self.keeping, return_exceptions=True)

    async def _layout(self) -> int:
        """The index layout (keys.py ``INDEX_LAYOUT``) under which every stored resource is indexed, as the store
        records it (service/reindex.py). Until it is the current one, asked again at most every 5 s."""
        if self._store_layout < INDEX_LAYOUT and time.monotonic() - self._layout_asked >= 5:
            self._layout_asked = time.monotonic()
            marker = await self.store.db["jobs"].find_one({"_id": LAYOUT_MARKER})
            self._store_layout = 0 if marker is None else int(marker.get("layout", 0))
        return self._store_layout

    # ---- entry points -------------------------------------------------------------------------------------

    async def page(self, query: SearchQuery, *, count: int, cursor: str | None, from_end: bool = False,
                   clauses: list[Clause] | None = None, head: _Head | None = None) -> SearchPage:
        """A page from ``cursor`` (None: the first page; ``from_end``: the last page). ``clauses``: the query's,
        resolved already; ``head``: its first matches, read already (the first page of an unsorted search).
        ``_summary=count``, and ``_count=0`` (as FHIR R5 defines it): the count alone, not paged (no matches, no
        cursors, the cursor not read). ``_total``: counted on the first page, and that count kept in the cursors
        (``_with_total``)."""
        cursor, counted = _counted_cursor(cursor)
        if head is not None:
            clauses = head.clauses
        counting = query.summary_count or count == 0
        if clauses is None:
            clauses = await self._resolve(query, None if counting else cursor)
        if counting:
            return SearchPage([], None, total=await self.count(query, clauses))
        warnings: list[str] = []
        if query.sort:
            page = await self._sorted_page([query], count=count, cursor=cursor, from_end=from_end, clauses=[clauses])
        else:
            state = _decode_cursor(cursor) if cursor else None
            found = head.page(count) if head is not None and state is None and not from_end else None
            if found is None:
                found = await self._scan_page(query.rtype, clauses, want=count, state=state, from_end=from_end)
            matches, nxt = found.matches, found.next_state
            page = SearchPage(matches, None if nxt is None else _encode_cursor(nxt),
                              previous_cursor=None if found.prev_state is None else _encode_cursor(found.prev_state))
            if cursor is None and not from_end and nxt is None and query.total != "none":
                page.total = len(matches)
        if query.total in ("accurate", "estimate") and counted is not None:
            page.total = counted
        elif query.total == "accurate":
            page.total = await self.count(query, clauses)
        elif query.total == "estimate" and page.total is None:
            page.total = await self._estimate(query, clauses)
        if (query.includes or query.revincludes) and page.matches:
            page.included, warnings = await self._include(query, page.matches)
        page.warnings += warnings
        return _with_total(page) if query.total in ("accurate", "estimate") else page

    async def page_of_many(self, queries: list[SearchQuery], *, count: int, cursor: str | None) -> SearchPage:
        """One page over several searches (system search over ``_type``, a compartment's ``*``, ``$everything``),
        which share their result parameters: with ``_sort``, one order over all of them; ``_summary=count`` and
        ``_total`` count all of them; a resource included by several of them is included once."""
        if not queries:
            return SearchPage([], None, total=0)
        cursor, counted_before = _counted_cursor(cursor)
        head = queries[0]
        if head.summary_count or count == 0:  # the count alone (``page``)
            return SearchPage([], None, total=await self._total(queries, "accurate"))
        if head.sort:
            page = await self._sorted_page(queries, count=count, cursor=cursor)
            for query in queries:  # each type's includes, from its own matches
                mine = [v for v in page.matches if v.rtype == query.rtype]
                if (query.includes or query.revincludes) and mine:
                    included, warnings = await self._include(query, mine)
                    page.included += included
                    page.warnings += [w for w in warnings if w not in page.warnings]
        else:
            counted = head.total in ("accurate", "estimate")
            # counted: every search is resolved (chains, _has) once, for the page and the count alike; the one the
            # cursor is within by that cursor, so that its page reads its entries as the cursor's first page did
            at, inner = _inner_cursor(cursor)
            resolved = list(await asyncio.gather(*(self._resolve(q, inner if i == at else None)
                                                   for i, q in enumerate(queries)))) if counted else None
            page = await self._page_of_many([replace(q, total="none") if counted else q for q in queries],
                                            count=count, cursor=cursor, resolved=resolved)
            if counted:
                page.total = counted_before if counted_before is not None else \
                    await self._total(queries, head.total or "accurate", resolved)
                _with_total(page)
        matched = {v.key for v in page.matches}
        page.included = list({v.key: v for v in page.included if v.key not in matched}.values())
        return page

    async def _total(self, queries: list[SearchQuery], kind: str,
                     resolved: list[list[Clause]] | None = None) -> int | None:
        """The matches of all ``queries`` (``kind``: accurate or estimate; None when one estimate is)."""
        total = 0
        probes = _Probes(0)  # the searches without a match count none
        i = 0
        while (i := await self._next_with_matches(queries, i, resolved, probes)) < len(queries):
            query = queries[i]
            clauses = resolved[i] if resolved is not None else await self._resolve(query)
            found = await self.count(query, clauses) if kind == "accurate" else await self._estimate(query, clauses)
            if found is None:
                return None
            total += found
            i += 1
        return total

    async def _page_of_many(self, queries: list[SearchQuery], *, count: int, cursor: str | None,
                            resolved: list[list[Clause]] | None = None) -> SearchPage:
        """Searches in turn. Cursors are ``[i, inner]`` (from the position ``inner`` of search ``i``, None: its
        start) and ``[i, inner, "prev"]`` (the page that ends before the position of the previous-cursor ``inner``
        of search ``i``, None: before its end)."""
        state = _decode_cursor(cursor) if cursor else [0, None]
        if not (isinstance(state, list) and len(state) in (2, 3) and isinstance(state[0], int)
                and 0 <= state[0] <= len(queries) and (state[1] is None or isinstance(state[1], str))
                and (len(state) == 2 or (state[2] == "prev" and state[0] < len(queries)))):
            raise _bad_cursor(_NOT_THIS_SEARCH)
        if count <= 0:
            return SearchPage([], None)
        if len(state) == 3:
            return await self._page_of_many_before(queries, count=count, index=state[0], inner=state[1],
                                                   resolved=resolved)
        index, inner = state
        out = SearchPage([], None)
        probes = _Probes(index + 1, heads={})
        while index < len(queries) and len(out.matches) < count:
            head = None
            if inner is None:
                index = await self._next_with_matches(queries, index, resolved, probes)
                if index == len(queries):
                    break
                head = probes.heads.pop(index, None) if probes.heads is not None else None
            page = await self.page(queries[index], count=count - len(out.matches), cursor=inner,
                                   clauses=None if resolved is None else resolved[index], head=head)
            if not out.matches and page.matches and cursor is not None:  # the page before ends before this match
                before = [index, page.previous_cursor, "prev"] if page.previous_cursor is not None else \
                    [index - 1, None, "prev"] if index > 0 else None
                out.previous_cursor = None if before is None else _encode_cursor(before)
            _merge(out, page)
            if page.next_cursor is not None:
                out.next_cursor = _encode_cursor([index, page.next_cursor])
                return out
            index, inner = index + 1, None
        # full at the end of a search: the next page starts at the first later search with a match, and there is
        # none when no later search has one (the searches this request did not probe yet are asked now; the next
        # page then starts at that search without asking again)
        index = await self._next_with_matches(queries, index, resolved, probes, lone=True)
        if index < len(queries):
            out.next_cursor = _encode_cursor([index, None])
        elif cursor is None:
            out.total = len(out.matches)
        if not out.matches and state[1] is None and 0 < state[0] <= len(queries):  # empty, at a search's start
            out.previous_cursor = _encode_cursor([state[0] - 1, None, "prev"])
        return out

    async def _next_with_matches(self, queries: list[SearchQuery], index: int, resolved: list[list[Clause]] | None,
                                 probes: _Probes, *, step: int = 1, lone: bool = False) -> int:
        """The first of ``queries`` from ``index`` on (``step`` -1: down) that may have a match (``len(queries)``,
        or -1 down: none has). A compartment's ~65 types mostly have none: a window of the searches from
        ``probes.probed`` on are asked at once whether they have one (their scans share commands), rather than
        read one round trip each in turn. A window of one search is not asked (its page reads it) unless
        ``lone``."""
        end = len(queries) if step > 0 else -1
        while index != end:
            if (index - probes.probed) * step >= 0:
                window = range(index, min(index + _PROBED, end) if step > 0 else max(index - _PROBED, end), step)
                asked = len(window) > 1 or lone
                if asked and probes.heads is not None and step > 0:  # the first page's worth, kept
                    heads = await self._heads([queries[i] for i in window],
                                              [None if resolved is None else resolved[i] for i in window])
                    for i, head in zip(window, heads, strict=True):
                        if head.items:
                            probes.heads[i] = head
                        else:
                            probes.empty.add(i)
                elif asked:
                    found = await asyncio.gather(*(self.matches(queries[i], limit=1,
                                                                clauses=None if resolved is None else resolved[i])
                                                   for i in window))
                    probes.empty.update(i for i, one in zip(window, found, strict=True) if not one)
                probes.probed = window.stop
            if index not in probes.empty:
                return index
            index += step
        return index

    async def _page_of_many_before(self, queries: list[SearchQuery], *, count: int, index: int,
                                   inner: str | None, resolved: list[list[Clause]] | None = None) -> SearchPage:
        """The page of ``page_of_many`` that ends before a position: read backward, search by search."""
        pages: list[tuple[int, SearchPage]] = []
        need = count
        before: list[Any] | None = None
        probes = _Probes(index - 1)
        while index >= 0 and need > 0:
            if inner is None and (index := await self._next_with_matches(queries, index, resolved, probes,
                                                                         step=-1)) < 0:
                break
            page = await self.page(queries[index], count=need, cursor=inner, from_end=inner is None,
                                   clauses=None if resolved is None else resolved[index])
            pages.insert(0, (index, page))
            need -= len(page.matches)
            if page.previous_cursor is not None:
                before = [index, page.previous_cursor, "prev"]
                break
            index, inner = index - 1, None
        else:
            if index >= 0:  # full at the start of search index + 1: the searches before it remain
                before = [index, None, "prev"]
        out = SearchPage([], None, previous_cursor=None if before is None else _encode_cursor(before))
        for _, page in pages:
            _merge(out, page)
        last = next(((i, page) for i, page in reversed(pages) if page.matches), None)
        if last is not None:  # the next page starts after this page's last match, in that match's search
            i, page = last
            after = [i, page.next_cursor] if page.next_cursor is not None else \
                [i + 1, None] if i + 1 < len(queries) else None
            out.next_cursor = None if after is None else _encode_cursor(after)
        return out

    async def _heads(self, queries: list[SearchQuery], resolved: list[list[Clause] | None]) -> list[_Head]:
        """``_head`` of each search, at once. A search that one clause drives by plain key ranges (a compartment's
        types: its references to the patient) has those ranges scanned together with the others' and its
        candidates read in one command with theirs, without a coroutine of its own: ~65 such probes cost the hub
        a task and ~8 callbacks each otherwise. A range that fills its scan without 20 matches before it, and any
        other search, gets its own ``_head``."""
        pending = [n for n, r in enumerate(resolved) if r is None]  # resolved at once: their reads share commands
        made = dict(zip(pending, await asyncio.gather(*(self._resolve(queries[n]) for n in pending)), strict=True))
        clauses = [r if r is not None else made[n] for n, r in enumerate(resolved)]
        plain: list[tuple[int, int, KeySet, list[Span]]] = []  # search, its driving clause, its keys, their spans
        for n, these in enumerate(clauses):
            drivers = [k for k, c in enumerate(these) if c.drives]
            held = these[drivers[0]].keys if len(drivers) == 1 else None
            spans = held.spans if held is not None else []
            if held is not None and not any(span.containing for span in spans) and all(c.join is None for c in these):
                plain.append((n, drivers[0], held, spans))
        ranges = [(queries[n].rtype, span.low, span.high) for n, _, _, spans in plain for span in spans]
        scanned = iter(await self.store.scan_index_many(ranges, limit=_HEAD + 1))
        keyed = [(n, driver, held, [(found, _candidate_ids(held, found)) for found in (next(scanned) for _ in spans)])
                 for n, driver, held, spans in plain]  # each range's keys and the (key, id) of its candidates
        versions: dict[str, dict[str, Version]] = {}  # by type, by id
        for (rtype, rid), version in (await self.store.current_of_types(sorted({
                (queries[n].rtype, rid) for n, _, _, runs in keyed for _, candidates in runs
                for _, rid in candidates}))).items():
            versions.setdefault(rtype, {})[rid] = version
        heads: list[_Head | None] = [None] * len(queries)
        for n, driver, held, runs in keyed:
            rtype = queries[n].rtype
            items: list[tuple[str, Version]] = []
            for found, candidates in runs:  # in the walk's order: a range that filled its scan may hold more
                items += _matching(rtype, clauses[n], held, candidates, versions.get(rtype, {}))
                if len(items) > _HEAD or len(found) > _HEAD:
                    break
            if len(items) > _HEAD or all(len(found) <= _HEAD for found, _ in runs):
                heads[n] = _Head(clauses[n], driver, items[:_HEAD + 1])
        others = [n for n, head in enumerate(heads) if head is None]
        for n, head in zip(others, await asyncio.gather(*(self._head(queries[n], clauses[n]) for n in others)),
                           strict=True):
            heads[n] = head
        return [head for head in heads if head is not None]

    async def _head(self, query: SearchQuery, clauses: list[Clause] | None) -> _Head:
        """The first matches of a search as a probe for one reads them: its first store call's worth (``_HEAD``)."""
        if clauses is None:
            clauses = await self._resolve(query)
        driver, known = await self._choose_driver(query.rtype, clauses)
        walk = self._walk(query.rtype, clauses, driver, start=None, backward=False, known=known, batch=_HEAD + 1)
        return _Head(clauses, driver, await _first(walk, _HEAD + 1))

    async def matches(self, query: SearchQuery, *, limit: int, clauses: list[Clause] | None = None) -> list[Version]:
        """Up to ``limit`` matches in driver order (conditional operations ask for 2: one or several)."""
        if clauses is None:
            clauses = await self._resolve(query)
        found, _ = await self._scan(query.rtype, clauses, want=limit, state=None)
        return found

    async def all_matches(self, query: SearchQuery, *, cap: int, clauses: list[Clause] | None = None) -> list[Version]:
        """Every match; more than ``cap`` is a 400 that says to narrow the search."""
        if clauses is None:
            clauses = await self._resolve(query)
        found, more = await self._scan(query.rtype, clauses, want=cap, state=None)
        if more is not None:
            msg = (f"The search {query.text} matches more than {cap} resources, more than this operation "
                   "handles; narrow it")
            raise TooManyMatches(msg, issues=[Issue(code="too-costly", diagnostics=msg)])
        return found

    async def count(self, query: SearchQuery, clauses: list[Clause]) -> int:
        found = await self.all_matches(query, cap=self.settings.search_total_max, clauses=clauses)
        return len(found)

    async def _estimate(self, query: SearchQuery, clauses: list[Clause]) -> int | None:
        """``_total=estimate``: with one indexed clause, the resources its entries name (orphans included, up to
        10,000); otherwise the exact count when it is under 1,000; None beyond."""
        if (len(clauses) == 1 and clauses[0].keys is not None and not clauses[0].negate and not clauses[0].check
                and clauses[0].join is None):
            rids: set[str] = set()
            held = clauses[0].keys
            for low, high, containing in held.spans:
                after = None
                while len(rids) <= 10_000:
                    keys = await self.store.scan_index(query.rtype, low, high, after=after, limit=1000,
                                                       containing=containing)
                    rids.update(rid for entry, rid in map(split_index_key, keys) if held.holds(entry))
                    if len(keys) < 1000:
                        break
                    after = keys[-1]
            return len(rids) if len(rids) <= 10_000 else None
        try:
            return len(await self.all_matches(query, cap=1000, clauses=clauses))
        except TooManyMatches:
            return None

    # ---- chains and _has ----------------------------------------------------------------------------------

    async def _resolve(self, query: SearchQuery, cursor: str | None = None) -> list[Clause]:
        """The query's clauses as the store is read for them: each on the layout's entries, chains and ``_has``
        resolved to the ids they name (or joins), the longer values of a string searched by prefix found
        (``_prefix_values``: ``cursor``, of the page asked for), date windows, dates read within a value."""
        out = []
        for clause in query.clauses:
            while clause.fallback is not None and await self._layout() < clause.fallback_below:
                clause = clause.fallback  # (phonetic: the string search, which falls back below layout 8)
            if clause.chain is not None:
                queries = clause.chain.queries
                inner = {sub.rtype: await self._resolve(sub) for sub in queries}
                results = [await self._sub_matches(sub, inner[sub.rtype]) for sub in queries]
                p = clause.chain.param
                if all(found is not None for found, _ in results):
                    clause = replace(clause, chain=None, keys=reference_entries(
                        p, [f"{sub.rtype}/{v.rid}" for sub, (found, _) in zip(queries, results, strict=True)
                            for v in found or ()]))
                else:
                    join = Join(p, inner, reverse=False)
                    among: list[str] | None = []
                    for sub, (found, known) in zip(queries, results, strict=True):
                        for v in found or ():
                            join.verdicts[f"{sub.rtype}/{v.rid}"] = True
                        rids = [v.rid for v in found] if found is not None else known
                        among = None if among is None or rids is None else among + [f"{sub.rtype}/{r}" for r in rids]
                    clause = joined_chain(clause, join, among)
            elif (has := clause.has) is not None:
                inner = {has.query.rtype: await self._resolve(has.query)}
                found, _ = await self._sub_matches(has.query, inner[has.query.rtype])
                if found is None:
                    clause = replace(clause, has=None, join=Join(has.param, inner, reverse=True))
                else:
                    clause = replace(clause, has=None, ids=frozenset(
                        ref.split("/", 1)[1] for v in found for ref in _references(v, has.param)
                        if ref.startswith(f"{query.rtype}/")))
            out.append(clause)
        out = await self._prefix_values(query, out, cursor)
        return await self._read_within(query.rtype, await self._with_windows(query.rtype, out))

    async def _prefix_values(self, query: SearchQuery, clauses: list[Clause], cursor: str | None) -> list[Clause]:
        """``clauses`` with the ``within`` of each string clause that matches by prefix (``Clause.within_prefix``:
        ``family=王``) kept only where it serves (a pair of ``SORTS_WITHIN`` by its parameter whose other names a
        clause that drives, or the first sort key), with the longer values of the parameter that start with it
        (``within_also``: 王小 beside 王, Huang beside Hu), found one store command each, as the next key of the
        parameter past the last found: a date is then read within each. Past ``_PREFIX_VALUES`` of them (``family=w``)
        it is dropped (the clauses read as before), and a sort walks within the value only when there is none. A
        page after the first whose position lies in entries the choice decides keeps the choice it shows (within a
        value, or the dates' or the family's own), so a person named 王小 written between two pages does not turn
        its cursor into one of another search."""
        prefixed = [k for k, c in enumerate(clauses) if c.within_prefix and c.within is not None]
        if not prefixed:
            return clauses
        pairs = SORTS_WITHIN.get(query.rtype, ())
        first = query.sort[0][0] if query.sort else None
        keyed = {keyed_code(c) for c in clauses if c.drives and c.join is None} | {first}
        layout = await self._layout()
        position = _cursor_position(cursor, sorted_by=first is not None) if cursor else None
        out = list(clauses)
        for k in prefixed:
            by, value = clauses[k].within or ("", "")
            served = [d for b, d in pairs if b == by and d in keyed and layout >= within_layout(b, d)]
            # the entries the choice decides a position in: a sort's walk, of its first key; a scan, of its driver
            decided = [f"{query.rtype}|{d}{end}" for d in served if first is None or d == first
                       for end in ("|", f"{WITHIN}{by}{WITHIN}")] + ([f"{query.rtype}|{by}|"] if first is None else [])
            kept: tuple[str, ...] | None = None  # the longer values; None: not read within
            if served and position is not None and position.startswith(tuple(decided)):
                named = next((position[len(head):].partition("|")[0] for d in served
                              if position.startswith(head := f"{query.rtype}|{d}{WITHIN}{by}{WITHIN}")), None)
                if named is not None and named.startswith(value):  # within: the values now, and the position's
                    longer = await self._longer_values(query.rtype, by, value, _PREFIX_VALUES_PAGED)
                    kept = None if longer is None else tuple(sorted({*longer, named} - {value}))
            elif served:
                kept = await self._longer_values(query.rtype, by, value, _PREFIX_VALUES)
            out[k] = replace(clauses[k], within=None if kept is None else clauses[k].within, within_prefix=False,
                             within_also=kept or ())
        return out

    async def _longer_values(self, rtype: str, by: str, value: str, cap: int) -> tuple[str, ...] | None:
        """The values of the string parameter ``by`` (hex of their sortable forms, as its keys hold them) that
        start with ``value`` and are longer, in order; None when there are more than ``cap``."""
        order = index_order(rtype, by, False)
        assert order is not None and order.kind == "string"
        found: list[str] = []
        low, high = f"{by}|{value}.{TOP}", f"{by}|{value}{TOP}"
        while keys := await self.store.scan_index(rtype, low, high, after=None, limit=1):
            if len(found) == cap:
                return None
            found.append(order.string_hex(keys[0]))
            low = f"{by}|{found[-1]}.{TOP}"
        return tuple(found)

    async def _sub_matches(self, query: SearchQuery,
                           clauses: list[Clause]) -> tuple[list[Version] | None, list[str] | None]:
        """Every match of a chain's or ``_has``'s sub-search (``clauses``: resolved); or, when its clause that
        drives has more than ``search_chain_max`` keys (or ids), None (the clause is then a ``Join``, checked on
        each candidate) and, when the probe read every key of it (up to 2,048), the ids every match is among.
        Decided by the probes of its keys, not by reading its resources (which cost 16 clients a second when each
        read a thousand at once), so a sub-search of ``search_chain_max`` matches or fewer may still be joined when
        it has more entries than matches."""
        cap = self.settings.search_chain_max
        drivers = [i for i, c in enumerate(clauses) if c.drives]
        if not drivers:
            return None, None
        if len(drivers) == 1 and clauses[drivers[0]].ids is None:
            # (a probe of up to 1,024 keys shares a store command with other requests' scans: the usual one first)
            limits = (cap, _PROBE_LIMITS[-1]) if cap < _PROBE_LIMITS[-1] else (cap,)
            driver, known, _ = await self._probe_for_driver(query.rtype, clauses, drivers, limits)
        else:
            driver, known = await self._choose_driver(query.rtype, clauses)
        ids = clauses[driver].ids
        among = sorted(ids) if ids is not None else None if known is None else \
            sorted({split_index_key(key)[1] for key in known})
        if among is None or len(known if known is not None else among) > cap:
            return None, among
        return [v async for _, v in self._walk(query.rtype, clauses, driver, start=None, backward=False, known=known,
                                               batch=1000)], None

    async def _read(self, rtype: str, clauses: list[Clause], rids: list[str], *,
                    driver: Clause | None = None) -> dict[str, Version]:
        """The current versions of ``rids``, with the verdicts of ``clauses``' joins settled for them."""
        versions = await self.store.current_many(rtype, rids)
        await self._settle(rtype, clauses, list(versions.values()), driver=driver)
        return versions

    async def _settle(self, rtype: str, clauses: list[Clause], versions: list[Version], *,
                      driver: Clause | None = None) -> None:
        """Settle the verdicts of ``clauses``' joins (``Join``) that ``versions`` need before they are checked:
        for those that pass every other clause (each join in turn narrows them). A chain that drives (``driver``)
        is settled for every version: its entries that hold decide where a resource is met (``_matching``)."""
        joins = [c for c in clauses if c.join is not None]
        if not joins:
            return
        read = [v for v in versions if v.body is not None]
        others = [c for c in clauses if c.join is None]
        alive = [v for v in read if _passes(others, v)]
        for clause in joins:
            join = clause.join
            assert join is not None
            these = read if clause is driver else alive
            if join.reverse:
                await self._settle_has(rtype, join, {v.rid for v in these})
            else:  # (the targets it may hold: of the sub-searches' types; among their known ids, if known)
                among = clause.keys.exact if clause.keys is not None else None
                await self._settle_chain(join, {ref for v in these for ref in _references(v, join.param)
                                                if ref.partition("/")[0] in join.inner
                                                and (among is None or f"{join.param}|{hexs(ref)}|" in among)})
            alive = [v for v in alive if _passes([clause], v)]

    async def _settle_chain(self, join: Join, refs: set[str]) -> None:
        """Whether each target of ``refs`` (``Type/id``) matches its type's sub-search: read and checked."""
        by_type: dict[str, list[str]] = {}
        for ref in sorted(refs - join.verdicts.keys()):
            target, _, rid = ref.partition("/")
            by_type.setdefault(target, []).append(rid)
        for target, rids in by_type.items():
            clauses = join.inner.get(target)
            for at in range(0, len(rids), 1000):
                chunk = rids[at:at + 1000]
                versions = await self._read(target, clauses, chunk) if clauses is not None else {}
                for rid in chunk:
                    version = versions.get(rid)
                    join.verdicts[f"{target}/{rid}"] = (clauses is not None and version is not None
                                                        and _passes(clauses, version))

    async def _settle_has(self, rtype: str, join: Join, rids: set[str]) -> None:
        """Whether a match of the ``_has`` sub-search refers to each of ``rids`` (of ``rtype``) by ``join.param``:
        the sub-search type's entries naming each are scanned (a few first, in commands shared by all of them) and
        their resources read and checked; more entries are read only for those whose first all failed."""
        ((source, clauses),) = join.inner.items()
        wanted = sorted(rids - join.verdicts.keys())
        entries = {rid: exact_entry(f"{join.param}|{hexs(f'{rtype}/{rid}')}") for rid in wanted}
        pending: dict[str, str | None] = dict.fromkeys(wanted)  # each id's position in its entries
        limit = 8
        while pending:
            if all(position is None for position in pending.values()):
                scanned = await self.store.scan_index_many(
                    [(source, entries[rid].lo, entries[rid].hi) for rid in pending], limit=limit)
            else:
                scanned = await asyncio.gather(*(self.store.scan_index(
                    source, entries[rid].lo, entries[rid].hi, after=position, limit=limit)
                    for rid, position in pending.items()))
            found = dict(zip(pending, scanned, strict=True))
            versions = await self._read(source, clauses, sorted({split_index_key(key)[1]
                                                                 for keys in found.values() for key in keys}))
            for rid, keys in found.items():
                referring = (versions.get(split_index_key(key)[1]) for key in keys)
                # (the version must hold the entry still: an orphan's resource may no longer refer to it)
                if any(v is not None and items_starting(v.index, entries[rid].lo) and _passes(clauses, v)
                       for v in referring):
                    join.verdicts[rid] = True
                elif len(keys) < limit:
                    join.verdicts[rid] = False
            pending = {rid: found[rid][-1] for rid in pending if rid not in join.verdicts}
            limit = min(limit * 8, 1000)

    async def _with_windows(self, rtype: str, clauses: list[Clause]) -> list[Clause]:
        """``clauses`` with a date window (query.py ``date_window``) before the first clause of each date parameter
        that has two or more (``date=ge…&date=le…``) or ``ap``; the window drives instead of them. Without one (a
        resource with several values of the parameter, a value longer than ``WINDOWED_SPAN``, a store below
        ``SPANS_LAYOUT``), a clause that drives nothing keeps its place, as cursors name their driver by it."""
        groups: dict[str, list[Clause]] = {}
        for clause in clauses:
            if clause.dated is not None:
                groups.setdefault(clause.dated[0], []).append(clause)
        windows: dict[str, Clause | None] = {}
        for param, group in groups.items():
            if len(group) > 1 or any(c.dated is not None and c.dated[1] == "ap" for c in group):  # (ap: both sides)
                longest = await self.spans.longest(rtype, param) if await self._layout() >= SPANS_LAYOUT \
                    else UNBOUNDED
                windows[param] = date_window(group, longest) if longest <= WINDOWED_SPAN else None
        if not windows:
            return clauses
        out: list[Clause] = []
        for clause in clauses:
            param = clause.dated[0] if clause.dated is not None else ""
            if param in windows:
                window = windows[param]
                if clause is groups[param][0]:
                    out.append(window or Clause(clause.name))
                if window is not None:
                    clause = replace(clause, checks_only=True)
            out.append(clause)
        return out

    async def _read_within(self, rtype: str, clauses: list[Clause]) -> list[Clause]:
        """``clauses`` with each clause that drives on a date (or a window of one) beside a clause whose every match
        holds one value that the date has entries within (``Clause.within``: a status, a subject, the compartment's
        patient; keys.py ``SORTS_WITHIN``) read from the date's entries within that value (query.py
        ``read_within``): ``ServiceRequest?status=active&authored=ge…`` reads the active orders of those dates, not
        every order of them; ``Observation?subject=…&date=…`` the patient's results of those dates, not every
        patient's. In the clause's place, as cursors name their driver by its place (one made before the store had
        these entries is refused: ``_scans_to``). The clause naming the value then only checks: the entries within
        it hold no resource that it does not, so it never drives better, and probing it cost a store command."""
        holders = [(k, c.within, c.within_also) for k, c in enumerate(clauses) if c.within is not None
                   and not c.negate]
        pairs = SORTS_WITHIN.get(rtype, ())
        if not holders or not pairs:
            return clauses
        layout = await self._layout()
        out: list[Clause] = []
        used: set[int] = set()
        for clause in clauses:
            code = keyed_code(clause) if clause.drives and clause.join is None else None
            for k, (by, value), also in holders:
                if code is not None and (by, code) in pairs and layout >= within_layout(by, code):
                    clause = read_within(clause, code, by, (value, *also))
                    used.add(k)
                    break
            out.append(clause)
        return [replace(c, checks_only=True) if k in used else c for k, c in enumerate(out)]

    # ---- scans --------------------------------------------------------------------------------------------

    async def _choose_driver(self, rtype: str, clauses: list[Clause]) -> tuple[int, list[str] | None]:
        """The index of the clause to scan (-1: the type's resources), and, when the probe read all its keys,
        those keys (narrowed by the other complete probes: ``_probe_for_driver``). The clause with the fewest keys
        wins; probes grow (``_PROBE_LIMITS``: 8, 64, 256, 2,048 keys) only while every candidate still has more, so
        a selective clause beside an unselective one costs a few keys to find.
        A clause whose parameter was selective in recent searches is probed alone first: when it is again, the
        other probes are not read (one store command less for ``family=…&birthdate=…``).

        A clause scanned with a substring filter (``:contains``, ``system|``, ``_text``/``_content``) can cost a
        read of its parameter's every key to probe, however few it holds: it is probed only when no other
        clause has 2,048 keys or fewer (``family=…&_content=…`` reads a few ``family`` keys, not the ``_content``
        range), and then once, at 256 (so are several such clauses without another)."""
        candidates = [i for i, c in enumerate(clauses) if c.drives]
        if not candidates:
            return -1, None
        if len(candidates) == 1:
            return candidates[0], None
        filtered = [i for i in candidates if (held := clauses[i].keys) is not None
                    and any(span.containing for span in held.spans)]
        exact = [i for i in candidates if i not in filtered]
        if not exact or not filtered:  # substring scans alone: one probe each (a growing one could read it thrice)
            limits = _PROBE_LIMITS if exact else _SUBSTRING_PROBE
            chosen, keys, _ = await self._probe_for_driver(rtype, clauses, candidates, limits)
            return chosen, keys
        chosen, keys, complete = await self._probe_for_driver(rtype, clauses, exact, _PROBE_LIMITS)
        if not complete:  # every other clause has more than 2,048 keys: a substring scan may have fewer
            other, other_keys, other_complete = await self._probe_for_driver(rtype, clauses, filtered,
                                                                             _SUBSTRING_PROBE)
            if other_complete:
                return other, other_keys
        return chosen, keys

    async def _probe_for_driver(self, rtype: str, clauses: list[Clause], candidates: list[int],
                                limits: tuple[int, ...]) -> tuple[int, list[str] | None, bool]:
        """``_choose_driver`` among ``candidates`` with probes of ``limits`` keys; also whether the chosen clause
        has at most the last limit of keys. When its probe read every key and others read every key of theirs,
        the keys returned are only those of resources that every complete probe found: no other can match."""
        async def probe(i: int, limit: int) -> list[str]:
            clause = clauses[i]
            if clause.ids is not None:
                return [""] * min(len(clause.ids), limit + 1)  # sized, not read: ids are looked up directly
            assert clause.keys is not None
            spans = tuple(clause.keys.spans)
            if self.selectivity.known_larger(rtype, spans, limit):
                return [""] * (limit + 1)  # more than ``limit``, as a probe found lately: never taken for keys
            found: list[str] = []
            if clause.keys.exact is not None:  # (a chain's targets, maybe thousands: ranges read together)
                async for keys in self._exact_batches(rtype, clause.keys, limit + 1, start=None):
                    found += keys
                    if len(found) > limit:
                        break
            else:
                for low, high, containing in spans:
                    found += await self.store.scan_index(rtype, low, high, after=None, limit=limit + 1 - len(found),
                                                         containing=containing)
                    if len(found) > limit:
                        break
            if len(found) > limit:
                self.selectivity.learn_larger(rtype, spans, limit)
            return found

        read: dict[int, list[str]] = {}  # the probes read at the current limit, by clause
        guess = self.selectivity.likely(rtype, [clauses[i] for i in candidates])
        if guess is not None and len(limits) > 1:  # usually selective: probe it alone, and stop there if it is
            chosen = candidates[guess]
            read[chosen] = await probe(chosen, limits[0])
            self.selectivity.learn(rtype, clauses[chosen], len(read[chosen]))
            if len(read[chosen]) <= limits[0]:
                return chosen, read[chosen] if clauses[chosen].ids is None else None, True
        for limit in limits:
            missing = [i for i in candidates if i not in read]
            read.update(zip(missing, await asyncio.gather(*(probe(i, limit) for i in missing)), strict=True))
            if limit == _PROBE_LIMITS[0]:
                for i in missing:
                    self.selectivity.learn(rtype, clauses[i], len(read[i]))
            probes = [read.pop(i) for i in candidates]
            complete = [k for k, keys in enumerate(probes) if len(keys) <= limit]
            if complete or limit == limits[-1]:
                best = min(complete or range(len(candidates)), key=lambda k: len(probes[k]))
                chosen = candidates[best]
                keys = probes[best] if best in complete and clauses[chosen].ids is None else None
                if keys is not None and len(complete) > 1:
                    keys = _in_every(keys, [_probed_ids(clauses[candidates[k]], probes[k]) for k in complete
                                            if k != best])
                return chosen, keys, best in complete
        raise AssertionError("unreachable")

    async def _scan(self, rtype: str, clauses: list[Clause], *, want: int,
                    state: Any) -> tuple[list[Version], Any]:
        """Up to ``want`` matches from the position ``state``; returns them and the state after (None: done)."""
        found = await self._scan_page(rtype, clauses, want=want, state=state)
        return found.matches, found.next_state

    async def _scan_page(self, rtype: str, clauses: list[Clause], *, want: int, state: Any,
                         from_end: bool = False) -> _Scan:
        """A page from ``state``: None (the start; ``from_end``: the end), ``[driver, position]`` (after it) or
        ``[driver, position, "prev"]`` (the page before it). Positions are index keys, or ids when the driver is
        not the index."""
        if want <= 0:
            return _Scan([], None, None)
        known: list[str] | None = None
        backward = False
        if state is None:
            driver, known = await self._choose_driver(rtype, clauses)
            position: str | None = None
            backward = from_end
        else:
            if not (isinstance(state, list) and len(state) in (2, 3) and isinstance(state[0], int)
                    and isinstance(state[1], str) and -1 <= state[0] < len(clauses)
                    and (len(state) == 2 or state[2] == "prev")):
                raise _bad_cursor(_NOT_THIS_SEARCH)
            driver, position, backward = state[0], state[1], len(state) == 3
            if driver >= 0 and not clauses[driver].drives:  # (a date window that could not be made this time)
                raise _bad_cursor(_NOT_THIS_SEARCH)
            if driver >= 0 and not _scans_to(rtype, clauses[driver], position):  # (its entries are read elsewhere
                raise _bad_cursor(_NOT_THIS_SEARCH)  # now: a date within a status, where the store came to hold it)
        items = await _first(self._walk(rtype, clauses, driver, start=position, backward=backward, known=known,
                                        batch=min(max(want + 1, 20), 1000)), want + 1)
        more = len(items) > want
        items = items[:want]
        if backward:
            items.reverse()
            return _Scan([v for _, v in items], [driver, items[-1][0]] if items else None,
                         [driver, items[0][0], "prev"] if more and items else None)
        return _Scan([v for _, v in items], [driver, items[-1][0]] if more and items else None,
                     [driver, items[0][0], "prev"] if state is not None and items else None)

    def _walk(self, rtype: str, clauses: list[Clause], driver: int, *, start: str | None, backward: bool,
              known: list[str] | None, batch: int) -> AsyncGenerator[tuple[str, Version], None]:
        """Matches with their positions, in the driver's order (reversed: ``backward``), from ``start`` on;
        ``batch``: positions read by the first store call (a page's worth), doubling after."""
        if driver == -1:
            return self._walk_type(rtype, clauses, start=start, backward=backward, batch=batch)
        if clauses[driver].ids is not None:
            return self._walk_ids(rtype, clauses, driver, start=start, backward=backward, batch=batch)
        return self._walk_keys(rtype, clauses, driver, start=start, backward=backward, known=known, batch=batch)

    async def _walk_type(self, rtype: str, clauses: list[Clause], *, start: str | None, backward: bool,
                         batch: int, spend: Callable[[int], None] | None = None
                         ) -> AsyncGenerator[tuple[str, Version], None]:
        """The type's resources that pass ``clauses``, in id order; ``spend`` is told of each one that does not."""
        while True:
            versions = await self.store.scan_type(rtype, after=start, limit=batch, backward=backward)
            await self._settle(rtype, clauses, versions)
            for version in versions:
                if _passes(clauses, version):
                    yield version.rid, version
                elif spend is not None:
                    spend(1)
            if len(versions) < batch:
                return
            start = versions[-1].rid
            batch = min(batch * 2, 1000)

    async def _walk_ids(self, rtype: str, clauses: list[Clause], driver: int, *, start: str | None,
                        backward: bool, batch: int) -> AsyncGenerator[tuple[str, Version], None]:
        ids = sorted((i for i in clauses[driver].ids or ()
                      if start is None or (i < start if backward else i > start)), reverse=backward)
        first = 0
        while first < len(ids):  # a page's worth first, then doubling: a page of 20 reads 21 resources, not 500
            chunk = ids[first:first + batch]
            first += batch
            batch = min(batch * 2, 500)
            found = await self._read(rtype, clauses, chunk)
            for rid in chunk:
                version = found.get(rid)
                if version is not None and _passes(clauses, version):
                    yield rid, version

    async def _walk_keys(self, rtype: str, clauses: list[Clause], driver: int, *, start: str | None,
                         backward: bool, known: list[str] | None, batch: int,
                         spend: Callable[[int], None] | None = None) -> AsyncGenerator[tuple[str, Version], None]:
        """``known``: every key of the driver (its probe read them all), so no scan is needed. ``spend`` is told
        how many keys read were not matches."""
        keys = clauses[driver].keys
        assert keys is not None
        async for found in self._key_batches(rtype, keys, start=start, backward=backward, known=known, batch=batch):
            matches = await self._candidates(rtype, clauses, keys, found)
            if spend is not None:
                spend(len(found) - len(matches))
            for item in matches:
                yield item

    async def _key_batches(self, rtype: str, keys: KeySet, *, start: str | None, backward: bool,
                           known: list[str] | None, batch: int) -> AsyncGenerator[list[str], None]:
        """The keys of ``keys``' spans from ``start`` on, ``batch`` first, then twice as many each time up to 1,000:
        scanned, or taken from ``known`` (a page of 50 among 1,100 known keys reads a hundred resources, not all:
        known keys are those of a first page's probe, so there is no ``start``)."""
        if known is not None:
            assert start is None
            ordered, first = sorted(known, reverse=backward), 0
            while first < len(ordered):
                yield ordered[first:first + batch]
                first += batch
                batch = min(batch * 2, 1000)
            return
        if keys.exact is not None and not backward:
            async for found in self._exact_batches(rtype, keys, batch, start=start):
                yield found
            return
        for low, high, containing in reversed(keys.spans) if backward else keys.spans:
            if start is not None and (start <= f"{rtype}|{low}" if backward else start >= f"{rtype}|{high}"):
                continue
            position = start
            while True:
                found = await self.store.scan_index(rtype, low, high, after=position, limit=batch,
                                                    backward=backward, containing=containing)
                if not found:
                    break
                position = found[-1]
                yield found
                if len(found) < batch:
                    break
                batch = min(batch * 2, 1000)

    async def _exact_batches(self, rtype: str, keys: KeySet, batch: int, *,
                             start: str | None) -> AsyncGenerator[list[str], None]:
        """The keys of a set of exact entries (``KeySet.exact``: a chain's targets) after the key ``start``, in
        order, the ranges read together in shared commands, 8 ranges first, then twice as many each time up to 64;
        each batch the keys of those ranges. A range asks for up to 64 keys (a shared command holds 64 ranges of
        64: ``ScanBatcher``; most targets are named a few times); one that has more is read on alone, in batches
        twice as large each time up to 1,000 (so is the rest of the range that holds ``start``)."""
        limit = min(batch, 64)

        async def rest(low: str, high: str, position: str) -> AsyncGenerator[list[str], None]:
            step = limit
            while more := await self.store.scan_index(rtype, low, high, after=position, limit=step):
                yield more
                if len(more) < step:
                    return
                position, step = more[-1], min(step * 2, 1000)

        spans = [span for span in keys.spans if start is None or start < f"{rtype}|{span.high}"]
        if start is not None and spans and start >= f"{rtype}|{spans[0].low}":
            low, high, _ = spans.pop(0)
            async for more in rest(low, high, start):
                yield more
        width, at = 8, 0
        while at < len(spans):
            chunk = spans[at:at + width]
            at, width = at + width, min(width * 2, 64)
            scanned = await self.store.scan_index_many([(rtype, low, high) for low, high, _ in chunk], limit=limit)
            out: list[str] = []
            for (low, high, _), found in zip(chunk, scanned, strict=True):
                out += found
                if len(found) < limit:
                    continue
                yield out
                out = []
                async for more in rest(low, high, found[-1]):
                    yield more
            if out:
                yield out

    async def _candidates(self, rtype: str, clauses: list[Clause], keys: KeySet,
                          found: list[str]) -> list[tuple[str, Version]]:
        """The matches among index keys ``found`` (in their order): each key must be its resource's smallest in
        the driver's ranges (a resource is emitted once) and the resource must pass every clause."""
        driver = next((c for c in clauses if c.keys is keys and c.join is not None), None)
        if driver is not None:  # a chain that drives: its targets first, then the resources that name a match
            join = driver.join
            assert join is not None
            await self._settle_chain(join, {join.target(split_index_key(key)[0]) for key in found})
        candidates = _candidate_ids(keys, found)
        versions = await self._read(rtype, clauses, sorted({rid for _, rid in candidates}), driver=driver)
        return _matching(rtype, clauses, keys, candidates, versions)

    # ---- sorting ------------------------------------------------------------------------------------------

    async def _sorted_page(self, queries: list[SearchQuery], *, count: int, cursor: str | None,
                           from_end: bool = False, clauses: list[list[Clause]] | None = None) -> SearchPage:
        """``_sort``: every match of the searches (up to ``search_sort_max`` in all), in one order, paged by a
        keyset cursor (the sort values and ``Type/id`` of the last match). ``clauses``: resolved already.

        One search whose first sort key is a parameter whose entries sort by value (index_order.py), with more than
        ``search_sort_in_memory`` matches (its most selective clause has more keys), is read in the order of those
        entries instead (the matches that share a value of the first key sorted in memory by the others): pages
        cost the same at any depth, and any number of matches can be sorted. When its first page reads more than
        ``search_order_budget`` resources that do not match (a filter selective beside the type's size), it is
        sorted in memory after all, unless it matches more than ``search_sort_max``. One whose only clause that
        drives names one status or subject that its sort's date has entries within (``_within``) is read in their
        order, however few its matches."""
        query = queries[0]  # the searches share _sort
        if len(queries) == 1 and not from_end:
            by_index = index_order(query.rtype, *query.sort[0])
            mark = _decode_cursor(cursor) if cursor else None
            walked = isinstance(mark, dict) and "w" in mark
            if by_index is not None and (walked or mark is None):
                resolved = clauses[0] if clauses is not None else await self._resolve(query, cursor)
                clauses = [resolved]
                by_index = await self._within(by_index, resolved, mark if walked else None)
                if walked:
                    return await self._ordered_page(by_index, query, resolved, count=count, mark=mark)
                # within the value of the one clause that drives, the walk meets matches alone: few or many, it reads
                # no more than a page's worth (and the resources without the date), so they need not be counted first
                # (not when a date clause drives within that value instead: its matches may be a few of the value's)
                alone = by_index.narrowed and [c.within is not None for c in resolved if c.drives] == [True]
                if alone or await self._many(query.rtype, resolved):
                    try:  # a first page that passes over too many resources is sorted in memory, as a few matches are
                        return await self._ordered_page(by_index, query, resolved, count=count, mark=None,
                                                        budget=self.settings.search_order_budget)
                    except _OverBudget:
                        try:
                            return await self._sorted_in_memory(queries, count=count, cursor=None, from_end=False,
                                                                clauses=clauses)
                        except TooManyMatches:  # too many for memory after all: in index order, however slow
                            return await self._ordered_page(by_index, query, resolved, count=count, mark=None)
        return await self._sorted_in_memory(queries, count=count, cursor=cursor, from_end=from_end, clauses=clauses)

    async def _within(self, order: IndexOrder, clauses: list[Clause], mark: dict[str, Any] | None) -> IndexOrder:
        """``order`` within the value that a clause's every match holds (index_order.py ``within``: the active
        orders by date, a patient's observations by date), when the store's resources all have those entries. A
        cursor ``mark`` of a page read in ``order`` itself (before the store's upgrade completed) stays in it."""
        for clause in clauses:
            if clause.within is None or clause.within_also or clause.negate or await self._layout() < within_layout(
                    clause.within[0], order.param):  # (a walk reads one value's run)
                continue
            narrow = within(order, *clause.within)
            if narrow is not None:
                walk = mark.get("w") if mark is not None else None
                if (isinstance(walk, list) and len(walk) == 2 and walk[0] == "k" and isinstance(walk[1], str)
                        and order.holds(walk[1])):
                    return order
                return narrow
        return order

    async def _sorted_in_memory(self, queries: list[SearchQuery], *, count: int, cursor: str | None, from_end: bool,
                                clauses: list[list[Clause]] | None) -> SearchPage:
        """``_sort`` by reading every match of the searches (up to ``search_sort_max``) and sorting them."""
        query = queries[0]
        cap = self.settings.search_sort_max
        keyed: list[tuple[list[Any], Version]] = []
        probes = _Probes(1)
        i = 0
        while (i := await self._next_with_matches(queries, i, clauses, probes)) < len(queries):
            q = queries[i]
            found = await self.all_matches(q, cap=cap, clauses=None if clauses is None else clauses[i])
            keyed += [(_sort_values(q, v), v) for v in found]
            if len(keyed) > cap:
                msg = f"The search matches more than {cap} resources, more than _sort handles; narrow it"
                raise TooManyMatches(msg, issues=[Issue(code="too-costly", diagnostics=msg)])
            i += 1

        keyed.sort(key=_by_sort_values(query))
        start, end = (max(0, len(keyed) - count), len(keyed)) if from_end and not cursor else (0, len(keyed))
        if cursor:
            mark = _decode_cursor(cursor)
            backward = isinstance(mark, dict) and "b" in mark
            mark = mark["b"] if backward else mark
            if not isinstance(mark, list) or len(mark) != len(query.sort) + 1:
                raise _bad_cursor(_NOT_THIS_SEARCH)
            while start < len(keyed) and _compare(query, keyed[start][0], mark) < (0 if backward else 1):
                start += 1
            if backward:  # the page that ends just before the mark
                start, end = max(0, start - count), start
        chunk = keyed[start:min(start + count, end)]
        nxt = _encode_cursor(chunk[-1][0]) if chunk and start + len(chunk) < len(keyed) else None
        previous = _encode_cursor({"b": chunk[0][0]}) if chunk and start > 0 else None
        return SearchPage([v for _, v in chunk], nxt, total=len(keyed), previous_cursor=previous)

    async def _many(self, rtype: str, clauses: list[Clause]) -> bool:
        """Whether a search may match more than ``search_sort_in_memory`` resources: no clause drives a scan, or
        the most selective has more keys than that (the probes of ``_choose_driver``, up to that many keys)."""
        candidates = [i for i, c in enumerate(clauses) if c.drives]
        if not candidates:
            return True
        bound = self.settings.search_sort_in_memory
        limits = (_PROBE_LIMITS[0], bound) if bound > _PROBE_LIMITS[0] else (bound,)
        _, _, complete = await self._probe_for_driver(rtype, clauses, candidates, limits)
        return not complete

    async def _ordered_page(self, order: IndexOrder, query: SearchQuery, clauses: list[Clause], *, count: int,
                            mark: dict[str, Any] | None, budget: int | None = None) -> SearchPage:
        """A page of a search in index order from the cursor ``mark``: ``{"w": [phase, position]}``, after that
        position, or with ``"p"``, the page that ends before it. Phase ``k``: the walk of the parameter's pairs,
        the position a key; ``m``: the resources without a sortable value, the position a key of their entries
        (``IndexOrder.tail``); ``t``: those resources on a store without those entries (or every resource, for
        ``_id``), the position an id. Sorted by more keys (``_in_groups``), the position is where the last match's
        group starts (with ``"p"``, the first match's group ends) and ``"s"`` holds that match's sort values.
        ``budget``: resources that do not match it may read (raises ``_OverBudget`` beyond)."""
        grouped = len(query.sort) > 1 and order.kind != "id"  # ids are unique: no other key can order them
        phase, position, back, seen = "k", None, False, None
        if mark is not None:
            walk, seen = mark.get("w"), mark.get("s")
            if not (isinstance(walk, list) and len(walk) == 2 and walk[0] in ("k", "t", "m")
                    and isinstance(walk[1], str)
                    and (walk[0] == "t" or (order.holds if walk[0] == "k" else order.holds_tail)(walk[1]))
                    and (isinstance(seen, list) and len(seen) == len(query.sort) + 1 if grouped else seen is None)):
                raise _bad_cursor(_NOT_THIS_SEARCH)
            phase, position, back = walk[0], walk[1], bool(mark.get("p"))
        batch = min(max(count + 1, 20), 1000)
        found = (self._in_groups(order, query, clauses, phase, position, seen, back=back, batch=batch, budget=budget,
                                 want=count + 1)
                 if grouped else _one_by_one(self._in_order(order, clauses, phase, position, back=back, batch=batch,
                                                            budget=budget)))
        items = await _first(found, count + 1)
        more = len(items) > count
        items = items[:count]
        if back:
            items.reverse()
        nxt = items[-1].ahead if items and (more or back) else None
        previous = items[0].behind if items and (more if back else mark is not None) else None
        return SearchPage([item.version for item in items], None if nxt is None else _encode_cursor(nxt),
                          total=len(items) if mark is None and nxt is None else None,  # all on the first page
                          previous_cursor=None if previous is None else _encode_cursor(previous))

    async def _in_groups(self, order: IndexOrder, query: SearchQuery, clauses: list[Clause], phase: str,
                         anchor: str | None, seen: list[Any] | None, *, back: bool, batch: int,
                         budget: int | None, want: int | None = None) -> AsyncGenerator[_Placed, None]:
        """The matches of a sort by several keys: in index order of the first (``_in_order``), each run of matches
        with one value of it (a group; those without one are a group, last) sorted in memory by all the keys.
        From the group whose first match in the walk's direction is at ``anchor`` (None: from the start), past the
        match whose sort values are ``seen``. A group of more than ``search_sort_max`` matches is a 400. A large
        group is kept a while (``_Groups``): the next pages inside it read only their own resources, and a page
        that finds its group being read by another waits for it. ``want``: the matches the page takes (the second key's
        read-ahead, ``_by_second_key``)."""
        shape = (query.text, tuple(query.sort), tuple(c.name for c in clauses))  # c.name: a compartment's too
        fresh = anchor is None  # a first page: nothing kept is used, and it starts at the walk's first match
        if fresh:  # where the walk starts: its first pair (each resource met from there is read and checked), or,
            # when no resource has a value, its first match among those without (phase m or t)
            pair = await _first(order.walk(self.store, after=None, rising=not order.descending, batch=2), 1)
            if pair:
                phase, anchor = "k", pair[0][1]
            else:
                first = await _first(self._in_order(order, clauses, "k", None, back=False, batch=2, budget=budget), 1)
                if not first:
                    return
                phase, anchor = first[0][:2]
        assert anchor is not None
        at = (shape, back, phase, anchor)
        kept, reading = None, None
        if not fresh:
            kept = self.groups.get(at)
            while kept is None and at in self.groups.reading:  # another page reads this group: wait for it
                await self.groups.reading[at].wait()
                kept = self.groups.get(at)
            if kept is None:
                reading = self.groups.reading[at] = asyncio.Event()
        try:
            large = None if kept is not None else await self._large_group(order, query, clauses, phase, anchor, seen,
                                                                          back=back, known=not fresh)
            if large is not None:
                second, members = large
                if reading is not None:  # the pages that wait for this group now wait for its keeping, if any: it
                    del self.groups.reading[at]  # is registered as the walk below starts, before anything else runs
                    reading.set()
                    reading = None
                found = self._by_second_key(order, second, query, clauses, members, seen, shape, back=back,
                                            batch=batch, budget=budget, want=want)
            else:
                found = self._groups_from(order, query, clauses, phase, anchor, seen, kept, shape, back=back,
                                          batch=batch, budget=budget)
            async with aclosing(found) as placed_in_order:
                async for placed in placed_in_order:
                    yield placed
        finally:
            if reading is not None:
                del self.groups.reading[at]
                reading.set()

    async def _groups_from(self, order: IndexOrder, query: SearchQuery, clauses: list[Clause], phase: str,
                           anchor: str | None, seen: list[Any] | None, kept: _Group | None, shape: tuple[Any, ...],
                           *, back: bool, batch: int, budget: int | None,
                           served: tuple[str, Any] | None = None,
                           whole: bool = False) -> AsyncGenerator[_Placed, None]:
        """``_in_groups`` once it knows whether the cursor's group is kept (``kept``). ``served``: the (phase,
        first-key value) of a group served already, whose members met from ``anchor`` on are passed over.
        ``whole``: the group at ``anchor`` is read whole, not taken by its second key (``_by_second_key``)."""
        cap = self.settings.search_sort_max
        # a kept group's members met beyond its far end are passed over likewise (written into it since it was
        if kept is not None:  # kept: they come once the group is read again)
            async for placed in self._from_group(order, query, clauses, kept, seen, back=back, batch=batch):
                yield placed
            served = (kept.head[0], _first_key_value(order, *kept.head))
            phase, anchor = kept.head if back else kept.tail  # on from the group's far end
            seen = None

        async def walked() -> AsyncGenerator[tuple[str, str, Version], None]:
            if anchor is not None and kept is None:  # the anchor itself, then what lies beyond it
                rid = anchor if phase == "t" else split_index_key(anchor)[1]
                version = (await self._read(order.rtype, clauses, [rid])).get(rid)
                if version is not None and _stands_at(order, phase, anchor, version) and _passes(clauses, version):
                    yield phase, anchor, version
            async with aclosing(self._in_order(order, clauses, phase, anchor, back=back, batch=batch,
                                               budget=budget)) as rest:
                async for item in rest:
                    yield item

        def ordered(group: list[tuple[str, str, Version]], first: bool) -> list[_Placed]:
            keyed = [(_sort_values(query, version), version) for _, _, version in group]
            keyed.sort(key=_by_sort_values(query), reverse=back)
            start, end = group[0][:2], group[-1][:2]  # the group's ends in the walk's direction
            head, tail = (end, start) if back else (start, end)  # and in the sort's
            if len(group) >= _Groups.LARGE:
                rising = keyed[::-1] if back else keyed
                self.groups.put(shape, _Group(time.monotonic(), [(values, v.rid) for values, v in rising], head, tail))
            if first:  # the rest of the cursor's group
                keyed = [(values, v) for values, v in keyed if _beyond(query, values, seen, back)]
            return [_Placed.in_group(version, values, head, tail) for values, version in keyed]

        group: list[tuple[str, str, Version]] = []
        value: Any = None
        first = kept is None
        async with aclosing(walked()) as found:
            async for item in found:
                here = _first_key_value(order, item[0], item[1])
                if (item[0], here) == served:
                    continue
                if group and (here != value or item[0] != group[0][0]):
                    for placed in ordered(group, first):
                        yield placed
                    group, first = [], False
                if (len(group) == min(_Groups.LARGE, cap) and group[0][0] == "k"
                        and not (first and (seen is not None or whole))
                        and (large := await self._large_group(order, query, clauses, "k", group[0][1], None,
                                                              back=back)) is not None):
                    # a large group met on the way: taken by its second key from its start, and on beyond it
                    second, members = large
                    async with aclosing(self._by_second_key(order, second, query, clauses, members, None, shape,
                                                            back=back, batch=batch, budget=budget)) as rest:
                        async for placed in rest:
                            yield placed
                    return
                if len(group) >= cap:
                    raise _too_many_sharing(cap)
                group.append(item)
                value = here
        if group:
            for placed in ordered(group, first):
                yield placed

    async def _large_group(self, order: IndexOrder, query: SearchQuery, clauses: list[Clause], phase: str,
                           anchor: str, seen: list[Any] | None, *, back: bool, known: bool = False
                           ) -> tuple[IndexOrder, _Members] | None:
        """The group a page enters at ``anchor``, when that page can take it in the order of the second sort key's
        entries (``_by_second_key``) instead of reading it whole: a second key walked in index order whose walk
        can start at a value (index_order.py: strings, tokens, dates) and at least ``_Groups.LARGE``
        entries of the group's value, or, of any size, one whose second key has entries within the first's values
        (``within_group``: given names within a family, on a store of that layout), taken from those without reading
        the group's entries. ``known``: the members may be those kept for a page entering at ``anchor``
        (``_Groups``; not for a first page)."""
        second = index_order(order.rtype, *query.sort[1]) if len(query.sort) > 1 else None
        if second is None or not second.positioned or phase != "k":
            return None
        if seen is not None and seen[1] is not None and second.start_of(seen[1], rising=True) is None:
            return None  # not a value of the second key: a cursor made up, or of another search
        value = order.key_value(anchor)
        if value is None:  # not a position of this order (a cursor made up): no group to take
            return None
        if (await self._layout() >= within_layout(order.param, second.param)
                and (narrow := within_group(order, second, anchor)) is not None):  # any size: a page's worth read
            return narrow, _Members(value, anchor, anchor, None, time.monotonic())
        kept = self.groups.members(_Groups.members_key(order, back, anchor)) if known else None
        if kept is None:
            kept = await self._checked_group(order, second, anchor, value, back=back)
        if kept is not None:  # a checked group's walk goes within a clause's value, where it can
            return (await self._within(second, clauses, None) if kept.checked else second), kept
        rids, far = await self._group_ids(order, anchor, value, rising=order.descending == back)
        if len(rids) < _Groups.LARGE:
            return None
        members = _Members(value, anchor, far, rids, time.monotonic())
        self.groups.put_members(order, back, members)
        return second, members

    async def _checked_group(self, order: IndexOrder, second: IndexOrder, anchor: str, value: Any, *,
                             back: bool) -> _Members | None:
        """A group of more than ``_Groups.BY_IDS`` entries of a string or token value (``priority=routine``: half the
        orders), taken by a walk of the second key (narrowed within a clause's value, as the worklist's dates within
        ``status=active``: ``_within``) that checks each resource it meets for the group, instead of reading the
        group's every entry first (50,000 keys: seconds, for each first page). The members without a second value
        are among the resources the second key's ``tail`` names, read now: at most ``_Groups.UNVALUED`` of them,
        else None (the group's ids are read); kept like a group's ids (``_Groups``) for the pages after. None also
        for other first keys, and where the second key's tail is not in the index (a store before ``@absent``
        entries, a custom parameter)."""
        if order.kind not in ("string", "token") or not second.absent:
            return None
        low = order.run_prefix(anchor)
        spans = (Span(low, f"{low}~", ()),)  # found larger lately: not read again (``_Selectivity``)
        if not self.selectivity.known_larger(order.rtype, spans, _Groups.BY_IDS):
            group = await self.store.scan_index(order.rtype, low, f"{low}~", after=None, limit=_Groups.BY_IDS + 1)
            if len(group) <= _Groups.BY_IDS:
                return None
            self.selectivity.learn_larger(order.rtype, spans, _Groups.BY_IDS)
        unvalued = await self._tail_ids(order.rtype, second, _Groups.UNVALUED)
        if unvalued is None:
            return None
        far = await order.run_end(self.store, anchor, rising=order.descending == back)
        members = _Members(value, anchor, far, None, time.monotonic(), unvalued=unvalued)
        self.groups.put_members(order, back, members)  # for the pages after, as a run's ids are
        return members

    async def _group_ids(self, order: IndexOrder, anchor: str, value: Any, *,
                         rising: bool) -> tuple[frozenset[str], str]:
        """The ids that the entries of the first key's group entered at ``anchor`` name, read from there in the
        walk's direction (values ``rising`` or falling), and the last of those entries."""
        rids, far = {split_index_key(anchor)[1]}, anchor
        bound = 10 * self.settings.search_sort_max  # entries of one value read to learn the group's members
        if order.kind == "string":  # one encoding per value: the run's keys, not decoded one by one
            group = order.run(self.store, after=anchor, rising=rising, batch=_Groups.LARGE)
        else:
            group = _same_value(order.walk(self.store, after=anchor, rising=rising, batch=_Groups.LARGE), value)
        async with aclosing(group) as keys:
            async for key in keys:
                rids.add(split_index_key(key)[1])
                far = key
                if len(rids) > bound:
                    raise _too_many_sharing(bound)
        return frozenset(rids), far

    async def _tail_ids(self, rtype: str, order: IndexOrder, bound: int) -> frozenset[str] | None:
        """The ids that ``order``'s tail entries name (the resources without a value of it), its ranges scanned in
        one command; None when a range holds more than ``bound`` keys."""
        tails = await self.store.scan_index_many([(rtype, low, high) for low, high in order.tail], limit=bound + 1)
        if any(len(keys) > bound for keys in tails):
            return None
        return frozenset(split_index_key(key)[1] for keys in tails for key in keys)

    async def _without_second(self, order: IndexOrder, second: IndexOrder, members: _Members) -> frozenset[str]:
        """Ids among which are the group's members without a value of the second key: its members; for a group
        walked within (``members.rids`` None), those that its ``~`` entry there names (keys.py ``_within_entries``:
        a family's persons without a given name; and the persons with that family among others). A group of known
        members whose type keeps entries of the resources without the second key (``IndexOrder.tail``): those of
        its members the tail names, when the tail is no more than eight keys a member (a key costs about an eighth
        of a resource read); else every member, and each is read."""
        if members.rids is not None:
            if not (second.absent and await self._layout() >= ABSENT_LAYOUT):
                return members.rids
            bound = 8 * len(members.rids)
            named = await self._tail_ids(order.rtype, second, bound)
            return members.rids if named is None or len(named) > bound else members.rids & named
        if members.unvalued is not None:
            return members.unvalued
        bound = 10 * self.settings.search_sort_max
        low = f"{second.param}|{PRESENT}|"
        keys = await self.store.scan_index(order.rtype, low, f"{low}~", after=None, limit=bound + 1)
        if len(keys) > bound:
            raise _too_many_sharing(bound, " and have none of the second")
        return frozenset(split_index_key(key)[1] for key in keys)

    async def _by_second_key(self, order: IndexOrder, second: IndexOrder, query: SearchQuery,
                             clauses: list[Clause], members: _Members, seen: list[Any] | None,
                             shape: tuple[Any, ...], *, back: bool, batch: int,
                             budget: int | None, want: int | None = None) -> AsyncGenerator[_Placed, None]:
        """A large group (``_large_group``) past ``seen``, in the order of the second key's entries: the walk of
        that key (from ``seen``'s value) takes the pairs of the group's members, each read and checked, and sorts
        each run of one value by all the keys; the members without a value of the second key come last (read when
        the walk has passed the others). A page costs about the group's entries of the first key and a page's worth
        of the second's, however large the group and however deep the page. When the walk would read more than
        four entries per member of the group, the group is read whole after all (``_groups_from``). Walked within
        the group (``members.rids`` None), the second key's entries are the group's own: a page costs a page's worth
        of them. Then the walk goes on beyond the group. ``want``: the matches the page takes (None: ``batch``)."""
        cap = self.settings.search_sort_max
        order_of = _by_sort_values(query)
        head, tail = ("k", members.far), ("k", members.anchor)
        if not back:
            head, tail = tail, head
        passed_over = 0
        last = seen  # the sort values of the last match yielded

        def member(version: Version) -> bool:
            nonlocal passed_over
            if not _passes(clauses, version):
                passed_over += 1
                if budget is not None and passed_over > budget:
                    raise _OverBudget
                return False
            return _in_group(order, members.value, version) is not None

        def ordered(run: list[tuple[list[Any], Version]]) -> list[_Placed]:
            run.sort(key=order_of, reverse=back)
            return [_Placed.in_group(version, values, head, tail) for values, version in run
                    if _beyond(query, values, seen, back)]

        met: set[str] = set()

        def unmet(rid: str) -> bool:  # a member of the group the walk has not yet met
            return (members.rids is None or rid in members.rids) and rid not in met

        # versions read ahead (``valued``: the runs that begin and end within one chunk of the walk, in one store
        # call; None: no such resource); a run takes its members from here before it reads the others
        ahead: dict[str, Version | None] = {}
        want = batch if want is None else want
        given = fetched = hits = 0  # the members yielded (the page takes ``want``), the resources read, the members

        def wanted() -> int:
            """The resources to read ahead for what the page may still take, at the share of members among those
            read so far (about half, for the routine orders among the active ones), and four more: a run that the
            read-ahead leaves out costs a store call of its own, about what eight resources read in one do."""
            if given >= want:
                return 0
            return min(-(-(want - given) * (fetched + 1) // (hits + 1)) + 4, 4 * batch)

        by_id = len(query.sort) == 2  # a run of one second-key value is then ordered by id alone (``_tied``)
        # ... and a string's run (one value, one encoding) comes in that order when walked up, forward, and in its
        # reverse when walked down, back: its members are then read a page's worth at a time as the walk meets
        # them, not once the run's last key is read
        streams = by_id and second.kind == "string" and not second.descending
        # descending, a run comes down in falling id order: one that goes on beyond the batch in hand is walked up
        streams_up = by_id and second.kind == "string" and second.descending and not back

        async def run_of(value: Any, pairs: dict[str, set[str]]) -> AsyncGenerator[_Placed, None]:
            """The members among the pairs of one value of the second key (each id with its keys there), in the
            walk's order past ``seen``. Sorted by two keys, they are in id order before they are read, and are read
            a page's worth at a time (a run of thousands costs its keys, and the resources the page takes)."""
            nonlocal given, fetched, hits
            rids = list(pairs)
            size = len(rids)
            if by_id:
                rids.sort(key=lambda rid: _tied(f"{order.rtype}/{rid}"), reverse=back)
                if seen is not None and value == seen[1]:  # those the cursor's match precedes: not read at all
                    rids = [rid for rid in rids if (_tied(f"{order.rtype}/{rid}") < _tied(seen[-1]) if back
                                                    else _tied(f"{order.rtype}/{rid}") > _tied(seen[-1]))]
                size = batch
            elif size > cap:  # sorted in memory by the keys after the second
                raise _too_many_sharing(cap, " and of the second")
            at = 0
            while at < len(rids):
                chunk, at = rids[at:at + size], at + size
                missing = [rid for rid in chunk if rid not in ahead]
                versions = await self._read(order.rtype, clauses, sorted(missing)) if missing else {}
                fetched += len(missing)
                for rid in chunk:
                    if (early := ahead.pop(rid, None)) is not None:
                        versions[rid] = early
                found = []
                for rid in chunk:
                    version = versions.get(rid)
                    if version is not None and second.canonical(version) in pairs[rid] and member(version):
                        met.add(rid)
                        found.append((_sort_values(query, version), version))
                hits += len(found)
                for placed in ordered(found):
                    given += 1
                    yield placed
                size = min(size * 2, 1000)

        async def valued() -> AsyncGenerator[_Placed | None, None]:  # None: too sparse, read the group whole
            nonlocal fetched
            rising = second.descending == back

            def resume(value: Any, up: bool) -> str | None:
                """Where a walk of the run of ``value`` (``up`` or down) starts: past the cursor's match, when it
                is of that run (the members on this side of it come before it in the walk), else at the run's
                start from that side (string runs: ``IndexOrder.past``)."""
                if seen is not None and value == seen[1] and isinstance(seen[-1], str):
                    past = second.past(value, seen[-1].partition("/")[2], up=up)
                    if past is not None:
                        return past
                return second.start_of(value, rising=up)

            if seen is None or seen[1] is None:
                start = None
            else:  # a page inside a run read as met starts past its cursor: pages deep in a run cost the same
                start = resume(seen[1], rising) if streams else second.start_of(seen[1], rising=rising)
            limit = members.walk_limit
            read = 0
            run: dict[str, set[str]] = {}  # the members' pairs of one value of the second key: id -> keys
            run_value: Any = run  # no value yet
            streaming = False  # whether the run's members met so far are read as they come (``streams``)

            def take(key: str) -> bool:
                """A pair of the run at hand; whether its members met so far are to be read now."""
                rid = split_index_key(key)[1]
                if unmet(rid):
                    run.setdefault(rid, set()).add(key)
                return streaming and len(run) >= batch

            # each walk: where it starts, whether up, and the one value it reads (a run walked up) or None (any)
            walk: tuple[str | None, bool, Any] | None = (start, rising, None)
            while walk is not None:
                at, upward, only = walk
                walk = None
                if only is not None:  # that run from its start up: in id order, read as met, as an ascending one
                    run, run_value, streaming = {}, only, True
                async with aclosing(_chunks(second.walk(self.store, after=at, rising=upward, batch=batch),
                                            batch)) as chunks:
                    async for chunk in chunks:
                        read += len(chunk)
                        if limit is not None and read > limit:
                            yield None
                            return
                        if only is None:  # the members of the runs wholly in this chunk, read in one call: the
                            # first that the page may still take in the walk's order (``wanted``; the others as their
                            # runs end)
                            inside = list(dict.fromkeys(
                                rid for there, key in chunk if there not in (run_value, chunk[-1][0])
                                and unmet(rid := split_index_key(key)[1]) and rid not in ahead))[:wanted()]
                            if len(inside) > 1:
                                early = await self._read(order.rtype, clauses, sorted(inside))
                                fetched += len(inside)
                                ahead.update({rid: early.get(rid) for rid in inside})
                        ended = False
                        for there, key in chunk:
                            if there != run_value:
                                if only is not None:  # past the run: on down below it
                                    ended = True
                                    break
                                async with aclosing(run_of(run_value, run)) as found:
                                    async for placed in found:
                                        yield placed
                                run, run_value, streaming = {}, there, streams
                            if take(key):
                                async with aclosing(run_of(run_value, run)) as found:
                                    async for placed in found:
                                        yield placed
                                run = {}
                        if ended:
                            break
                        if only is None and streams_up and chunk[-1][0] == run_value:  # none of it has gone out
                            walk, run = (resume(run_value, True), True, run_value), {}
                            break
                if only is not None:
                    async with aclosing(run_of(only, run)) as found:
                        async for placed in found:
                            yield placed
                    run = {}
                    walk = (second.start_of(only, rising=True), rising, None)  # on down, below its entries
            async with aclosing(run_of(run_value, run)) as found:
                async for placed in found:
                    yield placed

        async def without_value() -> AsyncGenerator[_Placed, None]:
            candidates = await self._without_second(order, second, members)
            versions = await self._read(order.rtype, clauses, sorted(candidates - met))
            run = [(_sort_values(query, v), v) for v in versions.values() if second.canonical(v) is None and member(v)]
            if len(run) > cap:
                raise _too_many_sharing(cap, " and have none of the second")
            for placed in ordered(run):
                yield placed

        keep = self._keep_later(order, query, clauses, shape, members, back=back)
        try:
            # where the page enters the group: among the members without a second value (last in the sort), or not
            in_tail = seen[1] is None if seen is not None else back
            steps = ["tail", "valued"] if back else ["valued", "tail"]  # in the walk's direction
            sparse = False  # the walk of the second key reads too much: the rest of the group is read whole
            for step in steps[steps.index("tail"):] if in_tail else ["valued"] if back else steps:
                if step == "tail":
                    async with aclosing(without_value()) as found:
                        async for placed in found:
                            yield placed
                    seen = None  # the members with a second value all lie before those without
                    continue
                async with aclosing(valued()) as walked:
                    async for item in walked:
                        if item is None:
                            sparse = True
                            break
                        last = item.ahead["s"]
                        yield item
                if sparse:
                    break
            far = members.far
            if members.walked_within:  # where the group ends, found now that the walk goes beyond it
                far = await order.run_end(self.store, members.anchor, rising=order.descending == back)
            beyond = (self._groups_from(order, query, clauses, "k", members.anchor, last, None, shape, back=back,
                                        batch=batch, budget=budget, whole=True) if sparse else
                      self._groups_from(order, query, clauses, "k", far, None, None, shape, back=back,
                                        batch=batch, budget=budget, served=("k", members.value)))
            async with aclosing(beyond) as rest:
                async for placed in rest:
                    yield placed
        finally:
            if keep is not None:  # once the page has what it needs
                keep()

    def _keep_later(self, order: IndexOrder, query: SearchQuery, clauses: list[Clause], shape: tuple[Any, ...],
                    members: _Members, *, back: bool) -> Callable[[], None] | None:
        """For a group that a page takes by its second key (``_by_second_key``): what starts reading it whole and
        keeping it (``_Groups``) for the pages after it, to be called once the page has been read (the read then
        does not slow it down); from now on, those pages wait for that read as for a page's. None when groups are
        not kept, for a page before (``back``: the group's head is not known), or when the group is kept or being
        read already, or may be too large to sort in memory, or is walked within (its pages read their own)."""
        at = (shape, False, "k", members.anchor)
        if (back or self.groups.ttl <= 0 or members.rids is None or len(members.rids) > self.settings.search_sort_max
                or at in self.groups.reading or self.groups.get(at) is not None):
            return None
        reading = self.groups.reading[at] = asyncio.Event()
        rising = not order.descending

        async def keep() -> None:
            try:
                versions = await self._read(order.rtype, clauses, sorted(members.rids or ()))
                found = []
                for version in versions.values():
                    key = _in_group(order, members.value, version)
                    if key is not None and _passes(clauses, version):
                        found.append((key, _sort_values(query, version), version.rid))
                if len(found) >= _Groups.LARGE:
                    keys = sorted(key for key, _, _ in found)
                    ends = (("k", keys[0]), ("k", keys[-1]))
                    head, tail = ends if rising else ends[::-1]
                    items = sorted(((values, rid) for _, values, rid in found), key=_by_sort_values(query))
                    self.groups.put(shape, _Group(time.monotonic(), items, head, tail))
            except Exception as exc:  # the pages after it read the group themselves
                log.warning("A sort group was not kept: %s", type(exc).__name__)
            finally:
                del self.groups.reading[at]
                reading.set()

        def start() -> None:
            task = asyncio.create_task(keep())
            self.keeping.add(task)
            task.add_done_callback(self.keeping.discard)
        return start

    async def _from_group(self, order: IndexOrder, query: SearchQuery, clauses: list[Clause], kept: _Group,
                          seen: list[Any] | None, *, back: bool, batch: int) -> AsyncGenerator[_Placed, None]:
        """The matches of a kept group past ``seen``, each read again: one that no longer matches or no longer
        sorts where it did (written since) is passed over (it is where its values now put it)."""
        order_of = _by_sort_values(query)
        items = kept.items
        if back:
            end = len(items) if seen is None else bisect.bisect_left(items, order_of((seen, "")), key=order_of)
            items = items[:end][::-1]
        elif seen is not None:
            items = items[bisect.bisect_right(items, order_of((seen, "")), key=order_of):]
        for at in range(0, len(items), batch):
            chunk = items[at:at + batch]
            versions = await self._read(order.rtype, clauses, sorted({rid for _, rid in chunk}))
            for values, rid in chunk:
                version = versions.get(rid)
                if version is not None and _passes(clauses, version) and _sort_values(query, version) == values:
                    yield _Placed.in_group(version, values, kept.head, kept.tail)

    async def _in_order(self, order: IndexOrder, clauses: list[Clause], phase: str, position: str | None, *,
                        back: bool, batch: int, budget: int | None = None
                        ) -> AsyncGenerator[tuple[str, str, Version], None]:
        """The matches in index order (``back``: reversed) from ``position`` of ``phase`` on, with their phase and
        position: the pairs' walk, then the resources without a sortable value by id (reversed: the other way).
        ``budget``: resources it may read and pass over (not matches) before it raises ``_OverBudget``."""
        rtype = order.rtype
        passed_over = 0

        def spend(n: int) -> None:  # n more resources read that are not matches
            nonlocal passed_over
            passed_over += n
            if budget is not None and passed_over > budget:
                raise _OverBudget
        if order.kind == "id":
            async for rid, version in self._walk_type(rtype, clauses, start=position, backward=order.descending != back,
                                                      batch=batch, spend=spend):
                yield "t", rid, version
            return
        tail = not order.instants  # every resource has a _lastUpdated: no need to look for those without
        # the resources without a value: from their entries (phase m, positions are keys), or on a store without
        # those entries and for a custom parameter, from the type's resources (phase t, positions are ids)
        by_keys = phase == "m" or (tail and phase == "k" and order.absent and await self._layout() >= ABSENT_LAYOUT)

        async def without_value(start: str | None, backward: bool) -> AsyncGenerator[tuple[str, str, Version], None]:
            if by_keys:
                async for key, version in self._walk_tail(order, clauses, start=start, backward=backward,
                                                          batch=batch, spend=spend):
                    yield "m", key, version
                return
            async for rid, version in self._walk_type(rtype, clauses, start=start, backward=backward, batch=batch,
                                                      spend=spend):
                if order.canonical(version) is None:
                    yield "t", rid, version
                else:
                    spend(1)

        if phase in ("t", "m") and back and tail:
            async with aclosing(without_value(position, True)) as tail_items:
                async for item in tail_items:
                    yield item
            phase, position = "k", None
        if phase == "k":
            pairs = order.walk(self.store, after=position, rising=order.descending == back, batch=batch)
            async with aclosing(_chunks(pairs, batch)) as chunks:  # a page's worth of pairs, then doubling
                async for chunk in chunks:
                    keyed = [(key, split_index_key(key)[1]) for _, key in chunk]
                    versions = await self._read(rtype, clauses, sorted({rid for _, rid in keyed}))
                    for key, rid in keyed:
                        found = versions.get(rid)
                        if found is not None and order.canonical(found) == key and _passes(clauses, found):
                            yield "k", key, found
                        else:
                            spend(1)
            if back:
                return
            position = None
        if not tail:
            return
        async with aclosing(without_value(position, False)) as tail_items:
            async for item in tail_items:
                yield item

    async def _walk_tail(self, order: IndexOrder, clauses: list[Clause], *, start: str | None, backward: bool,
                         batch: int, spend: Callable[[int], None]) -> AsyncGenerator[tuple[str, Version], None]:
        """The matches without a sortable value of ``order``, in the order of their entries in ``order.tail``
        (reversed: ``backward``) after the key ``start``: those entries scanned as a clause's (``_walk_keys``), and
        a resource that has a value now passed over."""
        tail = Clause("", keys=KeySet(tuple(KeyRange(low, high) for low, high in order.tail)))
        async for key, version in self._walk_keys(order.rtype, [*clauses, tail], len(clauses), start=start,
                                                  backward=backward, known=None, batch=batch, spend=spend):
            if order.canonical(version) is None:
                yield key, version
            else:
                spend(1)

    # ---- _include and _revinclude -------------------------------------------------------------------------

    async def _include(self, query: SearchQuery, matches: list[Version]) -> tuple[list[Version], list[str]]:
        cap = self.settings.search_include_max
        seen = {v.key for v in matches}
        included: list[Version] = []
        frontier = matches
        first = True
        while frontier:
            wanted: dict[str, set[str]] = {}
            for inc in query.includes:
                if not (first or inc.iterate):
                    continue
                for v in frontier:
                    if v.rtype != inc.source and inc.param != "*":
                        continue
                    for ref in _references(v, inc.param):
                        rtype, _, rid = ref.partition("/")
                        if rid and "/" not in rid and (inc.targets is None or rtype in inc.targets) \
                                and ref not in seen:
                            wanted.setdefault(rtype, set()).add(rid)
            fetched: list[Version] = []
            for rtype, rids in wanted.items():
                found = await self.store.current_many(rtype, sorted(rids))
                fetched += [v for v in found.values() if v.body is not None]
            for inc in query.revincludes:
                if not (first or inc.iterate):
                    continue
                targets = [v for v in frontier if inc.targets is None or v.rtype in inc.targets]
                fetched += await self._revinclude(inc, targets, cap)
            fresh = []
            for v in fetched:
                if v.key not in seen:
                    seen.add(v.key)
                    fresh.append(v)
            if len(included) + len(fresh) > cap:
                included += fresh[:cap - len(included)]
                return included, [f"_include/_revinclude stopped at {cap} resources (MEDUNION_SEARCH_INCLUDE_MAX); "
                                  "some included resources are missing from this page"]
            included += fresh
            frontier = fresh
            first = False
            if not any(i.iterate for i in [*query.includes, *query.revincludes]):
                break
        return included, []

    async def _revinclude(self, inc: Any, targets: list[Version], cap: int) -> list[Version]:
        async def referring(target: Version) -> list[str]:
            entries = exact_entry(f"{inc.param}|{hexs(target.key)}")
            keys = await self.store.scan_index(inc.source, entries.lo, entries.hi, after=None, limit=cap + 1)
            return [split_index_key(k)[1] for k in keys]

        rids = {rid for found in await asyncio.gather(*(referring(t) for t in targets)) for rid in found}
        found = await self.store.current_many(inc.source, sorted(rids))
        wanted = {f"{inc.param}|{hexs(t.key)}|" for t in targets}
        return [v for v in found.values()
                if v.body is not None and any(e in wanted for e in entries_of_version(v))]


async def _chunks(found: AsyncGenerator[_T, None], size: int) -> AsyncGenerator[list[_T], None]:
    """The items of ``found`` in lists of ``size``, doubling up to 1,000 (``found`` closed after)."""
    chunk: list[_T] = []
    async with aclosing(found):
        async for item in found:
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk, size = [], min(size * 2, 1000)
    if chunk:
        yield chunk


async def _same_value(pairs: AsyncGenerator[tuple[Any, str], None], value: Any) -> AsyncGenerator[str, None]:
    """The keys of the walk's pairs up to the first of another value."""
    async with aclosing(pairs):
        async for there, key in pairs:
            if there != value:
                return
            yield key


async def _one_by_one(found: AsyncGenerator[tuple[str, str, Version], None]) -> AsyncGenerator[_Placed, None]:
    """The matches of a sort by one key in index order, each a position of the walk (``_in_order``)."""
    async with aclosing(found):
        async for phase, position, version in found:
            yield _Placed.at(version, phase, position)


def _scans_to(rtype: str, clause: Clause, position: str) -> bool:
    """Whether a cursor's ``position`` is one that a scan by ``clause`` (which drives) reaches: an id when it
    drives by ids, else a key within its spans."""
    if clause.ids is not None or clause.keys is None:
        return True
    return any(f"{rtype}|{low}" <= position < f"{rtype}|{high}" for low, high, _ in clause.keys.spans)


def _too_many_sharing(limit: int, also: str = "") -> TooManyMatches:
    """The 400 of a sort by several keys whose matches sharing one value of the first key (``also``: and so on)
    are more than it sorts in memory."""
    msg = (f"More than {limit} resources share one value of the first _sort key{also}, more than _sort handles; "
           "narrow the search or sort by a more selective key first")
    return TooManyMatches(msg, issues=[Issue(code="too-costly", diagnostics=msg)])


def _in_group(order: IndexOrder, value: Any, version: Version) -> str | None:
    """The key at which ``version`` stands in the walk of ``order`` when that is in the group of ``value``."""
    key = order.canonical(version)
    return key if key is not None and order.key_value(key) == value else None


def _beyond(query: SearchQuery, values: list[Any], seen: list[Any] | None, back: bool) -> bool:
    """Whether sort values lie past the cursor's match (``seen``) in the walk's direction (``back``: before it)."""
    return seen is None or _compare(query, values, seen) == (-1 if back else 1)


def _stands_at(order: IndexOrder, phase: str, position: str, version: Version) -> bool:
    """Whether ``version`` stands at a position of the walk of ``order`` (``_in_order``)."""
    if phase == "k":
        return order.canonical(version) == position
    return order.canonical(version) is None and (phase == "t" or order.tail_key(version) == position)


def _first_key_value(order: IndexOrder, phase: str, position: str) -> Any:
    """The value of the first sort key at a position of the walk: its key's, None in the tail (phases ``t``,
    ``m``)."""
    return order.key_value(position) if phase == "k" else None


async def _first(found: AsyncGenerator[_T, None], n: int) -> list[_T]:
    """The first ``n`` items of ``found`` (closed after: a walk stops reading the store)."""
    out: list[_T] = []
    async with aclosing(found):
        async for item in found:
            out.append(item)
            if len(out) >= n:
                break
    return out


def _references(version: Version, param: str) -> list[str]:
    """The references held by the version's entries of ``param`` (``*``: of each reference parameter of its
    type). A Reference with a display only is indexed as present (``PRESENT``) and holds none."""
    if param == "*":
        params = parameters_for(version.rtype)
        codes = {code for code, p in params.items() if p.type == "reference"}
    else:
        codes = {param}
    prefix = "" if param == "*" else f"{param}|"
    out = []
    for item in version.index:
        if not item.startswith(prefix):  # the usual case is one parameter: most items go here, cheaply
            continue
        code, _, rest = item.partition("|")
        enc = rest[:rest.rindex("|")]
        if code in codes and enc != PRESENT:
            out.append(decode_hex(enc))
    return out


def _sort_values(query: SearchQuery, version: Version) -> list[Any]:
    params = parameters_for(version.rtype)
    out: list[Any] = []
    for code, descending in query.sort:
        if code == "_id":
            out.append(version.rid)
            continue
        if code not in params:  # a search over several types, sorted by a parameter this type lacks
            out.append(None)
            continue
        base, only = indexed_as(version.rtype, code)  # Observation patient: subject's entries, Patient ones only
        kind = params[base].type
        prefix = f"{base}|"  # the ix items (param|enc|vid) of this parameter, decoded: few of the version's
        values = [sort_value(kind, item[len(prefix):item.rindex("|")], descending)
                  for item in items_starting(version.index, prefix)]
        values = [v for v in values if v is not None and (only is None or reference_type(v) == only)]
        out.append((max(values) if descending else min(values)) if values else None)
    out.append(version.key)  # last: Type/id, unique across the types of a search over several
    return out


def _by_sort_values(query: SearchQuery) -> Any:
    """The sort key of (sort values, version) pairs in the order of ``query``'s ``_sort``."""
    def compare(a: tuple[list[Any], Version], b: tuple[list[Any], Version]) -> int:
        return _compare(query, a[0], b[0])
    return functools.cmp_to_key(compare)


def _compare(query: SearchQuery, a: list[Any], b: list[Any]) -> int:
    for i, (_, descending) in enumerate(query.sort):
        x, y = a[i], b[i]
        if x == y:
            continue
        if x is None or y is None:  # resources without a value come last, in either direction
            return 1 if x is None else -1
        if type(x) is not type(y):
            x, y = str(x), str(y)
        result = -1 if x < y else 1
        return -result if descending else result
    x, y = _tied(a[-1]), _tied(b[-1])
    return int(x > y) - int(x < y)


def _tied(key: str) -> str:
    """What orders resources of equal sort values (``Type/id``, the last of their sort values): their ids as the
    index keys hold them, each followed by ``|``, so that an id comes after those it is a prefix of (``12`` before
    ``1``): a run of one value walked in the index comes in this order and is read as the walk meets it."""
    return f"{key}|"
