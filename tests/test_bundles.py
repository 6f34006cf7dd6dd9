"""Batch and transaction Bundles: processing order, reference rewriting, conditional references, atomicity."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import httpx

from tests.conftest import Hub


def _entry(method: str, url: str, resource: dict | None = None, full_url: str | None = None, **request) -> dict:
    entry: dict = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def _transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_rewrites_urn_references_and_answers_each_entry(api: httpx.Client, hub: Hub) -> None:
    mrn = uuid.uuid4().hex
    patient_urn, order_urn = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    bundle = _transaction(
        _entry("POST", "ServiceRequest", {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                                          "subject": {"reference": patient_urn}}, order_urn),
        _entry("POST", "Patient", {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}],
                                   "name": [{"family": "赵"}]}, patient_urn),
        _entry("POST", "DiagnosticReport", {"resourceType": "DiagnosticReport", "status": "final",
                                            "code": {"text": "CT"}, "subject": {"reference": patient_urn},
                                            "basedOn": [{"reference": order_urn}]}),
    )
    r = httpx.post(hub.base, json=bundle, headers=api.headers)  # the base URL itself, no trailing slash
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response" and len(out["entry"]) == 3
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 3
    order_loc, patient_loc, report_loc = (e["response"]["location"] for e in out["entry"])
    patient_ref = patient_loc.split("/_history")[0]
    order = api.get(f"/{order_loc.split('/_history')[0]}").json()
    report = api.get(f"/{report_loc.split('/_history')[0]}").json()
    assert order["subject"]["reference"] == patient_ref
    assert report["subject"]["reference"] == patient_ref
    assert report["basedOn"][0]["reference"] == order_loc.split("/_history")[0]


def test_conditional_references_and_if_none_exist(api: httpx.Client) -> None:
    mrn = uuid.uuid4().hex
    pid = api.post("/Patient", json={"resourceType": "Patient", "identifier": [{"system": "urn:mrn",
                                                                             "value": mrn}]}).json()["id"]
    bundle = _transaction(
        _entry("POST", "Patient", {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]},
               ifNoneExist=f"identifier=urn:mrn|{mrn}"),
        _entry("POST", "Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "AFP"},
                                       "subject": {"reference": f"Patient?identifier=urn:mrn|{mrn}"}}),
    )
    out = api.post("/", json=bundle).json()
    assert out["entry"][0]["response"]["status"] == "200 OK"
    assert out["entry"][0]["response"]["location"].startswith(f"Patient/{pid}/")
    obs_id = out["entry"][1]["response"]["location"].split("/")[1]
    assert api.get(f"/Observation/{obs_id}").json()["subject"]["reference"] == f"Patient/{pid}"
    none = _transaction(_entry("POST", "Observation", {"resourceType": "Observation", "status": "final",
                                                       "code": {"text": "x"},
                                                       "subject": {"reference": "Patient?identifier=nobody"}}))
    r = api.post("/", json=none)
    assert r.status_code == 412 and "Bundle.entry[0]" in r.json()["issue"][0]["diagnostics"]


def test_failing_last_entry_of_100_leaves_nothing(api: httpx.Client) -> None:
    marker = uuid.uuid4().hex
    existing = api.post("/Basic", json={"resourceType": "Basic", "code": {"text": "before"}}).json()
    entries = [_entry("POST", "Basic", {"resourceType": "Basic", "code": {"text": f"{marker}-{i}"}})
               for i in range(98)]
    entries.append(_entry("PUT", f"Basic/{existing['id']}", {"resourceType": "Basic", "id": existing["id"],
                                                             "code": {"text": "changed"}}))
    entries.append(_entry("POST", "Patient", {"resourceType": "Patient", "birthDate": "not-a-date"}))
    r = api.post("/", json=_transaction(*entries))
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[99].resource.birthDate"]
    history = api.get("/Basic/_history", params={"_count": 1000, "_since": existing["meta"]["lastUpdated"]}).json()
    assert not [e for e in history["entry"] if e["resource"]["code"]["text"].startswith(marker)]
    assert api.get(f"/Basic/{existing['id']}").json()["meta"]["versionId"] == "1"


def test_transaction_if_match_and_duplicate_targets(api: httpx.Client) -> None:
    basic = api.post("/Basic", json={"resourceType": "Basic", "code": {"text": "v1"}}).json()
    stale = _transaction(
        _entry("POST", "Basic", {"resourceType": "Basic", "code": {"text": "new"}}),
        _entry("PUT", f"Basic/{basic['id']}", {"resourceType": "Basic", "id": basic["id"], "code": {"text": "v2"}},
               ifMatch='W/"7"'))
    r = api.post("/", json=stale)
    assert r.status_code == 412 and "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
    twice = _transaction(
        _entry("PUT", f"Basic/{basic['id']}", {"resourceType": "Basic", "id": basic["id"], "code": {"text": "a"}}),
        _entry("DELETE", f"Basic/{basic['id']}"))
    assert api.post("/", json=twice).status_code == 400
    ok = api.post("/", json=_transaction(
        _entry("PUT", f"Basic/{basic['id']}", {"resourceType": "Basic", "id": basic["id"], "code": {"text": "v2"}},
               ifMatch='W/"1"'),
        _entry("GET", f"Basic/{basic['id']}")))
    assert ok.status_code == 200
    entries = ok.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK" and entries[0]["response"]["etag"] == 'W/"2"'
    assert entries[1]["resource"]["code"]["text"] == "v2"  # GETs run after the writes


def test_batch_entries_succeed_or_fail_alone(api: httpx.Client) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        _entry("POST", "Basic", {"resourceType": "Basic", "code": {"text": "ok"}}),
        _entry("POST", "Patient", {"resourceType": "Patient", "birthDate": "bad"}),
        _entry("GET", f"Basic/{uuid.uuid4().hex}"),
        _entry("DELETE", "NotAType/1"),
        _entry("get", "Basic/x"),  # http-verb codes are upper case
        {"request": {"method": ["GET"], "url": "Basic/x"}},
    ]}
    out = api.post("/", json=bundle).json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created" and statuses[1:] == ["400", "404", "404", "400", "400"]
    assert out["entry"][1]["response"]["outcome"]["issue"][0]["expression"] == ["Patient.birthDate"]
    for n in (4, 5):
        assert out["entry"][n]["response"]["outcome"]["issue"][0]["expression"] == [f"Bundle.entry[{n}].request.method"]
    refused = api.post("/", json=_transaction(_entry("POST", "Basic", {"resourceType": "Basic", "code": {"text": "x"}}),
                                              _entry("Put", "Basic/y", {"resourceType": "Basic", "id": "y"})))
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["expression"] == ["Bundle.entry[1].request.method"]


def test_bundle_limits_and_type(api: httpx.Client, hub: Hub) -> None:
    assert api.post("/", json={"resourceType": "Bundle", "type": "collection"}).status_code == 400
    assert api.post("/", json={"resourceType": "Patient"}).status_code == 400
    many = _transaction(*[_entry("GET", "Basic/x")] * 1001)
    r = api.post("/", json=many)
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "too-costly"
    with hub.client("system/Basic.r") as reader:
        denied = reader.post("/", json=_transaction(_entry("POST", "Basic", {"resourceType": "Basic",
                                                                              "code": {"text": "x"}})))
        assert denied.status_code == 403


async def test_concurrent_transactions_on_the_same_resources(hub: Hub) -> None:
    async with httpx.AsyncClient(base_url=hub.base, headers={"Authorization": f"Bearer {hub.token()}"},
                                 timeout=60) as client:
        a = (await client.post("/Basic", json={"resourceType": "Basic", "code": {"text": "a0"}})).json()["id"]
        b = (await client.post("/Basic", json={"resourceType": "Basic", "code": {"text": "b0"}})).json()["id"]

        def both(i: int) -> dict:
            return _transaction(
                _entry("PUT", f"Basic/{a}", {"resourceType": "Basic", "id": a, "code": {"text": f"t{i}"}}),
                _entry("PUT", f"Basic/{b}", {"resourceType": "Basic", "id": b, "code": {"text": f"t{i}"}}))

        results = await asyncio.gather(*(client.post("/", json=both(i)) for i in range(12)))
        assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200][:2]
        ra = (await client.get(f"/Basic/{a}")).json()
        rb = (await client.get(f"/Basic/{b}")).json()
        assert ra["meta"]["versionId"] == rb["meta"]["versionId"] == "13"
        assert ra["code"] == rb["code"]  # the last transaction wrote both: never half of one and half of another
        ha = (await client.get(f"/Basic/{a}/_history", params={"_count": 50})).json()
        hb = (await client.get(f"/Basic/{b}/_history", params={"_count": 50})).json()
        order_a = [e["resource"]["code"]["text"] for e in ha["entry"]][:-1]  # without the first versions
        order_b = [e["resource"]["code"]["text"] for e in hb["entry"]][:-1]
        assert order_a == order_b and len(order_a) == 12  # the same order of transactions on both


def test_reads_in_a_transaction_answer_in_their_entry(api: httpx.Client) -> None:
    out = api.post("/", json=_transaction(
        _entry("POST", "Basic", {"resourceType": "Basic", "code": {"text": "kept"}}),
        _entry("GET", f"Basic/{uuid.uuid4().hex}")))
    assert out.status_code == 200
    created, missing = out.json()["entry"]
    assert created["response"]["status"] == "201 Created"
    assert missing["response"]["status"] == "404" and missing["response"]["outcome"]["resourceType"] == (
        "OperationOutcome")
    bad = api.post("/", json=_transaction(_entry("POST", "Basic", {"resourceType": "Basic", "code": {"text": "x"}},
                                                 ifNoneExist="name=x")))
    assert bad.status_code == 400 and "Bundle.entry[0]" in bad.json()["issue"][0]["diagnostics"]


def test_read_entries_are_conditional_reads(api: httpx.Client) -> None:
    """Bundle.entry.request.ifNoneMatch / ifModifiedSince (FHIR R4 http.html#cread): 304 in the entry when the
    client's copy is current; on other entries they are a 400 that names the field."""
    pid = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "钱"}]}).json()["id"]
    current = api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                "name": [{"family": "钱", "given": ["小东"]}]}).json()
    stamp = current["meta"]["lastUpdated"]  # milliseconds: the store's microseconds lie within them
    before = (datetime.fromisoformat(stamp) - timedelta(seconds=1)).isoformat()
    url = f"Patient/{pid}"
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        _entry("GET", url, ifNoneMatch='W/"2"'),
        _entry("GET", url, ifNoneMatch='W/"1"'),
        _entry("GET", url, ifNoneMatch="*"),
        _entry("GET", url, ifModifiedSince=stamp),
        _entry("GET", url, ifModifiedSince=before),
        _entry("GET", f"{url}/_history/1", ifNoneMatch='W/"1"'),
        _entry("GET", url, ifModifiedSince="yesterday"),
        _entry("PUT", url, current, ifNoneMatch='W/"2"'),
        _entry("GET", "Patient?family=钱", ifNoneMatch='W/"2"'),
    ]}
    out = api.post("/", json=bundle).json()["entry"]
    assert [e["response"]["status"] for e in out] == ["304 Not Modified", "200 OK", "304 Not Modified",
                                                      "304 Not Modified", "200 OK", "304 Not Modified",
                                                      "400", "400", "400"]
    for e in (out[0], out[2], out[3], out[5]):
        assert "resource" not in e
    assert out[0]["response"]["etag"] == 'W/"2"' and out[5]["response"]["etag"] == 'W/"1"'
    assert out[1]["resource"]["name"][0]["given"] == ["小东"] and out[4]["resource"]["meta"]["versionId"] == "2"
    assert out[6]["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[6].request.ifModifiedSince"]
    assert out[7]["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[7].request.ifNoneMatch"]
    assert out[8]["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[8].request"]
    # in a transaction the reads run after the writes: the copy a client held before them is stale
    tx = api.post("/", json=_transaction(
        _entry("PUT", url, {"resourceType": "Patient", "id": pid, "name": [{"family": "钱"}]}),
        _entry("GET", url, ifNoneMatch='W/"2"'),
        _entry("GET", url, ifNoneMatch='W/"3"')))
    assert tx.status_code == 200, tx.text
    assert [e["response"]["status"] for e in tx.json()["entry"]] == ["200 OK", "200 OK", "304 Not Modified"]
    # a bad condition fails the transaction before anything is written
    bad = api.post("/", json=_transaction(
        _entry("PUT", url, {"resourceType": "Patient", "id": pid, "name": [{"family": "孙"}]}),
        _entry("GET", url, ifModifiedSince="soon")))
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["expression"] == ["Bundle.entry[1].request.ifModifiedSince"]
    assert api.get(f"/{url}").json()["meta"]["versionId"] == "3"


