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
