"""Bearer tokens and SMART scopes: 401 for bad credentials, 403 for what the scopes do not allow."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from fhir_server.auth.scopes import parse_scopes
from fhir_server.auth.tokens import mint_token
from tests.conftest import Hub


def _get(hub: Hub, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{hub.base}{path}", headers=headers)


def test_open_endpoints(hub: Hub) -> None:
    assert httpx.get(f"{hub.base}/metadata").status_code == 200
    smart = httpx.get(f"{hub.base}/.well-known/smart-configuration")
    assert smart.status_code == 200 and "permission-v2" in smart.json()["capabilities"]
    root = hub.base.removesuffix("/fhir")
    assert httpx.get(f"{root}/.well-known/smart-configuration").status_code == 200


def test_missing_and_malformed_tokens(hub: Hub) -> None:
    r = _get(hub, "/Patient/x", None)
    assert r.status_code == 401 and r.json()["issue"][0]["code"] == "login"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert _get(hub, "/Patient/x", "not-a-jwt").status_code == 401
    basic = httpx.get(f"{hub.base}/Patient/x", headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 401


def test_expired_wrong_audience_wrong_issuer(hub: Hub) -> None:
    settings = hub.settings
    expired = mint_token(settings, subject="s", scope="system/*.cruds", lifetime_seconds=-120)
    r = _get(hub, "/Patient/x", expired)
    assert r.status_code == 401 and "expired" in r.json()["issue"][0]["diagnostics"]
    wrong_aud = mint_token(settings, subject="s", scope="system/*.cruds", audience="http://elsewhere/fhir")
    r = _get(hub, "/Patient/x", wrong_aud)
    assert r.status_code == 401 and "aud" in r.json()["issue"][0]["diagnostics"]
    other_issuer = settings.model_copy(update={"auth_issuer": "someone-else"})
    r = _get(hub, "/Patient/x", mint_token(other_issuer, subject="s", scope="system/*.cruds"))
    assert r.status_code == 401


def test_unknown_key_and_algorithms(hub: Hub) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": hub.settings.auth_issuer, "aud": hub.settings.audience, "sub": "x", "scope": "system/*.cruds",
              "exp": int(time.time()) + 60}
    kid = json.loads((hub.settings.keys_dir / "jwks.json").read_text())["keys"][0]["kid"]
    forged = jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": kid})
    assert _get(hub, "/Patient/x", forged).status_code == 401
    hs = jwt.encode(claims, "secret-secret-secret-secret-secret!", algorithm="HS256")
    assert _get(hub, "/Patient/x", hs).status_code == 401  # no HS256 secret configured
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert _get(hub, "/Patient/x", unsigned).status_code == 401


def test_scope_denials(hub: Hub) -> None:
    with hub.client("system/Patient.rs") as reader:
        denied = reader.post("/Patient", json={"resourceType": "Patient"})
        assert denied.status_code == 403 and denied.json()["issue"][0]["code"] == "forbidden"
        assert reader.get(f"/Patient/{uuid.uuid4().hex}").status_code == 404  # allowed, just absent
        assert reader.get(f"/Observation/{uuid.uuid4().hex}").status_code == 403
        assert reader.get("/Patient/_history").status_code == 200
        assert reader.get("/_history").status_code == 403
    with hub.client("user/Observation.write") as writer:  # v1 syntax: write = c u d
        created = writer.post("/Observation", json={"resourceType": "Observation", "status": "final",
                                                     "code": {"text": "x"}})
        assert created.status_code == 201
        oid = created.json()["id"]
        assert writer.get(f"/Observation/{oid}").status_code == 403
        assert writer.delete(f"/Observation/{oid}").status_code == 204
    with hub.client("system/Patient.r") as read_only:
        # create-on-update needs c as well as u; conditional create needs s as well as c
        assert read_only.put("/Patient/abc", json={"resourceType": "Patient", "id": "abc"}).status_code == 403
    with hub.client("system/Patient.c") as creator:
        r = creator.post("/Patient", json={"resourceType": "Patient"}, headers={"If-None-Exist": "identifier=x"})
        assert r.status_code == 403
    with hub.client("openid profile") as nothing:
        assert nothing.get("/Patient/x").status_code == 403


def test_patient_scopes_keep_to_the_patients_compartment(hub: Hub, api: httpx.Client) -> None:
    mine = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    other = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]

    def obs(pid: str, text: str = "CEA") -> dict:
        return {"resourceType": "Observation", "status": "final", "code": {"text": text},
                "subject": {"reference": f"Patient/{pid}"}}

    theirs = api.post("/Observation", json=obs(other)).json()["id"]
    with hub.client("patient/*.cruds", patient=mine) as app:
        assert app.get(f"/Patient/{mine}").status_code == 200
        assert app.get(f"/Patient/{other}").status_code == 403
        assert app.get(f"/Observation/{theirs}").status_code == 403
        assert app.get(f"/Observation/{theirs}/_history/1").status_code == 403
        assert app.get(f"/Observation/{theirs}/_history").status_code == 403
        created = app.post("/Observation", json=obs(mine))
        assert created.status_code == 201
        own = created.json()["id"]
        assert app.get(f"/Observation/{own}").status_code == 200
        assert app.post("/Observation", json=obs(other)).status_code == 403  # not for another patient
        moved = app.put(f"/Observation/{own}", json={**obs(other), "id": own})
        assert moved.status_code == 403  # cannot move a resource out of the compartment
        hijack = app.put(f"/Observation/{theirs}", json={**obs(mine), "id": theirs})
        assert hijack.status_code == 403  # nor take one in from another patient
        assert app.put(f"/Observation/{own}", json={**obs(mine, "AFP"), "id": own}).status_code == 200
        assert len(app.get(f"/Observation/{own}/_history").json()["entry"]) == 2
        assert app.get("/Observation/_history").status_code == 403  # needs compartment search
        assert app.post("/Observation", json=obs(mine),
                        headers={"If-None-Exist": "identifier=x"}).status_code == 403
        tx = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"request": {"method": "POST", "url": "Observation"}, "resource": obs(mine)}]}
        assert app.post("/", json=tx).status_code == 403
        batch = {**tx, "type": "batch"}
        assert app.post("/", json=batch).json()["entry"][0]["response"]["status"] == "201 Created"
        assert app.delete(f"/Observation/{theirs}").status_code == 403
        assert app.delete(f"/Observation/{own}").status_code == 204
    with hub.client("patient/*.rs") as no_claim:  # patient/ scopes without a patient claim reach nothing
        assert no_claim.get(f"/Patient/{mine}").status_code == 403


def test_included_resources_only_where_the_token_may_read_them(hub: Hub, api: httpx.Client) -> None:
    """``_include`` must not hand out what a read would refuse: at type level, over several types and in a
    compartment's ``*``."""
    mine = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    doctor = api.post("/Practitioner", json={"resourceType": "Practitioner"}).json()["id"]
    code = f"inc-{mine}"
    api.post("/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": code},
                                   "subject": {"reference": f"Patient/{mine}"},
                                   "performer": [{"reference": f"Practitioner/{doctor}"}]})
    include = [("_include", "Observation:subject"), ("_include", "Observation:performer"), ("code:text", code)]
    urls = ["/Observation", "", f"/Patient/{mine}/*"]

    def included(app: httpx.Client, url: str) -> list[str]:
        answer = app.get(url, params=[*include, *([("_type", "Observation")] if url != "/Observation" else [])])
        assert answer.status_code == 200, (url, answer.text)
        entries = answer.json()["entry"]
        assert [e["resource"]["resourceType"] for e in entries if e["search"]["mode"] == "match"] == ["Observation"]
        return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries
                      if e["search"]["mode"] == "include")

    with hub.client("patient/Observation.rs", patient=mine) as app:  # may read Observations only
        assert [included(app, url) for url in urls] == [[], [], []]
    with hub.client("patient/*.rs", patient=mine) as app:  # the patient, not the practitioner (outside)
        assert [included(app, url) for url in urls] == [[f"Patient/{mine}"]] * 3
    assert [included(api, url) for url in urls] == [[f"Patient/{mine}", f"Practitioner/{doctor}"]] * 3