def test_search_entries_answer_searchsets(api: httpx.Client) -> None:
    mrn = f"S{uuid.uuid4().hex[:10]}"
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}],
               "name": [{"family": "钱"}]}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": patient, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": f"Patient?identifier=urn:mrn|{mrn}"}},  # runs after the writes
    ]}
    answer = api.post("", json=bundle)
    assert answer.status_code == 200, answer.text
    found = answer.json()["entry"][1]
    assert found["response"]["status"] == "200 OK" and found["resource"]["type"] == "searchset"
    assert [e["resource"]["identifier"][0]["value"] for e in found["resource"]["entry"]] == [mrn]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient?identifier=urn:mrn|{mrn}&_summary=count"}},
        {"request": {"method": "GET", "url": "Patient?birthdate=notadate"}},
        {"request": {"method": "GET", "url": f"Patient?identifier=urn:mrn|{mrn}&_count=ten"}},
    ]}
    entries = api.post("", json=batch).json()["entry"]
    assert entries[0]["resource"]["total"] == 1
    assert entries[1]["response"]["status"].startswith("400")
    assert entries[2]["response"]["status"].startswith("400")  # as over REST, not the default page size
    issue = entries[2]["response"]["outcome"]["issue"][0]
    assert "_count" in issue["diagnostics"] and issue["expression"][0].endswith("_count")


