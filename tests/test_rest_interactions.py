"""Every REST interaction and HTTP header of the FHIR R4 core (http.html), against the running hub."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import quote

import httpx

from tests.conftest import Hub


def new_id() -> str:
    return uuid.uuid4().hex[:20]


def patient(pid: str | None = None, family: str = "王", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"resourceType": "Patient", "name": [{"family": family, "given": ["小东"]}],
                               "gender": "male", "birthDate": "1970-03-01", **extra}
    if pid:
        body["id"] = pid
    return body


def test_create_assigns_id_version_and_headers(api: httpx.Client, hub: Hub) -> None:
    r = api.post("/Patient", json=patient(identifier=[{"system": "urn:mrn", "value": new_id()}]))
    assert r.status_code == 201, r.text
    body = r.json()
    rid = body["id"]
    assert body["meta"]["versionId"] == "1"
    assert "+08:00" in body["meta"]["lastUpdated"]  # server time with the hub zone's offset
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"{hub.base}/Patient/{rid}/_history/1"
    assert parsedate_to_datetime(r.headers["last-modified"])
    assert body["name"] == [{"family": "王", "given": ["小东"]}]


def test_create_ignores_client_id_and_meta_version(api: httpx.Client) -> None:
    r = api.post("/Patient", json=patient("client-chosen", meta={"versionId": "99", "tag": [{"code": "x"}]}))
    assert r.status_code == 201
    assert r.json()["id"] != "client-chosen"
    assert r.json()["meta"]["versionId"] == "1"
    assert r.json()["meta"]["tag"] == [{"code": "x"}]  # client meta elements other than server-owned kept


def test_assigned_ids_are_version_7_uuids_in_the_order_they_were_made(api: httpx.Client) -> None:
    """POST and transaction POST entries get RFC 9562 version 7 UUIDs: their time is the creation's, and each
    sorts after the one before (the store's B-trees take new keys at their right edge)."""
    start_ms = time.time_ns() // 1_000_000
    ids = [api.post("/Patient", json=patient()).json()["id"] for _ in range(5)]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": patient(), "request": {"method": "POST", "url": "Patient"}}
        for _ in range(20)]}
    answer = api.post("", json=bundle)
    assert answer.status_code == 200, answer.text
    ids += [e["response"]["location"].split("/")[1] for e in answer.json()["entry"]]
    end_ms = time.time_ns() // 1_000_000
    assert ids == sorted(ids) and len(set(ids)) == 25
    for rid in ids:
        made = uuid.UUID(rid)
        assert str(made) == rid and made.version == 7 and made.variant == uuid.RFC_4122
        assert start_ms <= made.int >> 80 <= end_ms


