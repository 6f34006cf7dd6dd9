"""A fast, deterministic generator of union-like clinical data: Patients (Chinese names, MRNs of member
hospitals), ServiceRequests, Observations with quantities and DiagnosticReports that cite them.

``patient_group(i)`` returns the resources of patient ``i`` as transaction entries with fixed ids, so a data
set is a pure function of its size (tests and benchmarks compute expected results from the same data).
"""

from __future__ import annotations

import random
from typing import Any

FAMILIES = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "高"]
GIVENS = ["小东", "伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "艳", "勇", "杰", "娟", "涛",
          "明"]
LATIN = ["Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou", "Xu", "Sun", "Ma", "Zhu", "Hu",
         "Guo", "He", "Gao"]
CITIES = ["上海", "南京", "杭州", "苏州", "无锡", "宁波", "常州", "嘉兴"]
HOSPITALS = 15
SR_STATUS = ["active", "completed", "draft", "revoked", "on-hold"]
SR_CODES = [("http://loinc.org", "24627-2", "CT Chest"), ("http://loinc.org", "36643-5", "XR Chest"),
            ("urn:medunion:order", "BX-01", "Biopsy"), ("http://snomed.info/sct", "77477000", "CT scan")]
OBS_CODES = [("http://loinc.org", "718-7", "Hemoglobin", "g/dL", 8.0, 18.0),
             ("http://loinc.org", "2345-7", "Glucose", "mmol/L", 3.0, 15.0),
             ("http://loinc.org", "6690-2", "Leukocytes", "10*9/L", 1.0, 20.0)]
DR_STATUS = ["final", "preliminary", "amended"]


def mrn_system(hospital: int) -> str:
    return f"https://h{hospital:02d}.medunion.example.cn/mrn"


def patient_id(i: int) -> str:
    return f"p{i:07d}"


def patient_group(i: int, *, observations: int = 2) -> list[dict[str, Any]]:
    """Patient ``i`` with one ServiceRequest, ``observations`` Observations and a DiagnosticReport on them."""
    rng = random.Random(i)
    pid = patient_id(i)
    fam = rng.randrange(len(FAMILIES))
    hospital = i % HOSPITALS
    year = 1930 + rng.randrange(90)
    birth = f"{year}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    given = GIVENS[rng.randrange(len(GIVENS))]
    patient: dict[str, Any] = {
        "resourceType": "Patient", "id": pid,
        "identifier": [{"system": mrn_system(hospital), "value": f"MRN{i:08d}"},
                       {"system": "urn:oid:2.16.156.10011.1.1", "value": f"3101{i:014d}"}],
        "active": rng.random() > 0.1,
        "name": [{"use": "official", "family": FAMILIES[fam], "given": [given], "text": FAMILIES[fam] + given},
                 {"use": "usual", "family": LATIN[fam], "given": [f"Xiao{i % 7}"]}],
        "gender": rng.choice(["male", "female"]),
        "birthDate": birth,
        "address": [{"city": rng.choice(CITIES), "country": "CN"}],
        "managingOrganization": {"reference": f"Organization/h{hospital:02d}"},
    }
    day = f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    system, code, display = rng.choice(SR_CODES)
    request = {
        "resourceType": "ServiceRequest", "id": f"sr{i:07d}", "status": rng.choice(SR_STATUS), "intent": "order",
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{pid}"}, "authoredOn": f"{day}T{rng.randrange(8, 18):02d}:15:00+08:00",
        "priority": rng.choice(["routine", "urgent"]),
    }
    out = [patient, request]
    results = []
    for k in range(observations):
        system, code, display, unit, low, high = OBS_CODES[(i + k) % len(OBS_CODES)]
        value = round(low + rng.random() * (high - low), 1)
        oid = f"ob{i:07d}{k}"
        out.append({
            "resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": system, "code": code, "display": display}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"{day}T09:{k:02d}:00+08:00",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            "basedOn": [{"reference": f"ServiceRequest/sr{i:07d}"}],
        })
        results.append({"reference": f"Observation/{oid}"})
    out.append({
        "resourceType": "DiagnosticReport", "id": f"dr{i:07d}", "status": rng.choice(DR_STATUS),
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC panel"}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"{day}T09:00:00+08:00",
        "issued": f"{day}T16:00:00+08:00", "result": results,
        "basedOn": [{"reference": f"ServiceRequest/sr{i:07d}"}],
    })
    return out


def organizations() -> list[dict[str, Any]]:
    return [{"resourceType": "Organization", "id": f"h{h:02d}", "name": f"成员医院 {h:02d}",
             "identifier": [{"system": "urn:medunion:hospital", "value": f"H{h:02d}"}]} for h in range(HOSPITALS)]


def transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle that PUTs each resource at its id (idempotent: loading twice is harmless)."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}