def test_search_entries_over_a_compartment_and_the_system(api: httpx.Client) -> None:
    """Batched searches in every form of R4 http.html#search: ``Patient/[id]/[type]``, ``Patient/[id]/*`` and
    ``?_type=…``, each answered as the same search over REST would be."""
    mrn = f"C{uuid.uuid4().hex[:10]}"
    bundle = _transaction(
        _entry("POST", "Patient", {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}],
                                   "gender": "female"}, full_url="urn:uuid:p"),
        _entry("POST", "Observation", {"resourceType": "Observation", "status": "final", "code": {"text": mrn},
                                       "subject": {"reference": "urn:uuid:p"}}),
        _entry("POST", "Encounter", {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                                     "subject": {"reference": "urn:uuid:p"}}))
    answer = api.post("", json=bundle)
    assert answer.status_code == 200, answer.text
    pid = answer.json()["entry"][0]["response"]["location"].split("/")[1]
    urls = [f"Patient/{pid}/Observation", f"Patient/{pid}/*", f"Patient/{pid}/*?_type=Encounter",
            f"?_type=Patient,Observation&identifier=urn:mrn|{mrn}", f"Patient/{pid}/Organization",
            f"Patient/{pid}/*?_type=Organization", f"Patient/{pid}/Nothing"]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [_entry("GET", url) for url in urls]}
    entries = api.post("", json=batch).json()["entry"]
    for url, entry in zip(urls[:4], entries, strict=False):
        assert entry["response"]["status"] == "200 OK", (url, entry)
        over_rest = api.get("/" + url if url[0] != "?" else url).json()
        assert [e["resource"]["id"] for e in entry["resource"]["entry"]] == \
            [e["resource"]["id"] for e in over_rest["entry"]], url
    kinds = [sorted(e["resource"]["resourceType"] for e in entry["resource"]["entry"]) for entry in entries[:4]]
    assert kinds == [["Observation"], ["Encounter", "Observation", "Patient"], ["Encounter"], ["Patient"]]
    assert [e["response"]["status"][:3] for e in entries[4:]] == ["400", "400", "404"]
    in_transaction = api.post("", json=_transaction(_entry("GET", f"Patient/{pid}/*?_type=Observation")))
    assert in_transaction.status_code == 200, in_transaction.text
    assert in_transaction.json()["entry"][0]["resource"]["entry"][0]["resource"]["code"]["text"] == mrn