def test_chains_has_and_conditional_references_need_search_on_the_types_they_reach(
        hub: Hub, api: httpx.Client) -> None:
    """Criteria tell about the resources they test: ``Patient?_has:Observation:…`` says who has such an
    Observation, a conditional reference ``Patient?identifier=…`` whether that patient exists."""
    mrn = f"A{uuid.uuid4().hex[:10]}"
    pid = api.post("/Patient", json={"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}],
                                     "name": [{"family": mrn}]}).json()["id"]
    api.post("/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": mrn},
                                   "subject": {"reference": f"Patient/{pid}"}})
    has = {"_has:Observation:subject:code:text": mrn}
    with hub.client("user/Patient.rs") as app:
        assert app.get("/Patient", params=has).status_code == 403
        assert app.get("", params={"_type": "Patient", **has}).status_code == 403
    with hub.client("user/Patient.rs user/Observation.rs") as app:
        assert [e["resource"]["id"] for e in app.get("/Patient", params=has).json()["entry"]] == [pid]
        everywhere = app.get("", params={"_content": mrn}).json()["entry"]  # all types: those it may search
        assert sorted(e["resource"]["resourceType"] for e in everywhere) == ["Observation", "Patient"]
        assert app.get("", params={"_content": mrn, "_type": "Patient,Organization"}).status_code == 403
        # subject targets Patient, Group, Device, Location: the chain keeps the searchable ones
        found = app.get("/Observation", params={"subject.name": mrn}).json()["entry"]
        assert [e["resource"]["code"]["text"] for e in found] == [mrn]
    with hub.client("user/Observation.rs") as app:
        assert app.get("/Observation", params={"subject:Patient.name": mrn}).status_code == 403
        assert app.get("/Observation", params={"subject.name": mrn}).status_code == 403  # no target left
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "subject": {"reference": f"Patient?identifier=urn:mrn|{mrn}"}}
    transaction = {"resourceType": "Bundle", "type": "transaction",
                   "entry": [{"resource": observation, "request": {"method": "POST", "url": "Observation"}}]}
    with hub.client("system/Observation.c") as app:
        refused = app.post("", json=transaction)
        assert refused.status_code == 403 and "Patient" in refused.text
        assert app.post("/Observation", json={**observation, "subject": {"reference": f"Patient/{pid}"}},
                        headers={"If-None-Exist": f"subject:Patient.identifier=urn:mrn|{mrn}"}).status_code == 403
    with hub.client("system/Observation.cs system/Patient.s") as app:
        assert app.post("", json=transaction).status_code == 200


