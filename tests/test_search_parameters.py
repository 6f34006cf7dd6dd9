"""Custom SearchParameter resources take effect for new writes; $reindex brings stored resources up to date."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import orjson
from pymongo import MongoClient

from fhir_server.search.keys import INDEX_LAYOUT, LAYOUT_MARKER
from fhir_server.search.registry import parameters_for, set_custom
from fhir_server.service.resources import ResourceService
from fhir_server.settings import Settings
from fhir_server.storage import Version, now_micros
from tests.conftest import Hub, fresh_store, pages_both_ways, start_hub, stop_hub

EXT = "http://medunion.example.cn/fhir/StructureDefinition/referral-hospital"


def _patient(hospital: str) -> dict[str, object]:
    return {"resourceType": "Patient", "name": [{"family": "周"}],
            "extension": [{"url": EXT, "valueCode": hospital}]}


def _job_status(client: httpx.Client, job: str) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while True:
        status = {p["name"]: next(v for k, v in p.items() if k.startswith("value"))
                  for p in client.get(f"/$reindex/{job}").json()["parameter"]}
        if status["status"] != "running" or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def _search_parameter(code: str) -> dict[str, object]:
    return {"resourceType": "SearchParameter", "url": f"{EXT}-{code}", "name": "referralHospital",
            "status": "active", "description": "The member hospital that referred the patient to the center",
            "code": code, "base": ["Patient"], "type": "token",
            "expression": f"Patient.extension.where(url = '{EXT}').value"}


def test_custom_search_parameter_and_reindex(api: httpx.Client, hub: Hub) -> None:
    code = f"referral-{uuid.uuid4().hex[:8]}"
    hospital = f"H{uuid.uuid4().hex[:6]}"
    before = [api.post("/Patient", json=_patient(hospital)).json()["id"] for _ in range(3)]
    unknown = api.get("/Patient", params={code: hospital}).json()
    assert "not defined" in unknown["entry"][-1]["resource"]["issue"][0]["diagnostics"]  # ignored, reported

    bad = api.post("/SearchParameter", json={
        "resourceType": "SearchParameter", "url": f"{EXT}-bad", "name": "bad", "status": "active",
        "description": "x", "code": f"{code}-bad", "base": ["Patient"], "type": "token",
        "expression": "Patient.extension.where(url = "})
    assert bad.status_code == 422 and bad.json()["issue"][0]["expression"] == ["SearchParameter.expression"]
    made = api.post("/SearchParameter", json=_search_parameter(code))
    assert made.status_code == 201, made.text

    after = api.post("/Patient", json=_patient(hospital)).json()["id"]
    found = api.get("/Patient", params={code: hospital}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [after]  # new writes are indexed at once

    started = api.post("/Patient/$reindex")
    assert started.status_code == 202
    status_url = started.headers["content-location"]
    assert status_url.startswith(hub.base + "/$reindex/")
    status = _job_status(api, status_url.rsplit("/", 1)[1])
    assert status["status"] == "completed" and status["resourcesDone"] >= 4 and status["resourcesChanged"] >= 3
    found = api.get("/Patient", params={code: hospital, "_count": "50"}).json()
    assert sorted(e["resource"]["id"] for e in found["entry"]) == sorted([*before, after])
    assert api.get(f"/Patient/{before[0]}").json()["meta"]["versionId"] == "1"  # no new versions
    assert api.get("/$reindex/nosuchjob").status_code == 404
    with hub.client("system/Patient.rs") as reader:
        assert reader.post("/Patient/$reindex").status_code == 403


def test_a_search_parameter_code_that_no_url_or_index_key_can_hold_is_refused(api: httpx.Client) -> None:
    """A code names the parameter in search URLs (``.`` chains, ``:`` takes a modifier, ``,`` and ``|`` separate
    values) and in index keys (``|`` separates their parts, a space the items of a version's entries, ``@`` a date
    within a status): a SearchParameter whose code holds anything but letters, digits, ``-`` and ``_`` is a 422
    naming ``SearchParameter.code`` (with one of code ``bad code``, a Patient written after it could be neither
    updated nor deleted: 500s). All 2,775 SearchParameters of the R4 definitions and examples have such codes."""
    for code in ("bad code", "bad|code", "bad@code", "bad.code", "bad:code", "bad,code", "坏"):
        body = {**_search_parameter(f"x-{uuid.uuid4().hex[:8]}"), "code": code}
        refused = api.post("/SearchParameter", json=body)
        assert refused.status_code == 422, (code, refused.text)
        assert refused.json()["issue"][0]["expression"] == ["SearchParameter.code"], code
    assert api.post("/Patient", json=_patient("H1")).status_code == 201
    assert api.get("/Patient", params={"_count": "1"}).status_code == 200
    try:  # one stored by an older hub, which took any code, is never indexed
        set_custom([{**_search_parameter("bad code"), "status": "active"}, _search_parameter("good-code")])
        assert "good-code" in parameters_for("Patient") and "bad code" not in parameters_for("Patient")
    finally:
        set_custom([])


def test_a_store_indexed_by_an_older_hub_is_reindexed_at_start(store_uri: str, tmp_path: Path) -> None:
    """Resources whose index lacks entries of the current layout (here: _text and _content, as an older hub wrote
    them) are re-indexed by a job the first hub to start launches by itself; the store then records the layout,
    and the next start launches nothing."""
    home, database, tag = tmp_path / "home", f"layout{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:10]
    hub = start_hub(store_uri, home, database=database)
    try:
        with hub.client() as client:
            ids = sorted(client.post("/DiagnosticReport", json={
                "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "病理"},
                "conclusion": f"肺腺癌 {tag}"}).json()["id"] for _ in range(3))
            assert len(client.get("/DiagnosticReport", params={"_content": tag}).json()["entry"]) == 3
    finally:
        stop_hub(hub)
    with MongoClient(store_uri) as mongo:
        db = mongo[database]
        assert db["jobs"].find_one({"_id": "index-layout"})["layout"] >= 3  # an empty store was up to date
        db["jobs"].delete_one({"_id": "index-layout"})  # what an older hub left: no layout, no full-text entries
        for doc in db["resources"].find({}, {"ix": 1}):
            kept = [i for i in doc["ix"].split(" ") if not i.startswith(("_text|", "_content|"))]
            db["resources"].update_one({"_id": doc["_id"]}, {"$set": {"ix": " ".join(kept)}})
        db["search_index"].delete_many({"_id": {"$regex": r"^[A-Za-z]+\|_(text|content)\|"}})
    restarted = start_hub(store_uri, home, database=database)
    try:
        with MongoClient(store_uri) as mongo:
            jobs = list(mongo[database]["jobs"].find({"kind": "reindex"}))
        assert len(jobs) == 1 and jobs[0]["layout"] >= 3
        with restarted.client() as client:
            status = _job_status(client, jobs[0]["_id"])
            assert status["status"] == "completed" and status["resourcesChanged"] == 3
            found = client.get("/DiagnosticReport", params={"_content": tag}).json()["entry"]
            assert sorted(e["resource"]["id"] for e in found) == ids
    finally:
        stop_hub(restarted)
    again = start_hub(store_uri, home, database=database)
    stop_hub(again)
    with MongoClient(store_uri) as mongo:
        assert mongo[database]["jobs"].count_documents({"kind": "reindex"}) == 1
        assert mongo[database]["jobs"].find_one({"_id": "index-layout"})["layout"] >= 3


def test_reindex_restores_a_lost_index_entry(api: httpx.Client, hub: Hub) -> None:
    """$reindex inserts the entries a resource's index lacks (it reads which exist first, and writes nothing for a
    resource whose entries are all there): an index document lost by hand comes back, and the search finds the
    resource again, still at version 1."""
    family = f"周{uuid.uuid4().hex[:6]}"
    pid = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}).json()["id"]
    settings = hub.settings
    assert settings.mongodb_uri is not None
    with MongoClient(settings.mongodb_uri) as mongo:
        index = mongo[settings.mongodb_database]["search_index"]
        lost = [d["_id"] for d in index.find({"_id": {"$regex": f"^Patient\\|family\\|[0-9a-f]+\\.\\|{pid}\\|"}})]
        assert len(lost) == 1
        index.delete_one({"_id": lost[0]})
        assert api.get("/Patient", params={"family": family}).json()["entry"] == []
        status = _job_status(api, api.post("/Patient/$reindex").headers["content-location"].rsplit("/", 1)[1])
        assert status["status"] == "completed"
        assert index.count_documents({"_id": lost[0]}) == 1
    found = api.get("/Patient", params={"family": family}).json()["entry"]
    assert [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in found] == [(pid, "1")]


def test_near_finds_locations_within_the_distance(api: httpx.Client) -> None:
    sites = {"center": (31.1935, 121.4420), "xuhui": (31.1880, 121.4370), "suzhou": (31.2990, 120.5853),
             "hangzhou": (30.2741, 120.1551)}
    ids = {}
    for name, (lat, lon) in sites.items():
        created = api.post("/Location", json={"resourceType": "Location", "name": name,
                                              "position": {"latitude": lat, "longitude": lon}})
        assert created.status_code == 201, created.text
        ids[created.json()["id"]] = name
    api.post("/Location", json={"resourceType": "Location", "name": "no position"})

    def near(value: str) -> set[str]:
        answer = api.get("/Location", params={"near": value, "_id": ",".join(ids), "_count": "50"})
        assert answer.status_code == 200, answer.text
        return {ids[e["resource"]["id"]] for e in answer.json().get("entry", []) if e["search"]["mode"] == "match"}

    assert near("31.1935|121.4420|1|km") == {"center", "xuhui"}  # about 0.75 km apart
    assert near("31.1935|121.4420|500|m") == {"center"}
    assert near("31.1935|121.4420|90|km") == {"center", "xuhui", "suzhou"}  # Suzhou ~83 km, Hangzhou ~165 km
    assert near("31.1935|121.4420|60|[mi_i]") == {"center", "xuhui", "suzhou"}  # 96.6 km
    assert near("31.1935|121.4420") == {"center", "xuhui"}  # 10 km by default
    assert near("30.27|120.15|5|km,31.30|120.59|5|km") == {"suzhou", "hangzhou"}
    for bad in ("31.19", "x|121|1|km", "31|121|1|parsec", "95|121|1|km"):
        answer = api.get("/Location", params={"near": bad})
        assert answer.status_code == 400 and answer.json()["issue"][0]["expression"] == ["near"], bad


def test_an_interrupted_reindex_resumes_where_it_stopped(store_uri: str, tmp_path: Path) -> None:
    home, database, code = tmp_path / "home", f"resume{uuid.uuid4().hex[:8]}", "referral-resumed"
    hub = start_hub(store_uri, home, database=database)
    try:
        with hub.client() as client:
            ids = sorted(client.post("/Patient", json=_patient("H1")).json()["id"] for _ in range(6))
            assert client.post("/SearchParameter", json=_search_parameter(code)).status_code == 201
    finally:
        stop_hub(hub)
    # what a hub stopped in the middle of a job leaves: the job running, at Patient, done up to ids[2]
    with MongoClient(store_uri) as mongo:
        mongo[database]["jobs"].insert_one({
            "_id": "interrupted", "kind": "reindex", "o": hub.settings.instance_id, "status": "running",
            "types": ["Observation", "Patient"], "type": "Patient", "after": ids[2], "done": 3, "changed": 0,
            "skipped": 0, "started": now_micros(), "updated": now_micros(), "finished": None})

    restarted = start_hub(store_uri, home, database=database)
    try:
        with restarted.client() as client:
            status = _job_status(client, "interrupted")
            assert status["status"] == "completed" and status["resourcesDone"] == 6
            found = client.get("/Patient", params={code: "H1"}).json()
            # re-indexed after ids[2] only: the job went on from where it stopped, not from the start
            assert sorted(e["resource"]["id"] for e in found.get("entry", [])) == ids[3:]
    finally:
        stop_hub(restarted)


async def test_a_search_parameter_written_during_a_refresh_is_kept(store_uri: str) -> None:
    """The periodic refresh reads the store's SearchParameters; one written by this process while that read is
    in flight (so missing from it) must not be dropped when the refresh finishes (it was, for up to 10 s)."""
    code = f"race-{uuid.uuid4().hex[:8]}"
    async with fresh_store(store_uri, owner="sp-race") as store:
        service = ResourceService(store=store, settings=Settings())
        try:
            refresh = asyncio.create_task(service.refresh_search_parameters())
            await asyncio.sleep(0)  # the refresh is now waiting for the store's answer
            assert not refresh.done()
            body = orjson.dumps({**_search_parameter(code), "id": "race"})
            service.search_parameter_written(Version(rtype="SearchParameter", rid="race", vid=1, ts=now_micros(),
                                                     method="PUT", body=body))
            assert code in parameters_for("Patient")
            assert await refresh == 1  # the store had none, the write here is kept
            assert code in parameters_for("Patient")
            gone = Version(rtype="SearchParameter", rid="race", vid=2, ts=now_micros(), method="DELETE", body=None)
            refresh = asyncio.create_task(service.refresh_search_parameters())
            await asyncio.sleep(0)
            service.search_parameter_written(gone)  # a deletion during a refresh stays deleted too
            assert await refresh == 0 and code not in parameters_for("Patient")
        finally:
            set_custom([])


def test_resources_without_a_value_are_read_from_their_absent_and_lacks_entries(store_uri: str,
                                                                                 tmp_path: Path) -> None:
    """Index layout 6: a parameter of which a resource has no element gets an ``@absent`` entry. ``:missing=true``
    reads those entries, and a sort read in index order (``search_sort_in_memory`` 2 here) reads them and the
    entries of elements present without a value for the resources it places last, a page at a time, both ways,
    after updates that move Patients into and out of them and a deletion. Layout 12: a reference, uri or ``meta``
    parameter a resource lacks is named in its one ``@lacks`` entry, which ``:missing=true`` on it scans
    (``organization``, ``_profile``), paged both ways. An entry lost by hand loses its Patient (the entries are
    read, not the type) until ``$reindex`` brings it back. On a store whose upgrade to the layouts has not run,
    both read the type's resources instead and miss nothing."""
    home, database = tmp_path / "home", f"absent{uuid.uuid4().hex[:8]}"
    extra = {"MEDUNION_SEARCH_SORT_IN_MEMORY": "2"}
    language: dict[str, str | None] = {}  # id -> code; None: an element without a code (its text only)

    def communication(code: str | None) -> list[dict[str, object]]:
        concept = {"coding": [{"system": "urn:ietf:bcp:47", "code": code}]} if code else {"text": "Shanghainese"}
        return [{"language": concept}]

    def matches(client: httpx.Client, params: dict[str, str]) -> set[str]:
        page = client.get("/Patient", params={**params, "_count": "100"}).json()
        return {e["resource"]["id"] for e in page.get("entry", []) if e["search"]["mode"] == "match"}

    def check_sorts(client: httpx.Client, running: Hub, absent: set[str]) -> None:
        valued = {rid for rid, code in language.items() if code}
        for descending in (False, True):
            pages = pages_both_ways(client, running, f"/Patient?_sort={'-' if descending else ''}language&_count=2")
            got = [rid for page in pages for rid in page]
            assert len(got) == len(set(got)) and set(got) == set(language) | absent, (descending, got)
            codes = [language[rid] for rid in got[:len(valued)]]
            assert codes == sorted(codes, reverse=descending)  # type: ignore[type-var]
            assert set(got[len(valued):]) == set(language) - valued | absent
        assert matches(client, {"language:missing": "true"}) == absent
        assert matches(client, {"language:missing": "false"}) == set(language)
        everyone = set(language) | absent
        assert matches(client, {"organization:missing": "false"}) == organized
        assert matches(client, {"organization:missing": "true"}) == everyone - organized
        pages = pages_both_ways(client, running, "/Patient?organization:missing=true&_count=2")
        assert sorted(rid for page in pages for rid in page) == sorted(everyone - organized)
        assert matches(client, {"_profile:missing": "true", "language:missing": "true"}) == absent - profiled
        assert matches(client, {"_profile:missing": "true", "organization:missing": "true"}) == (
            everyone - organized - profiled)
        for asked, wanted in (("patient", {"group", "none"}), ("subject", {"none"})):  # patient: a Patient subject
            for value, which in (("true", wanted), ("false", set(observed) - wanted)):
                found = client.get("/Observation", params={f"{asked}:missing": value}).json().get("entry", [])
                assert {e["resource"]["id"] for e in found} == {observed[k] for k in which}, (asked, value)

    hub = start_hub(store_uri, home, database=database, extra=extra)
    try:
        with hub.client() as client:
            absent: set[str] = set()
            organized: set[str] = set()  # the Patients with a managingOrganization
            profiled: set[str] = set()  # those with a meta.profile
            observed: dict[str, str] = {}  # an Observation of a Patient, of a Group, of no subject: its id
            hospital = client.post("/Organization", json={"resourceType": "Organization", "name": "H"}).json()["id"]
            for n, code in enumerate(["zh", "en", "fr", "de", "zh", None, None, None, None, "", "", "", "", ""]):
                body: dict[str, object] = {"resourceType": "Patient"}
                if code != "":
                    body["communication"] = communication(code)
                if n % 2 == 0:
                    body["managingOrganization"] = {"reference": f"Organization/{hospital}"}
                if n % 3 == 0:
                    body["meta"] = {"profile": ["http://medunion.example.cn/StructureDefinition/patient"]}
                rid = client.post("/Patient", json=body).json()["id"]
                if code == "":
                    absent.add(rid)
                else:
                    language[rid] = code
                if n % 2 == 0:
                    organized.add(rid)
                if n % 3 == 0:
                    profiled.add(rid)
            gains, loses, goes = sorted(absent)[0], next(r for r, c in language.items() if c == "en"), sorted(absent)[1]
            assert client.put(f"/Patient/{gains}", json={"resourceType": "Patient", "id": gains,
                                                         "communication": communication("ja")}).status_code == 200
            assert client.put(f"/Patient/{loses}", json={"resourceType": "Patient", "id": loses}).status_code == 200
            assert client.delete(f"/Patient/{goes}").status_code in (200, 204)
            absent -= {gains, goes}
            absent.add(loses)
            language[gains] = "ja"
            del language[loses]
            organized -= {gains, loses, goes}  # the updates hold no managingOrganization and no profile
            profiled -= {gains, loses, goes}
            group = client.post("/Group", json={"resourceType": "Group", "type": "person", "actual": True}).json()["id"]
            for kind, subject in (("patient", f"Patient/{sorted(absent)[0]}"), ("group", f"Group/{group}"),
                                  ("none", None)):
                body = {"resourceType": "Observation", "status": "final", "code": {"text": "CEA"}}
                if subject:
                    body["subject"] = {"reference": subject}
                observed[kind] = client.post("/Observation", json=body).json()["id"]
            joins = next(rid for rid in sorted(absent) if rid not in organized)
            assert client.put(f"/Patient/{joins}", json={"resourceType": "Patient", "id": joins, "managingOrganization":
                                                         {"reference": f"Organization/{hospital}"}}).status_code == 200
            organized.add(joins)
            profiled.discard(joins)
            check_sorts(client, hub, absent)

            victim = sorted(absent)[0]
            with MongoClient(store_uri) as mongo:
                index = mongo[database]["search_index"]
                mine = f"^Patient\\|@absent\\|language\\|{victim}\\|"
                lost = [d["_id"] for d in index.find({"_id": {"$regex": mine}})]
                assert len(lost) == 1
                index.delete_one({"_id": lost[0]})
                lacking = sorted((set(language) | absent) - organized)[0]
                for mine in (f"^Patient\\|@lacks\\|[^|]*\\.organization\\.[^|]*\\|{lacking}\\|",
                             f"^Observation\\|@lacks\\|[^|]*\\.patient\\.[^|]*\\|{observed['group']}\\|"):
                    lost = [d["_id"] for d in index.find({"_id": {"$regex": mine}})]
                    assert len(lost) == 1
                    index.delete_one({"_id": lost[0]})
            assert victim not in matches(client, {"language:missing": "true"})
            assert lacking not in matches(client, {"organization:missing": "true"})
            of_patients = client.get("/Observation", params={"patient:missing": "true"}).json()["entry"]
            assert [e["resource"]["id"] for e in of_patients] == [observed["none"]]
            pages = pages_both_ways(client, hub, "/Patient?_sort=language&_count=2")
            ascending = [rid for page in pages for rid in page]
            assert victim not in ascending and len(ascending) == len(language) + len(absent) - 1
            for rtype in ("Patient", "Observation"):
                job = client.post(f"/{rtype}/$reindex").headers["content-location"].rsplit("/", 1)[1]
                assert _job_status(client, job)["status"] == "completed"
            check_sorts(client, hub, absent)
    finally:
        stop_hub(hub)
    with MongoClient(store_uri) as mongo:  # what a hub of layout 5 left: no @absent entries, no upgrade yet
        db = mongo[database]
        assert db["jobs"].find_one({"_id": LAYOUT_MARKER})["layout"] == INDEX_LAYOUT
        db["jobs"].replace_one({"_id": LAYOUT_MARKER}, {"_id": LAYOUT_MARKER, "layout": 5})
        # another instance starts the upgrade (to layout 6 and on), not us
        db["jobs"].insert_one({"_id": f"{LAYOUT_MARKER}-{INDEX_LAYOUT}", "o": "another instance"})
        for doc in db["resources"].find({}, {"ix": 1}):
            kept = [i for i in doc["ix"].split(" ") if not i.startswith(("@absent|", "@lacks|"))]
            db["resources"].update_one({"_id": doc["_id"]}, {"$set": {"ix": " ".join(kept)}})
        assert db["search_index"].delete_many({"_id": {"$regex": r"^Patient\|@absent\|"}}).deleted_count > 13
        assert db["search_index"].delete_many({"_id": {"$regex": r"^[A-Za-z]+\|@lacks\|"}}).deleted_count >= 16
        jobs = db["jobs"].count_documents({"kind": "reindex"})
    restarted = start_hub(store_uri, home, database=database, extra=extra)
    try:
        with restarted.client() as client:
            check_sorts(client, restarted, absent)
        with MongoClient(store_uri) as mongo:
            assert mongo[database]["jobs"].count_documents({"kind": "reindex"}) == jobs
    finally:
        stop_hub(restarted)