def test_patch_entries_apply_a_json_patch_in_a_binary(api: httpx.Client) -> None:
    import base64
    import json

    created = api.post("/Patient", json={"resourceType": "Patient", "gender": "male", "name": [{"family": "孙"}]})
    rid = created.json()["id"]

    def binary(ops: list[dict[str, object]]) -> dict[str, object]:
        return {"resourceType": "Binary", "contentType": "application/json-patch+json",
                "data": base64.b64encode(json.dumps(ops).encode()).decode()}

    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": binary([{"op": "replace", "path": "/gender", "value": "female"}]),
         "request": {"method": "PATCH", "url": f"Patient/{rid}", "ifMatch": 'W/"1"'}}]}
    answer = api.post("", json=transaction)
    assert answer.status_code == 200, answer.text
    assert answer.json()["entry"][0]["response"]["status"] == "200 OK"
    current = api.get(f"/Patient/{rid}").json()
    assert current["gender"] == "female" and current["meta"]["versionId"] == "2"
    assert api.get("/Patient", params={"_id": rid, "gender": "female"}).json()["total"] == 1  # indexed anew
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": binary([{"op": "add", "path": "/birthDate", "value": "1980-02-03"}]),
         "request": {"method": "PATCH", "url": f"Patient/{rid}"}},
        {"resource": {"resourceType": "Parameters"}, "request": {"method": "PATCH", "url": f"Patient/{rid}"}}]}
    entries = api.post("", json=batch).json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK" and entries[1]["response"]["status"].startswith("400")
    bad = api.post("", json={**transaction, "entry": [{**transaction["entry"][0], "request": {  # type: ignore[dict-item]
        "method": "PATCH", "url": f"Patient/{rid}"}, "resource": binary([{"op": "remove", "path": "/nothing"}])}]})
    assert bad.status_code in (400, 422) and "Bundle.entry[0]" in bad.json()["issue"][0]["diagnostics"]
    assert api.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "3"  # the failed transaction left nothing
    # a body that is no patch at all: said at the entry's resource, once
    wrong = api.post("", json={**transaction, "entry": [{"resource": {"resourceType": "Patient"},
                                                         "request": {"method": "PATCH", "url": f"Patient/{rid}"}}]})
    assert wrong.status_code == 400 and wrong.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource"], \
        wrong.text
    assert api.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "3"


