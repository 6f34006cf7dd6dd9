"""End to end with a real FHIR client library from PyPI (fhirpy), as an integrator would use the hub."""

from __future__ import annotations

import uuid

from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.conftest import Hub


async def test_fhirpy_crud(hub: Hub) -> None:
    client = AsyncFHIRClient(hub.base, authorization=f"Bearer {hub.token()}")
    mrn = uuid.uuid4().hex
    patient = client.resource("Patient", identifier=[{"system": "urn:mrn", "value": mrn}],
                              name=[{"family": "陈", "given": ["静"]}], gender="female", birthDate="1975-05-05")
    await patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"

    fetched = await client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "陈"
    by_mrn = await client.resources("Patient").search(identifier=f"urn:mrn|{mrn}").fetch_all()
    assert [p.id for p in by_mrn] == [patient.id]

    fetched["gender"] = "other"
    await fetched.save()
    assert fetched["meta"]["versionId"] == "2"
    again = await client.reference("Patient", patient.id).to_resource()
    assert again["gender"] == "other"

    obs = client.resource("Observation", status="final", code={"text": "CEA"},
                          subject=patient.to_reference(), valueQuantity={"value": 4.2, "unit": "ng/mL"})
    await obs.save()
    assert (await client.reference("Observation", obs.id).to_resource())["subject"]["reference"] == (
        f"Patient/{patient.id}")

    bad = client.resource("Observation", status="final")  # code is required
    try:
        await bad.save()
        raise AssertionError("an invalid Observation was accepted")
    except OperationOutcome as exc:
        assert "Observation.code" in str(exc)

    await fetched.delete()
    try:
        await client.reference("Patient", patient.id).to_resource()
        raise AssertionError("a deleted Patient was read")
    except (ResourceNotFound, OperationOutcome) as exc:
        assert "deleted" in str(exc) or isinstance(exc, ResourceNotFound)
