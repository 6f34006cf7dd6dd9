"""Typed index entries of search parameters, on hand-made resources and on every official example."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

from fhir_server.search.entries import ANY_SYSTEM, date_range, entries_for, normalize_string
from tests.conftest import valid_examples

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_patient_entries() -> None:
    patient = {
        "resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": "2026-11-25T08:00:00.000+08:00",
                                                     "tag": [{"system": "urn:t", "code": "vip"}]},
        "identifier": [{"system": "urn:mrn", "value": "A-1"}, {"value": "nosys"}],
        "name": [{"family": "王", "given": ["小东"], "text": "王小东"}, {"family": "Müller", "given": ["Zoë"]}],
        "gender": "male", "birthDate": "1970-03", "active": True,
        "generalPractitioner": [{"reference": "Practitioner/dr1"}],
        "address": [{"city": "上海", "district": "徐汇区", "line": ["漕溪北路 1 号"]}],
        "telecom": [{"system": "phone", "value": "+86 21 1234"}],
    }
    e = entries_for(patient, zone=SHANGHAI)
    assert e["family"] == ["muller", "王"]
    assert "小东" in e["given"] and "zoe" in e["given"]
    assert {"王小东", "王", "小东", "muller", "zoe"} <= set(e["name"])
    assert set(e["identifier"]) == {"urn:mrn|A-1", f"{ANY_SYSTEM}|A-1", "|nosys", f"{ANY_SYSTEM}|nosys"}
    assert "http://hl7.org/fhir/administrative-gender|male" not in e["gender"]  # a bare code has no system
    assert "|male" in e["gender"] and f"{ANY_SYSTEM}|true" in e["active"]
    assert e["general-practitioner"] == ["Practitioner/dr1"]
    assert "上海" in e["address-city"] and "漕溪北路 1 号" in e["address"]
    assert f"{ANY_SYSTEM}|+86 21 1234" in e["phone"]
    assert set(e["_tag"]) == {"urn:t|vip", f"{ANY_SYSTEM}|vip"}
    assert set(e["_id"]) == {"|p1", f"{ANY_SYSTEM}|p1"}
    low, high = e["birthdate"][0]
    assert (low, high) == date_range("1970-03", SHANGHAI)


def test_date_ranges_follow_precision_and_zone() -> None:
    day = date_range("2026-11-25", SHANGHAI)
    assert day is not None and day[1] - day[0] == 86_400_000_000 - 1
    assert date_range("2026-11-25T00:00:00+08:00", SHANGHAI) == (day[0], day[0] + 999_999)
    assert date_range("2026-11-25T00:00:00", SHANGHAI) == date_range("2026-11-24T16:00:00Z", SHANGHAI)
    year = date_range("2024", SHANGHAI)
    assert year is not None and year[1] - year[0] == 366 * 86_400_000_000 - 1  # leap year
    assert date_range("not a date", SHANGHAI) is None


def test_observation_entries() -> None:
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2039-6"}], "text": "CEA"},
           "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2026-11-01"},
           "valueQuantity": {"value": 4.2, "unit": "ng/mL", "system": "http://unitsofmeasure.org", "code": "ng/mL"}}
    e = entries_for(obs, zone=SHANGHAI)
    assert e["code"] == [f"{ANY_SYSTEM}|2039-6", "http://loinc.org|2039-6"]
    assert e["subject"] == ["Patient/p1"] and e["patient"] == ["Patient/p1"]
    assert e["value-quantity"] == [{"v": 4.2, "s": "http://unitsofmeasure.org", "c": "ng/mL", "u": "ng/mL"}]
    assert e["date"][0][1] == 2**62  # an open Period end is unbounded
    group_subject = {**obs, "subject": {"reference": "Group/g1"}}
    assert "patient" not in entries_for(group_subject, zone=SHANGHAI)  # where(resolve() is Patient)


def test_normalize_string() -> None:
    assert normalize_string("  Ångström ") == "angstrom"
    assert normalize_string("王小东") == "王小东"
    assert normalize_string("ＡＢＣ") == "abc"  # full-width forms, common in Chinese input


def test_every_valid_official_example_indexes() -> None:
    count = with_entries = values = 0
    for resource in valid_examples():
        entries = entries_for(resource, zone=SHANGHAI)
        json.dumps(entries)  # storable as a document
        count += 1
        with_entries += bool(entries)
        values += sum(len(v) for v in entries.values())
    print(f"\nindex entries: {count} valid examples, {with_entries} with entries, {values} values")
    assert count > 5000 and with_entries == count and values > 50_000