def test_patch_entries_apply_a_fhirpath_patch(api: httpx.Client) -> None:
    created = api.post("/Patient", json={"resourceType": "Patient", "gender": "male", "name": [{"family": "周"}]})
    rid = created.json()["id"]

    def replace(path: str, value: dict[str, object]) -> dict[str, object]:
        return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": path},
            {"name": "value", **value}]}]}

    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:3f0a4a56-6c1e-4d1e-9d43-2f1f1d6f7a01",
         "resource": {"resourceType": "Organization", "name": "徐汇区中心医院"}, "request": {"method": "POST",
                                                                                       "url": "Organization"}},
        {"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "managingOrganization"},
            {"name": "value", "valueReference": {"reference": "urn:uuid:3f0a4a56-6c1e-4d1e-9d43-2f1f1d6f7a01"}}]}]},
         "request": {"method": "PATCH", "url": f"Patient/{rid}"}}]}
    answer = api.post("", json=transaction)
    assert answer.status_code == 200, answer.text
    org = answer.json()["entry"][0]["response"]["location"].split("/_history")[0]
    assert api.get(f"/Patient/{rid}").json()["managingOrganization"]["reference"] == org  # urn:uuid rewritten
    other = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "吴"}]}).json()["id"]
    failing = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": replace("Patient.gender", {"valueCode": "female"}),
         "request": {"method": "PATCH", "url": f"Patient/{rid}"}},
        {"resource": replace("Patient.name.given", {"valueString": "x"}),  # nothing there: fails
         "request": {"method": "PATCH", "url": f"Patient/{other}"}}]}
    bad = api.post("", json=failing)
    assert bad.status_code == 422, bad.text
    assert bad.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.parameter[0].part[1]"]
    current = api.get(f"/Patient/{rid}").json()
    assert current["gender"] == "male" and current["meta"]["versionId"] == "2"  # all or nothing
