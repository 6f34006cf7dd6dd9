"""Formats (JSON, XML, negotiation), body limits and validation errors with FHIRPath locations."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import BODY_CAP, Hub

XML_PATIENT = """<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <identifier><system value="urn:mrn"/><value value="{mrn}"/></identifier>
  <name><family value="张"/><given value="伟"/></name>
  <gender value="female"/>
  <birthDate value="1980-12-24"/>
</Patient>"""


def test_xml_create_and_round_trip(api: httpx.Client) -> None:
    mrn = uuid.uuid4().hex
    r = api.post("/Patient", content=XML_PATIENT.format(mrn=mrn).encode(),
                 headers={"Content-Type": "application/fhir+xml", "Accept": "application/fhir+xml"})
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/fhir+xml")
    assert "<family value=\"张\"/>" in r.text
    rid = r.headers["location"].split("/")[-3]
    as_json = api.get(f"/Patient/{rid}").json()
    assert as_json["name"] == [{"family": "张", "given": ["伟"]}]
    assert as_json["identifier"] == [{"system": "urn:mrn", "value": mrn}]
    as_xml = api.get(f"/Patient/{rid}", params={"_format": "xml"}).content
    back = api.put(f"/Patient/{rid}", content=as_xml, headers={"Content-Type": "application/fhir+xml",
                                                               "Accept": "application/fhir+json"})
    assert back.status_code == 200
    again = back.json()
    for key in ("name", "identifier", "gender", "birthDate"):
        assert again[key] == as_json[key]


def test_format_negotiation(api: httpx.Client) -> None:
    rid = api.post("/Basic", json={"resourceType": "Basic", "code": {"text": "x"}}).json()["id"]
    for accept, media in [("application/fhir+xml", "xml"), ("application/xml", "xml"), ("text/html, */*", "json"),
                          ("application/fhir+json;q=0.5, application/fhir+xml;q=0.9", "xml")]:
        r = api.get(f"/Basic/{rid}", headers={"Accept": accept})
        assert r.status_code == 200 and media in r.headers["content-type"], accept
    assert "json" in api.get(f"/Basic/{rid}", params={"_format": "json"},
                             headers={"Accept": "application/fhir+xml"}).headers["content-type"]
    bad = api.get(f"/Basic/{rid}", headers={"Accept": "text/csv"})
    assert bad.status_code == 406 and bad.json()["resourceType"] == "OperationOutcome"
    assert api.get(f"/Basic/{rid}", params={"_format": "turtle"}).status_code == 406
    unsupported = api.post("/Basic", content=b"a,b", headers={"Content-Type": "text/csv"})
    assert unsupported.status_code == 415
    xml_error = api.get("/Basic/does-not-exist", params={"_format": "xml"})
    assert xml_error.status_code == 404 and "<OperationOutcome" in xml_error.text


def test_xml_entities_are_refused(api: httpx.Client) -> None:
    xxe = (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&x;"/></name></Patient>')
    as_json = {"Content-Type": "application/fhir+xml", "Accept": "application/fhir+json"}
    r = api.post("/Patient", content=xxe, headers=as_json)
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "security"
    assert "root:" not in r.text
    broken = api.post("/Patient", content=b"<Patient", headers=as_json)
    assert broken.status_code == 400
    foreign = api.post("/Patient", content=b"<Patient/>", headers=as_json)
    assert foreign.status_code == 400


def test_body_cap_gives_413(api: httpx.Client) -> None:
    big = {"resourceType": "Basic", "code": {"text": "x" * (BODY_CAP + 10)}}
    r = api.post("/Basic", json=big)
    assert r.status_code == 413 and r.json()["issue"][0]["code"] == "too-costly"

    def chunks():  # no Content-Length: the cap holds while streaming
        for _ in range(BODY_CAP // 1_000_000 + 2):
            yield b" " * 1_000_000

    streamed = api.post("/Basic", content=chunks())
    assert streamed.status_code == 413


def test_invalid_json_and_empty_body(api: httpx.Client) -> None:
    r = api.post("/Patient", content=b'{"resourceType": "Patient",')
    assert r.status_code == 400 and "JSON" in r.json()["issue"][0]["diagnostics"]
    assert api.post("/Patient", content=b"").status_code == 400
    assert api.post("/Patient", content=b"[1,2]").status_code == 400
    assert api.post("/Patient", json={"name": []}).json()["issue"][0]["expression"] == ["resourceType"]


def test_validation_lists_every_problem_with_fhirpath(api: httpx.Client) -> None:
    bad = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": 5}]},
           "valueQuantity": {"value": "abc"}, "effectiveDateTime": "2026-13-45", "bogus": 1}
    r = api.post("/Observation", json=bad)
    assert r.status_code == 400
    issues = r.json()["issue"]
    where = {e for i in issues for e in i.get("expression", [])}
    assert {"Observation.code.coding[0].system", "Observation.valueQuantity.value",
            "Observation.effectiveDateTime", "Observation.bogus"} <= where
    assert all(i["severity"] == "error" for i in issues)
    missing = api.post("/Observation", json={"resourceType": "Observation", "status": "final"})
    assert missing.status_code == 400
    assert "Observation.code" in {e for i in missing.json()["issue"] for e in i.get("expression", [])}


def test_codes_outside_required_value_sets_are_refused_where_they_are(api: httpx.Client) -> None:
    """R4 required bindings: gender "M" is no gender a search for male would find; a status nobody knows is no
    status. Every such code is named by FHIRPath, in nested backbones, datatypes and contained resources."""
    bad = {"resourceType": "Patient", "gender": "zq-secret", "contact": [{"gender": "female"}, {"gender": "F"}],
           "name": [{"use": "official", "family": "王"}, {"use": "nick"}], "telecom": [{"system": "wechat"}],
           "contained": [{"resourceType": "Organization", "id": "o", "telecom": [{"system": "pigeon"}]}]}
    r = api.post("/Patient", json=bad)
    assert r.status_code == 400
    issues = r.json()["issue"]
    assert {i["expression"][0] for i in issues} == {
        "Patient.gender", "Patient.contact[1].gender", "Patient.name[1].use", "Patient.telecom[0].system",
        "Patient.contained[0].telecom[0].system"}
    assert all(i["code"] == "code-invalid" for i in issues)
    assert "administrative-gender (female | male | other | unknown)" in issues[0]["diagnostics"]
    assert "zq-secret" not in r.text  # the value sent is patient data: named by where it is, not echoed
    questionnaire = {"resourceType": "Questionnaire", "status": "active", "item": [
        {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "free-text"}]}]}
    r = api.post("/Questionnaire", json=questionnaire)  # item.item repeats item (contentReference)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Questionnaire.item[0].item[0].type"]
    observation = {"resourceType": "Observation", "status": "finalised", "code": {"text": "Hb"},
                   "valueQuantity": {"value": 5, "comparator": "~"}}
    r = api.post("/Observation", json=observation)
    assert {i["expression"][0] for i in r.json()["issue"]} == {"Observation.status",
                                                               "Observation.valueQuantity.comparator"}
    good = {**observation, "status": "final", "valueQuantity": {"value": 5, "comparator": "<"}}
    assert api.post("/Observation", json=good).status_code == 201
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "M"}, "request": {"method": "POST", "url": "Patient"}}]}
    r = api.post("", json=transaction)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.gender"]
    document = {"resourceType": "Bundle", "type": "collection", "entry": [  # a stored Bundle: its entries too
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "gender": "male"}},
        {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Encounter", "status": "done", "class": {"code": "x"}}}]}
    r = api.post("/Bundle", json=document)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.status"]


def test_validate_operation_does_not_store(api: httpx.Client, hub: Hub) -> None:
    good = {"resourceType": "Patient", "id": "v1", "name": [{"family": "王"}]}
    r = api.post("/Patient/$validate", json=good)
    assert r.status_code == 200 and r.json()["issue"][0]["severity"] == "information"
    bad = api.post("/Patient/$validate", json={"resourceType": "Patient", "birthDate": "x"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["Patient.birthDate"]
    params = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": good}]}
    assert api.post("/Patient/$validate", json=params).status_code == 200
    mismatch = api.post("/Patient/other/$validate", json=good)
    assert mismatch.status_code == 400
    assert api.get("/Patient/v1").status_code == 404


def test_r4_only_types_are_refused_clearly(api: httpx.Client) -> None:
    r = api.post("/MedicinalProduct", json={"resourceType": "MedicinalProduct"})
    assert r.status_code == 404
    assert "R4" in r.json()["issue"][0]["diagnostics"]


def test_xml_for_bundles_outcomes_and_capabilities(api: httpx.Client, hub: Hub) -> None:
    rid = api.post("/Basic", json={"resourceType": "Basic", "code": {"text": "xml"}}).json()["id"]
    history = api.get(f"/Basic/{rid}/_history", params={"_format": "xml"})
    assert history.status_code == 200 and history.text.count("<Bundle") == 1 and "<type value=\"history\"/>" in (
        history.text)
    metadata = httpx.get(f"{hub.base}/metadata", params={"_format": "xml"})
    assert metadata.status_code == 200 and "<CapabilityStatement" in metadata.text
    assert '<fhirVersion value="4.0.1"/>' in metadata.text
    outcome = api.post("/Patient", json={"resourceType": "Patient", "birthDate": "x"},
                       headers={"Accept": "application/fhir+xml"})
    assert outcome.status_code == 400 and "<OperationOutcome" in outcome.text
    assert '<expression value="Patient.birthDate"/>' in outcome.text


def test_without_accept_the_answer_uses_the_request_format(api: httpx.Client) -> None:
    xml = XML_PATIENT.format(mrn=uuid.uuid4().hex).encode()
    r = api.post("/Patient", content=xml, headers={"Content-Type": "application/fhir+xml", "Accept": "*/*"})
    assert r.status_code == 201 and r.headers["content-type"].startswith("application/fhir+xml")
    bad = api.post("/Patient", content=b'<Patient xmlns="http://hl7.org/fhir"><birthDate value="x"/></Patient>',
                   headers={"Content-Type": "application/fhir+xml"})
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("application/fhir+xml")
    as_json = api.post("/Patient", content=xml, headers={"Content-Type": "application/fhir+xml",
                                                         "Accept": "application/fhir+json"})
    assert as_json.headers["content-type"].startswith("application/fhir+json")
