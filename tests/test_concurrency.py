"""Concurrent writers over real sockets: If-Match races, conditional-create races, plain update races."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from urllib.parse import quote

import httpx

from tests.conftest import Hub

N = 24


def _client(hub: Hub) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=hub.base, timeout=60, limits=httpx.Limits(max_connections=N),
                             headers={"Authorization": f"Bearer {hub.token()}",
                                      "Content-Type": "application/fhir+json"})


async def test_if_match_race_has_one_winner(hub: Hub) -> None:
    pid = uuid.uuid4().hex
    async with _client(hub) as client:
        await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid})
        for round_ in range(3):
            current = (await client.get(f"/Patient/{pid}")).json()["meta"]["versionId"]
            results = await asyncio.gather(*(
                client.put(f"/Patient/{pid}", headers={"If-Match": f'W/"{current}"'},
                           json={"resourceType": "Patient", "id": pid, "name": [{"family": f"w{round_}-{i}"}]})
                for i in range(N)))
            statuses = sorted(r.status_code for r in results)
            assert statuses == [200] + [412] * (N - 1), statuses
            winner = next(r for r in results if r.status_code == 200).json()
            stored = (await client.get(f"/Patient/{pid}")).json()
            assert stored == winner and stored["meta"]["versionId"] == str(int(current) + 1)


async def test_conditional_create_race_creates_one(hub: Hub) -> None:
    mrn = uuid.uuid4().hex
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]}
    async with _client(hub) as client:
        results = await asyncio.gather(*(
            client.post("/Patient", json=body, headers={"If-None-Exist": f"identifier=urn:mrn|{mrn}"})
            for _ in range(N)))
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] * (N - 1) + [201], statuses
        ids = {r.json()["id"] for r in results}
        assert len(ids) == 1
        # and exactly one exists: a further conditional create still matches one, not several
        again = await client.post("/Patient", json=body, headers={"If-None-Exist": f"identifier={mrn}"})
        assert again.status_code == 200 and again.json()["id"] in ids


async def test_conditional_creates_with_different_criteria_for_one_patient_create_one(hub: Hub) -> None:
    """Feeds of two hospitals send the same patient at once, each by the criteria it knows: the MRN with its
    system, the MRN alone, the MRN and the gender, the national id; alone or in transactions. Every criteria
    names an identifier of the Patient sent, so the writes are serialized by those identifiers, whatever the rest
    of the criteria: one Patient is created, and every other write finds it."""
    mrn, national = uuid.uuid4().hex, uuid.uuid4().hex
    body = {"resourceType": "Patient", "gender": "male",
            "identifier": [{"system": "urn:mrn", "value": mrn}, {"system": "urn:oid:2.16.156", "value": national}]}
    criteria = [f"identifier=urn:mrn|{mrn}", f"identifier={mrn}", f"identifier=urn:mrn|{mrn}&gender=male",
                f"identifier=urn:oid:2.16.156|{national}"]

    async def send(i: int) -> tuple[str, str]:
        """(status, id): a conditional create alone, or as the entry of a transaction (every other one)."""
        if i % 2:
            answer = await client.post("/Patient", json=body, headers={"If-None-Exist": criteria[i % len(criteria)]})
            return str(answer.status_code), answer.json().get("id", "")
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": body, "request": {
            "method": "POST", "url": "Patient", "ifNoneExist": criteria[i // 2 % len(criteria)]}}]}
        answer = await client.post("", json=bundle)
        if answer.status_code != 200:  # the transaction failed as a whole (412: the criteria matched several)
            return str(answer.status_code), ""
        response = answer.json()["entry"][0]["response"]
        return response["status"].split()[0], response["location"].split("/")[1]

    async with _client(hub) as client:
        results = await asyncio.gather(*(send(i) for i in range(N)))
        assert sorted(status for status, _ in results) == ["200"] * (N - 1) + ["201"], results
        assert len({rid for _, rid in results}) == 1
        found = (await client.get("/Patient", params={"identifier": mrn, "_total": "accurate"})).json()
        assert found["total"] == 1


async def test_conditional_creates_by_different_criteria_without_identifiers_create_one(hub: Hub) -> None:
    """Criteria without an identifier (a name and a birth date, each written its own way) cannot tell which
    resources they may find: the conditional writes of a type that have such criteria are done one at a time."""
    family = f"王{uuid.uuid4().hex[:8]}"
    body = {"resourceType": "Patient", "gender": "female", "birthDate": "1958-07-09",
            "name": [{"family": family, "given": ["秀英"]}]}
    criteria = [f"family={family}&birthdate=1958-07-09", f"name={family}&birthdate=1958-07-09",
                f"family={family}&gender=female&birthdate=1958-07-09", f"family:exact={family}"]
    async with _client(hub) as client:
        results = await asyncio.gather(*(
            client.post("/Patient", json=body, headers={"If-None-Exist": quote(criteria[i % len(criteria)], "=&:")})
            for i in range(N)))
        assert sorted(r.status_code for r in results) == [200] * (N - 1) + [201], [r.status_code for r in results]
        assert len({r.json()["id"] for r in results}) == 1


async def test_conditional_update_race_creates_one(hub: Hub) -> None:
    mrn = uuid.uuid4().hex
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]}
    async with _client(hub) as client:
        results = await asyncio.gather(*(client.put("/Patient", params={"identifier": f"urn:mrn|{mrn}"}, json=body)
                                         for _ in range(N)))
        assert sorted(r.status_code for r in results) == [200] * (N - 1) + [201]
        assert len({r.json()["id"] for r in results}) == 1
        versions = sorted(int(r.json()["meta"]["versionId"]) for r in results)
        assert versions == list(range(1, N + 1))


async def test_plain_updates_all_land_as_contiguous_versions(hub: Hub) -> None:
    pid = uuid.uuid4().hex
    async with _client(hub) as client:
        results = await asyncio.gather(*(
            client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "name": [{"family": f"f{i}"}]})
            for i in range(N)))
        assert sorted(r.status_code for r in results) == [200] * (N - 1) + [201]
        versions = sorted(int(r.json()["meta"]["versionId"]) for r in results)
        assert versions == list(range(1, N + 1))  # no version lost or duplicated
        history = (await client.get(f"/Patient/{pid}/_history", params={"_count": 100})).json()
        by_version = {e["resource"]["meta"]["versionId"]: e["resource"] for e in history["entry"]}
        for r in results:  # every acknowledged write is in history exactly as acknowledged
            body = r.json()
            assert by_version[body["meta"]["versionId"]] == body


async def test_a_conditional_write_lands_only_on_the_version_its_criteria_matched(hub: Hub) -> None:
    """A conditional update, patch or delete by MRN (alone or in a transaction) races a plain update that takes the MRN
    off the Patient (a correction, a merge). In either order the Patient ends as the plain update wrote it: the
    conditional write matched it first (then it was overwritten) or found nothing. Landing on the version the
    plain update wrote, which its criteria never matched, would lose that update. Rounds of many pairs at once,
    the plain update a few milliseconds after the conditional write, so that some fall between its match and
    its write."""
    def conditional(kind: str, mrn: str) -> tuple[str, str, dict[str, object] | None, dict[str, str] | None]:
        criteria = f"identifier=urn:mrn|{mrn}"
        body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}],
                "name": [{"family": "conditional"}]}
        if kind == "update":
            return "PUT", "/Patient", body, {"identifier": f"urn:mrn|{mrn}"}
        if kind == "delete":
            return "DELETE", "/Patient", None, {"identifier": f"urn:mrn|{mrn}"}
        if kind == "patch":  # a FHIRPath Patch
            return "PATCH", "/Patient", {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.name.family"},
                {"name": "value", "valueString": "conditional"}]}]}, {"identifier": f"urn:mrn|{mrn}"}
        request = {"method": "PUT" if kind == "transaction update" else "DELETE", "url": f"Patient?{criteria}"}
        entry = {"request": request, **({"resource": body} if request["method"] == "PUT" else {})}
        return "POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}, None

    async def pair(client: httpx.AsyncClient, kind: str, delay: float) -> tuple[str, int, object]:
        pid, mrn = uuid.uuid4().hex, uuid.uuid4().hex
        made = await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "name": [
            {"family": "first"}], "identifier": [{"system": "urn:mrn", "value": mrn}]})
        assert made.status_code == 201, made.text
        method, path, body, params = conditional(kind, mrn)

        async def plain() -> httpx.Response:
            await asyncio.sleep(delay)
            return await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                             "name": [{"family": "plain"}]})
        cond, put = await asyncio.gather(client.request(method, path, json=body, params=params), plain())
        found = cond.status_code < 300 or (kind == "patch" and cond.status_code == 404)  # none to patch: 404
        assert found and put.status_code < 300, (cond.text, put.text)
        final = await client.get(f"/Patient/{pid}")
        return pid, final.status_code, final.json()["name"][0]["family"] if final.status_code == 200 else None

    async with _client(hub) as client:
        for kind in ("update", "delete", "patch", "transaction update", "transaction delete"):
            for round_ in range(4):
                ends = await asyncio.gather(*(pair(client, kind, 0.001 * (i % 8)) for i in range(N)))
                lost = [(pid, status, family) for pid, status, family in ends if family != "plain"]
                assert not lost, (kind, round_, lost)


async def test_a_transaction_tried_again_after_a_lost_race_starts_from_the_bundle_as_sent(hub: Hub) -> None:
    """Transactions that update a Patient by MRN, create its practitioner (``urn:uuid:``) and patch another
    resource race plain updates of that Patient, so that some lose and are tried again. Each try starts from the
    Bundle as sent: the Patient version a transaction wrote names the practitioner that transaction created,
    and every patch applies (a retry that kept the first try's rewritten references named a practitioner never
    written, and read the patched resource as its patch)."""
    pid, mrn, other = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    identifier = [{"system": "urn:mrn", "value": mrn}]

    def transaction(i: int) -> dict[str, object]:
        practitioner = f"urn:uuid:{uuid.uuid4()}"
        patch = [{"op": "replace", "path": "/birthDate", "value": f"19{i + 10:02d}-01-01"}]
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": practitioner, "resource": {"resourceType": "Practitioner", "name": [{"family": f"d{i}"}]},
             "request": {"method": "POST", "url": "Practitioner"}},
            {"resource": {"resourceType": "Patient", "identifier": identifier, "name": [{"family": f"tx{i}"}],
                          "generalPractitioner": [{"reference": practitioner}]},
             "request": {"method": "PUT", "url": f"Patient?identifier=urn:mrn|{mrn}"}},
            {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                          "data": base64.b64encode(json.dumps(patch).encode()).decode()},
             "request": {"method": "PATCH", "url": f"Patient/{other}"}}]}

    async with _client(hub) as client:
        for made in (await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                                "identifier": identifier}),
                     await client.put(f"/Patient/{other}", json={"resourceType": "Patient", "id": other,
                                                                  "birthDate": "1900-01-01"})):
            assert made.status_code == 201, made.text
        plain = [client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "identifier": identifier,
                                                       "name": [{"family": f"plain{j}"}]}) for j in range(2 * N)]
        sent = [client.post("", json=transaction(i)) for i in range(N)]
        answers = await asyncio.gather(*sent, *plain)
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:2]
        for answer in answers[:N]:
            created, updated, patched = (e["response"] for e in answer.json()["entry"])
            doctor = created["location"].split("/_history")[0]
            assert (await client.get(f"/{doctor}")).status_code == 200
            written = (await client.get(f"/{updated['location']}")).json()
            assert written["generalPractitioner"] == [{"reference": doctor}], (written, doctor)
            assert patched["status"].startswith("200")
