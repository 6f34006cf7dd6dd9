"""The longest span of the values of each date parameter, so that a date range bounded on both sides reads only
the entries that can match it.

A date's entries are ordered by its start (``L<low>.<high>``, keys.py). ``date=ge2026-06-01&date=le2026-06-30``
asks for values that end on or after June 1 and start on or before June 30: the start bounds the scan above, but
below it only the longest value of the parameter bounds it (a value starts at most that long before it ends). Each
clause alone reads half the type; together, knowing the longest span, they read the month's entries
(query.py ``date_window``, engine.py ``_resolve``).

So that the number can be trusted, every writer raises it (``$max``, one document per type and parameter in
``date_spans``) *before* the entries of a longer value are inserted (storage ``ResourceStore.before_entries``):
a search that reads it finds no entry of a longer value, except those written concurrently with it. The number
never falls (a deleted long value keeps it up); each process remembers what it raised it to, so a write only
goes to the store when it has a value longer than any this process knew of. A resource with two or more values
of the parameter makes it ``UNBOUNDED``: FHIR's AND may then be met by two different values, one for each side,
and no window holds both. Values stored before this existed are covered by the index layout that introduced it
(keys.py ``SPANS_LAYOUT``): its upgrade job passes every resource through the same check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from fhir_server.search.keys import start_ordered_date
from fhir_server.storage import Version
from fhir_server.storage.batching import FindBatcher

__all__ = ["UNBOUNDED", "WINDOWED_SPAN", "DateSpans", "spans_of"]

UNBOUNDED = 1 << 62  # several values in one resource, or a span that bounds nothing (a period open at one end)
# the longest span for which a window is read: a parameter with longer values (stays of months, plans of years)
# would start its window that long before its lower bound, reading more of the type than its ``gt``/``ge`` clause
# alone, which then drives as before (a birth year is 366 days at most)
WINDOWED_SPAN = 366 * 86_400_000_000


def spans_of(rtype: str, index: Sequence[str]) -> dict[str, int]:
    """``Type|param`` -> the longest span (µs) of the version's values of each date parameter it has entries of
    (``index``: its items, ``param|enc|vid``); ``UNBOUNDED`` for a parameter with several values. The entries of
    a date within a status or subject (``authored@status@…``) and other parameters are left out."""
    out: dict[str, int] = {}
    for item in index:
        param, _, rest = item.partition("|")
        if "@" in param or (bounds := start_ordered_date(rest)) is None:
            continue
        low, high = bounds
        key = f"{rtype}|{param}"
        out[key] = UNBOUNDED if key in out else min(max(high - low, 0), UNBOUNDED)
    return out


class DateSpans:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection
        self._raised: dict[str, int] = {}  # what this process knows each number is at least
        self._reads = FindBatcher(collection)  # the searches' reads at once (a compartment's types) share a command

    async def cover(self, versions: Sequence[Version]) -> None:
        """Before the entries of ``versions`` are inserted: raise the numbers their values need raised."""
        wanted: dict[str, int] = {}
        for version in versions:
            for key, span in spans_of(version.rtype, version.index).items():
                if span > self._raised.get(key, -1) and span > wanted.get(key, -1):
                    wanted[key] = span
        if wanted:
            raised = await asyncio.gather(*(self._raise(key, span) for key, span in wanted.items()))
            for key, now in zip(wanted, raised, strict=True):
                self._raised[key] = max(self._raised.get(key, -1), now)

    async def _raise(self, key: str, span: int) -> int:
        for _ in range(3):  # two first writers' upserts may collide on the _id: the second then updates
            try:
                doc = await self.collection.find_one_and_update({"_id": key}, {"$max": {"d": span}}, upsert=True,
                                                                return_document=ReturnDocument.AFTER)
                return int(doc["d"]) if doc is not None else span
            except DuplicateKeyError:
                continue
        raise RuntimeError("date_spans: the upsert kept colliding")

    async def longest(self, rtype: str, param: str) -> int:
        """The longest span of any indexed value of ``param`` (0: none has one), read from the store now."""
        key = f"{rtype}|{param}"
        doc = (await self._reads.find([key])).get(key)
        return 0 if doc is None else int(doc["d"])
