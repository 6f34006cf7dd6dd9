"""Custom SearchParameter resources take effect for new writes; $reindex brings stored resources up to date."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.conftest import Hub

EXT = "http://medunion.example.cn/fhir/StructureDefinition/referral-hospital"


def _patient(hospital: str) -> dict[str, object]:
    return {"resourceType": "Patient", "name": [{"family": "周"}],
            "extension": [{"url": EXT, "valueCode": hospital}]}


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
    made = api.post("/SearchParameter", json={
        "resourceType": "SearchParameter", "url": f"{EXT}-{code}", "name": "referralHospital", "status": "active",
        "description": "The member hospital that referred the patient to the center", "code": code,
        "base": ["Patient"], "type": "token", "expression": f"Patient.extension.where(url = '{EXT}').value"})
    assert made.status_code == 201, made.text

    after = api.post("/Patient", json=_patient(hospital)).json()["id"]
    found = api.get("/Patient", params={code: hospital}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [after]  # new writes are indexed at once

    started = api.post("/Patient/$reindex")
    assert started.status_code == 202
    status_url = started.headers["content-location"]
    assert status_url.startswith(hub.base + "/$reindex/")
    deadline = time.monotonic() + 120
    while True:
        status = {p["name"]: next(v for k, v in p.items() if k.startswith("value"))
                  for p in api.get(status_url.replace(hub.base, "")).json()["parameter"]}
        if status["status"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["status"] == "completed" and status["resourcesDone"] >= 4 and status["resourcesChanged"] >= 3
    found = api.get("/Patient", params={code: hospital, "_count": "50"}).json()
    assert sorted(e["resource"]["id"] for e in found["entry"]) == sorted([*before, after])
    assert api.get(f"/Patient/{before[0]}").json()["meta"]["versionId"] == "1"  # no new versions
    assert api.get("/$reindex/nosuchjob").status_code == 404
    with hub.client("system/Patient.rs") as reader:
        assert reader.post("/Patient/$reindex").status_code == 403