def test_scope_parsing() -> None:
    grants = parse_scopes("system/Patient.cruds user/*.read patient/Observation.rs launch openid user/X.y "
                          "system/Encounter.rs?category=x")
    assert [(g.context, g.rtype, "".join(sorted(g.permissions))) for g in grants] == [
        ("system", "Patient", "cdrsu"), ("user", "*", "rs"), ("patient", "Observation", "rs")]
    assert parse_scopes("system/Patient.rc") == ()  # v2 permissions must be in c r u d s order


def test_rs256_from_a_jwks_file_and_hs256_in_development(store_uri: str, tmp_path) -> None:
    """A hub configured with an issuer's JWKS (RS256) accepts that issuer's tokens and no others."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    from tests.conftest import start_hub, stop_hub

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(RSAAlgorithm.to_jwk(key.public_key())) | {"kid": "union-idp-1", "alg": "RS256"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    secret = "development-only-shared-secret-0123456789"
    hub = start_hub(store_uri, tmp_path / "home", extra={
        "MEDUNION_JWKS_FILE": str(jwks), "MEDUNION_AUTH_ISSUER": "https://idp.medunion.example",
        "MEDUNION_JWT_HS256_SECRET": secret})
    try:
        claims = {"iss": "https://idp.medunion.example", "aud": hub.base, "sub": "dr-zhou",
                  "scope": "user/Patient.rs", "exp": int(time.time()) + 300}
        rs = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "union-idp-1"})
        assert _get(hub, f"/Patient/{uuid.uuid4().hex}", rs).status_code == 404  # accepted, patient absent
        hs = jwt.encode(claims, secret, algorithm="HS256")
        assert _get(hub, f"/Patient/{uuid.uuid4().hex}", hs).status_code == 404  # development mode only
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(claims, other, algorithm="RS256", headers={"kid": "union-idp-1"})
        assert _get(hub, "/Patient/x", forged).status_code == 401
        assert _get(hub, "/Patient/x", jwt.encode(claims, key, algorithm="RS256", headers={"kid": "nope"})
                    ).status_code == 401
    finally:
        stop_hub(hub)