def test_read_vread_update_versions(api: httpx.Client) -> None:
    pid = new_id()
    assert api.put(f"/Patient/{pid}", json=patient(pid)).status_code == 201  # create-on-update
    r2 = api.put(f"/Patient/{pid}", json=patient(pid, family="李"))
    assert r2.status_code == 200 and r2.json()["meta"]["versionId"] == "2"
    read = api.get(f"/Patient/{pid}")
    assert read.json()["name"][0]["family"] == "李" and read.headers["etag"] == 'W/"2"'
    v1 = api.get(f"/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and v1.json()["name"][0]["family"] == "王"
    assert v1.json()["meta"]["versionId"] == "1"
    assert api.get(f"/Patient/{pid}/_history/3").status_code == 404
    assert api.get(f"/Patient/{pid}/_history/abc").status_code == 404
    assert api.get(f"/Patient/{new_id()}").status_code == 404


def test_update_id_must_match_url(api: httpx.Client) -> None:
    pid = new_id()
    r = api.put(f"/Patient/{pid}", json=patient("other"))
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Patient.id"]
    r = api.put(f"/Patient/{pid}", json=patient())
    assert r.status_code == 400
    r = api.put(f"/Observation/{pid}", json=patient(pid))
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["resourceType"]
    r = api.put("/Patient/bad_id!", json=patient("bad_id!"))
    assert r.status_code == 400


def test_delete_is_a_tombstone(api: httpx.Client) -> None:
    pid = new_id()
    api.put(f"/Patient/{pid}", json=patient(pid))
    r = api.delete(f"/Patient/{pid}")
    assert r.status_code == 204 and r.headers["etag"] == 'W/"2"'
    gone = api.get(f"/Patient/{pid}")
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    assert api.delete(f"/Patient/{pid}").status_code == 204  # idempotent
    hist = api.get(f"/Patient/{pid}/_history").json()
    assert [e["response"]["status"] for e in hist["entry"]] == ["204 No Content", "201 Created"]
    assert "resource" not in hist["entry"][0] and hist["entry"][0]["request"]["method"] == "DELETE"
    assert api.get(f"/Patient/{pid}/_history/1").status_code == 200
    assert api.get(f"/Patient/{pid}/_history/2").status_code == 410
    again = api.put(f"/Patient/{pid}", json=patient(pid))  # an update brings it back as version 3
    assert again.status_code == 201 and again.json()["meta"]["versionId"] == "3"
    assert api.delete(f"/Patient/{new_id()}").status_code == 404


def test_if_match(api: httpx.Client) -> None:
    pid = new_id()
    api.put(f"/Patient/{pid}", json=patient(pid))
    ok = api.put(f"/Patient/{pid}", json=patient(pid, family="A"), headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = api.put(f"/Patient/{pid}", json=patient(pid, family="B"), headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    assert api.get(f"/Patient/{pid}").json()["name"][0]["family"] == "A"
    assert api.put(f"/Patient/{pid}", json=patient(pid), headers={"If-Match": "garbage"}).status_code == 400
    assert api.delete(f"/Patient/{pid}", headers={"If-Match": 'W/"1"'}).status_code == 412
    assert api.put(f"/Patient/{new_id()}", json=patient(), headers={"If-Match": 'W/"1"'}).status_code in (400, 412)


def test_conditional_read_headers(api: httpx.Client) -> None:
    pid = new_id()
    created = api.put(f"/Patient/{pid}", json=patient(pid))
    assert api.get(f"/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert api.get(f"/Patient/{pid}", headers={"If-None-Match": 'W/"0"'}).status_code == 200
    last = parsedate_to_datetime(created.headers["last-modified"])
    assert api.get(f"/Patient/{pid}", headers={"If-Modified-Since": format_datetime(last, usegmt=True)}
                   ).status_code == 304
    earlier = format_datetime(last - timedelta(seconds=5), usegmt=True)
    assert api.get(f"/Patient/{pid}", headers={"If-Modified-Since": earlier}).status_code == 200
    # "-0000": a date without a zone (RFC 5322), read as UTC; an unreadable date is no condition
    assert api.get(f"/Patient/{pid}", headers={"If-Modified-Since": format_datetime(last.replace(tzinfo=None))}
                   ).status_code == 304
    assert api.get(f"/Patient/{pid}", headers={"If-Modified-Since": "yesterday"}).status_code == 200


def test_prefer_return(api: httpx.Client) -> None:
    r = api.post("/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b"" and r.headers["location"]
    r = api.post("/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 201 and r.json()["resourceType"] == "OperationOutcome"
    r = api.post("/Patient", json=patient(), headers={"Prefer": "return=representation"})
    assert r.json()["resourceType"] == "Patient"


def test_pretty_summary_elements(api: httpx.Client) -> None:
    pid = new_id()
    api.put(f"/Patient/{pid}", json=patient(pid, text={"status": "generated", "div":
            '<div xmlns="http://www.w3.org/1999/xhtml">王小东</div>'}, photo=[{"contentType": "image/png"}]))
    pretty = api.get(f"/Patient/{pid}", params={"_pretty": "true"})
    assert pretty.text.startswith('{\n  "resourceType"')
    summary = api.get(f"/Patient/{pid}", params={"_summary": "true"}).json()
    assert "photo" not in summary and "text" not in summary and summary["name"]
    assert {"code": "SUBSETTED", "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"} in (
        summary["meta"]["tag"])
    text = api.get(f"/Patient/{pid}", params={"_summary": "text"}).json()
    assert set(text) == {"resourceType", "id", "meta", "text"}
    data = api.get(f"/Patient/{pid}", params={"_summary": "data"}).json()
    assert "text" not in data and "photo" in data
    elements = api.get(f"/Patient/{pid}", params={"_elements": "gender,birthDate"}).json()
    assert set(elements) == {"resourceType", "id", "meta", "gender", "birthDate"}
    assert api.get(f"/Patient/{pid}", params={"_summary": "bogus"}).status_code == 400


def test_patch(api: httpx.Client) -> None:
    pid = new_id()
    api.put(f"/Patient/{pid}", json=patient(pid))
    ops = [{"op": "replace", "path": "/gender", "value": "female"}, {"op": "add", "path": "/active", "value": True}]
    r = api.patch(f"/Patient/{pid}", json=ops, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "female" and r.json()["active"] is True and r.json()["meta"]["versionId"] == "2"
    stale = api.patch(f"/Patient/{pid}", json=ops, headers={"Content-Type": "application/json-patch+json",
                                                            "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    invalid = api.patch(f"/Patient/{pid}", json=[{"op": "add", "path": "/birthDate", "value": "x"}],
                        headers={"Content-Type": "application/json-patch+json"})
    assert invalid.status_code == 400 and invalid.json()["issue"][0]["expression"] == ["Patient.birthDate"]
    broken = api.patch(f"/Patient/{pid}", json=[{"op": "remove", "path": "/nothing"}],
                       headers={"Content-Type": "application/json-patch+json"})
    assert broken.status_code == 422
    change_id = api.patch(f"/Patient/{pid}", json=[{"op": "replace", "path": "/id", "value": "x"}],
                          headers={"Content-Type": "application/json-patch+json"})
    assert change_id.status_code == 422
    assert api.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "2"  # nothing half-written
    wrong_type = api.patch(f"/Patient/{pid}", json=ops)
    assert wrong_type.status_code == 400


def _operation(kind: str, path: str, **parts: object) -> dict[str, object]:
    """One FHIRPath Patch operation; ``parts``: name (string), index/source/destination (integers), value
    (a dict holding value[x] or part)."""
    out: list[dict[str, object]] = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, given in parts.items():
        if name == "value":
            out.append({"name": "value", **given})  # type: ignore[dict-item]
        elif name == "name":
            out.append({"name": "name", "valueString": given})
        else:
            out.append({"name": name, "valueInteger": given})
    return {"name": "operation", "part": out}


def test_fhirpath_patch(api: httpx.Client) -> None:
    pid = new_id()
    api.put(f"/Patient/{pid}", json=patient(pid, identifier=[{"system": "urn:a", "value": "1"},
                                                             {"system": "urn:b", "value": "2"}]))
    patch = {"resourceType": "Parameters", "parameter": [
        _operation("replace", "Patient.gender", value={"valueCode": "female"}),
        _operation("add", "Patient", name="telecom", value={"valueContactPoint": {"system": "phone", "value": "1"}}),
        _operation("add", "Patient.name[0]", name="given", value={"valueString": "晓"}),
        _operation("delete", "Patient.identifier.where(system = 'urn:a')"),
        _operation("insert", "Patient.identifier", index=0, value={"valueIdentifier": {"system": "urn:c",
                                                                                       "value": "3"}}),
        _operation("move", "Patient.identifier", source=0, destination=1),
        _operation("add", "Patient", name="contact", value={"part": [
            {"name": "name", "valueHumanName": {"family": "李"}},
            {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "2"}}]}),
        _operation("delete", "Patient.deceased"),  # nothing there: not an error
    ]}
    r = api.patch(f"/Patient/{pid}", json=patch, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["gender"] == "female" and got["meta"]["versionId"] == "2"
    assert got["telecom"] == [{"system": "phone", "value": "1"}]  # a list: telecom repeats in R4
    assert got["name"][0]["given"][-1] == "晓"
    assert [i["system"] for i in got["identifier"]] == ["urn:b", "urn:c"]
    assert got["contact"] == [{"name": {"family": "李"}, "telecom": [{"system": "phone", "value": "2"}]}]
    assert api.get("/Patient", params={"identifier": "urn:c|3"}).json()["total"] == 1  # indexed anew
    assert api.get("/Patient", params={"identifier": "urn:a|1"}).json()["total"] == 0
    xml = api.patch(f"/Patient/{pid}", headers={"Content-Type": "application/fhir+xml",
                                                "Accept": "application/fhir+json"}, content=(
        b'<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="operation"/>'
        b'<part><name value="type"/><valueCode value="replace"/></part>'
        b'<part><name value="path"/><valueString value="Patient.birthDate"/></part>'
        b'<part><name value="value"/><valueDate value="1980-02-03"/></part></parameter></Parameters>'))
    assert xml.status_code == 200, xml.text
    assert xml.json()["birthDate"] == "1980-02-03"

    def refused(*operations: dict[str, object]) -> dict[str, object]:
        answer = api.patch(f"/Patient/{pid}", json={"resourceType": "Parameters", "parameter": list(operations)})
        assert answer.status_code in (400, 422), answer.text
        return answer.json()["issue"][0]  # type: ignore[no-any-return]

    two = refused(_operation("replace", "Patient.gender", value={"valueCode": "male"}),
                  _operation("replace", "Patient.identifier", value={"valueIdentifier": {"value": "x"}}))
    assert two["expression"] == ["Parameters.parameter[1].part[1]"] and "2" in two["diagnostics"]
    assert refused(_operation("add", "Patient", name="birthDate", value={"valueDate": "1990-01-01"})
                   )["expression"] == ["Parameters.parameter[0].part[2]"]
    assert refused(_operation("insert", "Patient.identifier", index=9, value={"valueIdentifier": {"value": "x"}})
                   )["expression"] == ["Parameters.parameter[0].part[2]"]
    assert "exists()" in refused(_operation("delete", "Patient.name.exists()"))["diagnostics"]
    assert refused(_operation("explode", "Patient.gender"))["expression"] == ["Parameters.parameter[0].part[0]"]
    invalid = refused(_operation("replace", "Patient.birthDate", value={"valueString": "not a date"}))
    assert invalid["expression"] == ["Patient.birthDate"]  # the patched resource is validated like any write
    assert refused(_operation("replace", "Patient.id", value={"valueId": "other"}))
    current = api.get(f"/Patient/{pid}").json()
    assert current["meta"]["versionId"] == "3" and current["gender"] == "female"  # nothing half-written


def test_fhirpath_patch_keeps_primitive_extensions_with_their_values(api: httpx.Client) -> None:
    pinyin = "http://medunion.example.cn/fhir/StructureDefinition/pinyin"

    def spelled(text: str) -> dict[str, object]:
        return {"extension": [{"url": pinyin, "valueString": text}]}

    pid = new_id()
    api.put(f"/Patient/{pid}", json={
        "resourceType": "Patient", "id": pid, "birthDate": "1970-03-01", "_birthDate": spelled("birthday"),
        "name": [{"family": "王", "given": ["小", "东", "明"], "_given": [None, spelled("dong"), None]}]})
    steps = [  # (operation, the given names after it, the pinyin of each position after it)
        (_operation("delete", "Patient.name[0].given[0]"), ["东", "明"], ["dong", None]),
        (_operation("insert", "Patient.name[0].given", index=0, value={"valueString": "大"}),
         ["大", "东", "明"], [None, "dong", None]),
        (_operation("move", "Patient.name[0].given", source=1, destination=2),
         ["大", "明", "东"], [None, None, "dong"]),
        (_operation("add", "Patient.name[0]", name="given", value={"valueString": "亮"}),
         ["大", "明", "东", "亮"], [None, None, "dong", None]),
        (_operation("delete", "Patient.name[0].given[2]"), ["大", "明", "亮"], None),  # no pinyin left: no _given
    ]
    for operation, given, spellings in steps:
        r = api.patch(f"/Patient/{pid}", json={"resourceType": "Parameters", "parameter": [operation]})
        assert r.status_code == 200, r.text
        name = r.json()["name"][0]
        assert name["given"] == given
        if spellings is None:
            assert "_given" not in name
        else:
            assert [e and e["extension"][0]["valueString"] for e in name["_given"]] == spellings
    r = api.patch(f"/Patient/{pid}", json={"resourceType": "Parameters", "parameter": [
        _operation("delete", "Patient.birthDate")]})
    assert r.status_code == 200 and "birthDate" not in r.json() and "_birthDate" not in r.json()


def test_conditional_create(api: httpx.Client) -> None:
    mrn = new_id()
    headers = {"If-None-Exist": f"identifier=urn:mrn|{mrn}"}
    body = patient(identifier=[{"system": "urn:mrn", "value": mrn}])
    first = api.post("/Patient", json=body, headers=headers)
    assert first.status_code == 201
    second = api.post("/Patient", json=body, headers=headers)
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    any_system = api.post("/Patient", json=body, headers={"If-None-Exist": f"identifier={mrn}"})
    assert any_system.status_code == 200 and any_system.json()["id"] == first.json()["id"]
    other_system = api.post("/Patient", json=body, headers={"If-None-Exist": f"identifier=urn:other|{mrn}"})
    assert other_system.status_code == 201
    both = api.post("/Patient", json=body, headers={"If-None-Exist": f"identifier={mrn}"})
    assert both.status_code == 412  # two now match
    by_id = api.post("/Patient", json=body, headers={"If-None-Exist": f"_id={first.json()['id']}"})
    assert by_id.status_code == 200
    unknown = api.post("/Patient", json=body, headers={"If-None-Exist": "no-such-parameter=1"})
    assert unknown.status_code == 400 and "no-such-parameter" in unknown.json()["issue"][0]["diagnostics"]


def test_conditional_create_with_chinese_criteria_raw_or_percent_encoded(api: httpx.Client) -> None:
    """``curl -H "If-None-Exist: family=王小东&birthdate=…"`` sends the criteria as raw UTF-8 bytes: they are read as
    UTF-8 (Starlette reads header bytes as Latin-1, which searched for other text and created a duplicate), and
    find what the percent-encoded form finds; bytes that are not UTF-8 are a 400 that says to percent-encode."""
    family = f"王{new_id()[:6]}"
    body = patient(family=family, birthDate="1961-02-03")
    raw = f"family={family}&birthdate=1961-02-03".encode()
    first = api.post("/Patient", json=body, headers={"If-None-Exist": raw})
    assert first.status_code == 201, first.text
    again = api.post("/Patient", json=body, headers={"If-None-Exist": raw})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text
    encoded = api.post("/Patient", json=body, headers={"If-None-Exist": f"family={quote(family)}&birthdate=1961-02-03"})
    assert encoded.status_code == 200 and encoded.json()["id"] == first.json()["id"]
    bad = api.post("/Patient", json=body, headers={"If-None-Exist": b"family=\xff"})
    assert bad.status_code == 400 and "percent-encoded" in bad.json()["issue"][0]["diagnostics"]


def test_conditional_update_and_delete(api: httpx.Client) -> None:
    mrn = new_id()
    body = patient(identifier=[{"system": "urn:mrn", "value": mrn}])
    created = api.put("/Patient", params={"identifier": f"urn:mrn|{mrn}"}, json=body)
    assert created.status_code == 201
    rid = created.json()["id"]
    updated = api.put("/Patient", params={"identifier": f"urn:mrn|{mrn}"}, json={**body, "gender": "female"})
    assert updated.status_code == 200 and updated.json()["id"] == rid and updated.json()["meta"]["versionId"] == "2"
    mismatch = api.put("/Patient", params={"identifier": f"urn:mrn|{mrn}"}, json={**body, "id": "someone-else"})
    assert mismatch.status_code == 400
    assert api.put("/Patient", json=body).status_code == 405
    deleted = api.delete("/Patient", params={"identifier": f"urn:mrn|{mrn}"})
    assert deleted.status_code == 204
    assert api.get(f"/Patient/{rid}").status_code == 410
    assert api.delete("/Patient", params={"identifier": f"urn:mrn|{mrn}"}).status_code == 204  # none left
    assert api.delete("/Patient").status_code == 405


def test_conditional_patch(api: httpx.Client) -> None:
    """``PATCH [type]?criteria`` (R4 http.html#patch): the one match patched, none 404, several 412."""
    mrn, twin = new_id(), new_id()
    rid = api.post("/Patient", json=patient(identifier=[{"system": "urn:mrn", "value": mrn}])).json()["id"]
    json_patch = {"Content-Type": "application/json-patch+json"}
    patched = api.patch("/Patient", params={"identifier": f"urn:mrn|{mrn}"}, headers=json_patch,
                        content=b'[{"op": "replace", "path": "/gender", "value": "female"}]')
    assert patched.status_code == 200, patched.text
    assert patched.json()["id"] == rid and patched.json()["gender"] == "female"
    assert patched.json()["meta"]["versionId"] == "2"
    fhirpath = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"},
        {"name": "value", "valueDate": "1961-02-03"}]}]}
    again = api.patch("/Patient", params={"identifier": mrn}, json=fhirpath, headers={"If-Match": 'W/"2"'})
    assert again.status_code == 200 and again.json()["birthDate"] == "1961-02-03", again.text
    stale = api.patch("/Patient", params={"identifier": mrn}, json=fhirpath, headers={"If-Match": 'W/"2"'})
    assert stale.status_code == 412
    none = api.patch("/Patient", params={"identifier": f"urn:mrn|{twin}"}, json=fhirpath)
    assert none.status_code == 404 and none.json()["resourceType"] == "OperationOutcome"
    for _ in range(2):
        api.post("/Patient", json=patient(identifier=[{"system": "urn:mrn", "value": twin}]))
    assert api.patch("/Patient", params={"identifier": twin}, json=fhirpath).status_code == 412
    assert api.patch("/Patient", json=fhirpath).status_code == 405
    assert api.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "3"


def test_history_type_and_system_with_paging(api: httpx.Client, hub: Hub) -> None:
    marker = new_id()
    ids = []
    before = time.time()
    for i in range(5):
        r = api.post("/Basic", json={"resourceType": "Basic", "code": {"text": f"{marker}-{i}"}})
        ids.append(r.json()["id"])
    api.put(f"/Basic/{ids[0]}", json={"resourceType": "Basic", "id": ids[0], "code": {"text": f"{marker}-0b"}})
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before - 1)) + "Z"
    seen: list[str] = []
    url: str | None = f"/Basic/_history?_count=2&_since={since}"
    pages = 0
    while url:
        page = api.get(url.replace(hub.base, "")).json()
        assert page["type"] == "history"
        assert len(page["entry"]) <= 2
        seen += [f"{e['resource']['id']}/{e['resource']['meta']['versionId']}" for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        pages += 1
    expected = [f"{ids[0]}/2"] + [f"{i}/1" for i in reversed(ids)]
    assert [s for s in seen if s.split("/")[0] in ids] == expected
    assert pages >= 3
    system = api.get("/_history", params={"_count": 3, "_since": since}).json()
    assert [e["resource"]["id"] for e in system["entry"]][:1] == [ids[0]]
    at = api.get(f"/Basic/{ids[0]}/_history", params={"_at": since}).json()
    assert at["entry"] == []
    instance = api.get(f"/Basic/{ids[0]}/_history", params={"_count": 1}).json()
    assert len(instance["entry"]) == 1 and any(link["relation"] == "next" for link in instance["link"])
    assert api.get("/_history", params={"_since": "not-a-date"}).status_code == 400
    broken = api.get("/Basic/_history", params={"_cursor": "yesterday"})
    assert broken.status_code == 400 and broken.json()["issue"][0]["expression"] == ["_cursor"], broken.text
    empty = api.get("/Basic/_history", params={"_count": 0}).json()
    assert empty.get("entry", []) == [] and not [link for link in empty["link"] if link["relation"] == "next"]


def test_metadata_lists_what_is_implemented(hub: Hub) -> None:
    r = httpx.get(f"{hub.base}/metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    rest = cs["rest"][0]
    types = {res["type"] for res in rest["resource"]}
    assert "Patient" in types and "EffectEvidenceSynthesis" not in types
    patient_caps = next(res for res in rest["resource"] if res["type"] == "Patient")
    codes = {i["code"] for i in patient_caps["interaction"]}
    assert codes == {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type"}
    listed = {p["name"]: p for p in patient_caps["searchParam"]}
    from fhir_server.search.registry import parameters_for

    official = {c for c, p in parameters_for("Patient").items() if p.type != "special"}
    assert official | {"_has"} <= set(listed)  # every parameter of the registry (and custom ones), generated from it
    assert ":exact" in listed["family"]["documentation"] and "sa eb ap" in listed["birthdate"]["documentation"]
    assert "Observation:subject" in patient_caps["searchRevInclude"]
    assert "Patient:general-practitioner" in patient_caps["searchInclude"]
    assert {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"} in \
        patient_caps["operation"]
    assert [i["code"] for i in rest["interaction"]] == ["transaction", "batch", "history-system", "search-system"]


def test_errors_are_operation_outcomes(api: httpx.Client) -> None:
    for method, url, status in [("GET", "/NotAType/1", 404), ("GET", "/Patient/x/y/z/w", 404),
                                ("POST", "/Patient/abc", 405), ("GET", "/EffectEvidenceSynthesis/1", 404),
                                ("PATCH", "/Patient", 405), ("GET", "/NotAType", 404)]:
        r = api.request(method, url)
        assert r.status_code == status, (method, url, r.status_code)
        assert r.json()["resourceType"] == "OperationOutcome"
        assert r.headers["content-type"].startswith("application/fhir+json")


def test_mongo_operator_keys_are_data(api: httpx.Client) -> None:
    r = api.post("/Patient", json={"resourceType": "Patient", "$where": "1", "name.family": "x"})
    assert r.status_code == 400
    assert {tuple(i["expression"]) for i in r.json()["issue"]} == {("Patient.$where",), ("Patient.name.family",)}
    cond = api.post("/Patient", json=patient(), headers={"If-None-Exist": "identifier[$ne]=x"})
    assert cond.status_code == 400
    weird = api.post("/Patient", json=patient(), headers={"If-None-Exist": "identifier=$ne"})
    assert weird.status_code == 201  # a value is a value, never an operator


def test_patient_data_never_reaches_the_log(api: httpx.Client, hub: Hub) -> None:
    mrn, family = f"MRN{new_id()}", f"欧阳{new_id()[:6]}"
    body = patient(family=family, identifier=[{"system": "urn:mrn", "value": mrn}])
    created = api.post("/Patient", json=body, headers={"If-None-Exist": f"identifier=urn:mrn|{mrn}"})
    rid = created.json()["id"]
    api.get(f"/Patient/{rid}", params={"_elements": "name"})
    api.put("/Patient", params={"identifier": f"urn:mrn|{mrn}"}, json=body)
    api.post("/Patient", json={**body, "birthDate": f"bad-{mrn}"})  # a validation error about the value
    time.sleep(0.5)
    log = hub.log()
    assert "/{rtype}/{rid}" in log  # the access log is on and names route templates
    for secret in (rid, mrn, family):
        assert secret not in log


def test_search_by_identifier_and_id_with_paging(api: httpx.Client, hub: Hub) -> None:
    mrn = new_id()
    ids = sorted(api.post("/Patient", json=patient(identifier=[{"system": "urn:mrn", "value": mrn},
                                                             {"system": "urn:card", "value": f"{mrn}-{i}"}])
                          ).json()["id"] for i in range(3))
    found = api.get("/Patient", params={"identifier": f"urn:mrn|{mrn}"}).json()
    assert found["type"] == "searchset" and found["total"] == 3
    assert sorted(e["resource"]["id"] for e in found["entry"]) == ids
    assert all(e["search"]["mode"] == "match" and e["fullUrl"].endswith(e["resource"]["id"]) for e in found["entry"])
    assert api.get("/Patient", params={"identifier": mrn}).json()["total"] == 3  # any system
    assert api.get("/Patient", params={"identifier": f"urn:other|{mrn}"}).json()["total"] == 0
    one = api.get("/Patient", params={"identifier": f"urn:card|{mrn}-1,urn:card|{mrn}-2"}).json()
    assert one["total"] == 2  # comma = OR
    both = api.get("/Patient", params=[("identifier", f"urn:mrn|{mrn}"), ("_id", ids[0])]).json()
    assert [e["resource"]["id"] for e in both["entry"]] == [ids[0]]  # repeated parameters = AND
    seen: list[str] = []
    url: str | None = f"/Patient?identifier=urn:mrn|{mrn}&_count=1"
    while url:
        page = api.get(url.replace(hub.base, "")).json()
        assert len(page["entry"]) <= 1
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert seen == ids  # every match once, in a stable order
    # a cursor names the index layout its position is in: one from before an upgrade that changed the layout
    # would skip or repeat matches, so it is refused and the client told to start again; so is a broken one
    first = api.get("/Patient", params={"identifier": f"urn:mrn|{mrn}", "_count": 1}).json()
    cursor = next(x["url"] for x in first["link"] if x["relation"] == "next").split("_cursor=")[1].split("&")[0]
    layout, _, position = cursor.partition(".")
    assert layout.isdigit() and position
    again = api.get("/Patient", params={"identifier": f"urn:mrn|{mrn}", "_count": 1, "_cursor": cursor}).json()
    assert [e["resource"]["id"] for e in again["entry"]] == ids[1:2]
    for bad, says in ((f"{int(layout) - 1}.{position}", "before the hub's search index changed"),
                      (position, "not valid"), (f"{layout}.{position[:len(position) // 2]}", "not valid")):
        refused = api.get("/Patient", params={"identifier": f"urn:mrn|{mrn}", "_cursor": bad})
        outcome = refused.json()
        assert refused.status_code == 400 and outcome["resourceType"] == "OperationOutcome", refused.text
        assert says in outcome["issue"][0]["diagnostics"] and outcome["issue"][0]["expression"] == ["_cursor"]
    api.delete(f"/Patient/{ids[1]}")
    assert api.get("/Patient", params={"identifier": f"urn:mrn|{mrn}"}).json()["total"] == 2  # deleted: gone
    summary = api.get("/Patient", params={"_id": ids[0], "_elements": "gender"}).json()
    assert set(summary["entry"][0]["resource"]) == {"resourceType", "id", "meta", "gender"}
    lenient = api.get("/Patient", params={"_id": ids[0], "no-such-parameter": "1"}).json()
    assert [e["resource"]["id"] for e in lenient["entry"] if e["search"]["mode"] == "match"] == [ids[0]]
    outcome = [e["resource"] for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "no-such-parameter" in outcome[0]["issue"][0]["diagnostics"]  # ignored, and said so
    strict = api.get("/Patient", params={"_id": ids[0], "no-such-parameter": "1", "also-unknown:exact": "x"},
                     headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "no-such-parameter" in strict.json()["issue"][0]["diagnostics"]
    # each refused parameter is named where it is, as sent (the modifier too)
    assert [i["expression"] for i in strict.json()["issue"]] == [["no-such-parameter"], ["also-unknown:exact"]]
    with hub.client("system/Patient.r") as reader:  # search needs s
        assert reader.get("/Patient", params={"_id": ids[0]}).status_code == 403
