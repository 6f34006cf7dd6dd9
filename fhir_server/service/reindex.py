"""``$reindex``: bring the search index of stored resources up to the current search parameters.

After a custom SearchParameter is added (or the hub's definitions change), new writes index by it at once;
resources stored before are re-indexed by a background job that walks each type in id order. A job is a
document in ``jobs`` (status, counts, the type it is at), so its progress is visible from any process:
``GET [base]/$reindex/<job>``. A resource being written while the job passes is skipped: its write indexes
it anew. The job document also records the last id done (``after``), so when a hub instance starts it resumes
its own jobs that were ``running`` when it stopped, from where they were (``resume``). A job of an instance
that never comes back stays ``running`` with a stale ``updated`` time; start another.

A store indexed by an older hub (``INDEX_LAYOUT`` in ``search/keys.py``: entries added since) is brought up to
date by a job that the first instance to start after the upgrade launches by itself (``upgrade``): of the types whose
entries changed since the store's layout (``reindexed_since``: a store one layout behind re-indexes its Patients
alone for layout 16), of every type when that is not known; when it completes, the store records the layout, so it
runs once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from pymongo.errors import DuplicateKeyError

from fhir_server.auth.scopes import Principal
from fhir_server.errors import NotFound
from fhir_server.model.types import SUPPORTED_TYPES, require_supported_type
from fhir_server.search.keys import INDEX_LAYOUT, LAYOUT_MARKER, reindexed_since
from fhir_server.service.resources import ResourceService, instant
from fhir_server.settings import Settings
from fhir_server.storage import ResourceStore, now_micros

__all__ = ["Reindexer"]

log = logging.getLogger("medunion.reindex")
_BATCH = 200
# resources re-indexed at once: their store commands go out together (the store's batchers), as those of 16
# clients writing would
_AT_ONCE = 16


class Reindexer:
    def __init__(self, *, resources: ResourceService, settings: Settings) -> None:
        self.resources = resources
        self.store: ResourceStore = resources.store
        self.settings = settings
        self.jobs = self.store.db["jobs"]
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, *, principal: Principal, types: list[str] | None) -> str:
        """Start a job over ``types`` (all served types when None); returns its id."""
        chosen = sorted(SUPPORTED_TYPES) if not types else [require_supported_type(t) for t in types]
        for rtype in chosen:
            principal.require("u", rtype)  # re-indexing rewrites the index of every resource of the type
        await self.resources.refresh_search_parameters()
        return await self._new_job(chosen)

    async def upgrade(self) -> str | None:
        """At start-up: if the store's resources were indexed under an older ``INDEX_LAYOUT``, start the job that
        re-indexes the types whose entries changed since (unless another instance has started it); returns its id.
        An empty store is marked as up to date at once."""
        marker = await self.jobs.find_one({"_id": LAYOUT_MARKER})
        stored = int(marker.get("layout", 0)) if marker is not None else 0
        if stored >= INDEX_LAYOUT:
            return None
        if not await self.store.any_resource():
            await self._layout_done(INDEX_LAYOUT)
            return None
        try:  # one instance starts the job
            await self.jobs.insert_one({"_id": f"{LAYOUT_MARKER}-{INDEX_LAYOUT}", "o": self.store.owner,
                                        "started": now_micros()})
        except DuplicateKeyError:
            return None
        changed = reindexed_since(stored)
        job = await self._new_job(sorted(SUPPORTED_TYPES) if changed is None else list(changed), layout=INDEX_LAYOUT)
        log.info("search index: the stored resources were indexed by an older hub; re-indexing %s in the "
                 "background (job %s, GET [base]/$reindex/%s)", "every type" if changed is None else
                 ", ".join(changed), job, job)
        return job

    async def _new_job(self, types: list[str], *, layout: int | None = None) -> str:
        job = uuid.uuid4().hex
        await self.jobs.insert_one({"_id": job, "kind": "reindex", "o": self.store.owner, "status": "running",
                                    "types": types, "type": None, "done": 0, "changed": 0, "skipped": 0,
                                    "started": now_micros(), "updated": now_micros(), "finished": None,
                                    "layout": layout})
        self._launch(job, types, start=None, counts=(0, 0, 0), layout=layout)
        return job

    async def _layout_done(self, layout: int) -> None:
        marker = await self.jobs.find_one({"_id": LAYOUT_MARKER})
        if marker is None:
            try:
                await self.jobs.insert_one({"_id": LAYOUT_MARKER, "layout": layout})
                return
            except DuplicateKeyError:  # another instance wrote it meanwhile
                marker = await self.jobs.find_one({"_id": LAYOUT_MARKER}) or {}
        if int(marker.get("layout", 0)) < layout:
            await self.jobs.replace_one({"_id": LAYOUT_MARKER}, {"_id": LAYOUT_MARKER, "layout": layout})

    async def resume(self) -> int:
        """Resume this instance's jobs that were running when it stopped; returns how many."""
        jobs = [doc async for doc in self.jobs.find({"kind": "reindex", "o": self.store.owner, "status": "running"})]
        for doc in jobs:
            start = (doc["type"], doc.get("after")) if doc.get("type") in doc["types"] else None
            self._launch(doc["_id"], doc["types"], start=start,
                         counts=(doc.get("done", 0), doc.get("changed", 0), doc.get("skipped", 0)),
                         layout=doc.get("layout"))
            log.info("reindex job %s resumed at %s", doc["_id"], start[0] if start else "its start")
        return len(jobs)

    async def stop(self) -> None:
        """Stop this instance's jobs (the hub is stopping): they stay ``running``, to be resumed at its next start."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _launch(self, job: str, types: list[str], *, start: tuple[str, str | None] | None,
                counts: tuple[int, int, int], layout: int | None) -> None:
        task = asyncio.create_task(self._run(job, types, start=start, counts=counts, layout=layout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def status(self, *, principal: Principal, job: str) -> dict[str, Any]:
        doc = await self.jobs.find_one({"_id": job})
        if doc is None or doc.get("kind") != "reindex":
            raise NotFound(f"There is no $reindex job {job}")
        for rtype in doc["types"]:
            principal.require("u", rtype)
        moments = {k: instant(doc[k], self.settings) for k in ("started", "updated", "finished") if doc.get(k)}
        parameters = [{"name": "job", "valueString": job}, {"name": "status", "valueCode": doc["status"]},
                      {"name": "resourcesDone", "valueInteger": doc["done"]},
                      {"name": "resourcesChanged", "valueInteger": doc["changed"]},
                      {"name": "resourcesSkipped", "valueInteger": doc["skipped"]},
                      *({"name": "type", "valueCode": t} for t in doc["types"]),
                      *({"name": k, "valueInstant": v} for k, v in moments.items())]
        if doc.get("type"):
            parameters.append({"name": "currentType", "valueCode": doc["type"]})
        return {"resourceType": "Parameters", "parameter": parameters}

    async def _run(self, job: str, types: list[str], *, start: tuple[str, str | None] | None,
                   counts: tuple[int, int, int], layout: int | None) -> None:
        """Walk ``types`` in order; ``start``: the type to begin with and the id after which to go on. ``layout``:
        the index layout the store is at when this job completes (an upgrade's job)."""
        done, changed, skipped = counts
        if start is not None:
            types = types[types.index(start[0]):]
        try:
            for rtype in types:
                after = start[1] if start is not None and rtype == start[0] else None
                while True:
                    batch = await self.store.scan_type(rtype, after=after, limit=_BATCH)
                    stored = [(v, v.body) for v in batch if v.body is not None]
                    for first in range(0, len(stored), _AT_ONCE):
                        chunk = stored[first:first + _AT_ONCE]
                        indexes = [self.resources.index_for(orjson.loads(body), vid=v.vid, base=v)
                                   for v, body in chunk]
                        written = await asyncio.gather(*(self.store.reindex(v, index)
                                                         for (v, _), index in zip(chunk, indexes, strict=True)))
                        for (version, _), index, ok in zip(chunk, indexes, written, strict=True):
                            changed += ok and set(index) != set(version.index)
                            skipped += not ok
                        done += len(chunk)
                    if batch:
                        after = batch[-1].rid
                    await self.jobs.update_one({"_id": job}, {"$set": {
                        "type": rtype, "after": after, "done": done, "changed": changed, "skipped": skipped,
                        "updated": now_micros()}})
                    if len(batch) < _BATCH:
                        break
            await self.jobs.update_one({"_id": job}, {"$set": {"status": "completed", "type": None,
                                                               "finished": now_micros(), "updated": now_micros()}})
            if layout is not None:
                await self._layout_done(layout)
            log.info("reindex job %s completed: %d resources, %d changed, %d skipped", job, done, changed, skipped)
        except Exception as exc:  # the job's status says failed; the log names the error type, never data
            log.error("reindex job %s failed: %s", job, type(exc).__name__)
            await self.jobs.update_one({"_id": job}, {"$set": {"status": "failed", "finished": now_micros()}})
