"""Search-parameter expressions: the compiled fast extractors agree with fhirpathpy on every official example."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from typing import Any

from fhir_server.model.types import SUPPORTED_TYPES
from fhir_server.search.paths import compile_path, is_fast
from fhir_server.search.registry import parameters_for
from tests.conftest import valid_examples


def _normal(values: list[Any]) -> list[str]:
    def plain(v: Any) -> Any:  # fhirpathpy reads decimals as Decimal; JSON parsing gives float or int
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, Decimal | float | int) and not isinstance(v, bool):
            return float(v)
        if hasattr(v, "__dict__"):  # fhirpathpy date/time/quantity objects
            return str(v)
        return v

    return sorted(json.dumps(plain(v), sort_keys=True, default=str, ensure_ascii=False) for v in values)


def test_fast_extractors_agree_with_fhirpathpy_on_all_examples() -> None:
    stats: Counter[str] = Counter()
    disagreements: list[str] = []
    for resource in valid_examples():  # only what the hub would store is ever indexed
        rtype = resource["resourceType"]
        for code, definition in parameters_for(rtype).items():
            for part in definition.paths:
                if not is_fast(part.expression):
                    stats["general only"] += 1
                    continue
                fast = _normal(compile_path(part.expression)(resource))
                try:
                    general = _normal(compile_path(part.expression, general=True)(resource))
                except Exception as exc:  # the engine itself fails: not a disagreement of ours
                    stats[f"fhirpathpy error {type(exc).__name__}"] += 1
                    continue
                stats["compared"] += 1
                stats["non-empty"] += bool(fast)
                if fast != general:
                    disagreements.append(f"{rtype}/{resource.get('id')} {code} {part.expression}")
    print(f"\nsearch paths on official examples: {dict(stats)}")
    assert stats["compared"] > 50_000 and stats["non-empty"] > 10_000
    kinds = Counter(d.split(" ", 2)[2] for d in disagreements)
    assert not disagreements, kinds.most_common(30)


def test_registry_covers_the_official_parameters() -> None:
    patient = parameters_for("Patient")
    assert {"name", "family", "given", "birthdate", "identifier", "gender", "general-practitioner", "_id",
            "_lastUpdated", "_tag", "_profile", "_security", "_source"} <= set(patient)
    assert patient["birthdate"].type == "date" and patient["identifier"].type == "token"
    subject = parameters_for("Observation")["patient"]
    assert subject.type == "reference" and subject.paths[0].resolve_is == "Patient"
    assert [p.expression for p in parameters_for("Observation")["value-quantity"].paths] == [
        "(Observation.value as Quantity)", "(Observation.value as SampledData)"]
    assert len(parameters_for("Observation")["code-value-quantity"].components) == 2
    assert sum(len(parameters_for(t)) for t in SUPPORTED_TYPES) > 2400


def test_where_and_as_paths_agree_with_fhirpathpy_on_edge_cases() -> None:
    """Compiled ``where(field='literal')`` and ``.as(T)`` paths, on what the official examples do not show."""
    patients = [
        {"resourceType": "Patient", "telecom": [
            {"system": "phone", "value": "1"}, {"system": "PHONE", "value": "2"}, {"value": "3"},
            {"system": "email", "value": "4"}, {"system": "phone", "value": "5", "use": "home"}]},
        {"resourceType": "Patient", "telecom": [{"system": "email", "value": "x@example.org"}]},
        {"resourceType": "Patient"},
        {"resourceType": "Patient", "name": [
            {"use": "official", "given": ["小东", "Xiao"]}, {"use": "usual", "given": ["Dong"]},
            {"given": ["none"]}, {"use": "official", "family": "王"}]},
        {"resourceType": "Observation", "telecom": [{"system": "phone", "value": "6"}]},  # another type
    ]
    expressions = ["Patient.telecom.where(system='phone')", "Patient.telecom.where(system='phone').value",
                   "Patient.telecom.where(system='fax')", "Patient.name.where(use='official').given",
                   "Patient.name.where(use='official').where(family='王')"]
    conditions = [{"resourceType": "Condition", "onsetAge": {"value": 52, "unit": "a"}},
                  {"resourceType": "Condition", "onsetString": "childhood"},
                  {"resourceType": "Condition", "onsetDateTime": "2020-01-02"}]
    observations = [{"resourceType": "Observation",
                     "valueCodeableConcept": {"text": "阳性", "coding": [{"code": "x"}]}},
                    {"resourceType": "Observation", "valueCodeableConcept": {"coding": [{"code": "x"}]}},
                    {"resourceType": "Observation", "valueString": "text"},
                    {"resourceType": "Observation", "valueQuantity": {"value": 1}, "text": {"status": "generated"}},
                    {"resourceType": "Observation", "component": [{"valueCodeableConcept": {"text": "c"}}]}]
    compared = non_empty = 0
    for resources, paths in ((patients, expressions),
                             (conditions, ["Condition.onset.as(Age)", "Condition.onset.as(string)",
                                           "Condition.onset.as(dateTime)", "Condition.onset.as(Period)"]),
                             (observations, ["(Observation.value as CodeableConcept).text",
                                             "(Observation.value as CodeableConcept).coding.code",
                                             "(Observation.component.value as CodeableConcept).text"])):
        for expression in paths:
            assert is_fast(expression), expression
            for resource in resources:
                fast = _normal(compile_path(expression)(resource))
                assert fast == _normal(compile_path(expression, general=True)(resource)), (expression, resource)
                compared += 1
                non_empty += bool(fast)
    assert compared == 52 and non_empty == 11
