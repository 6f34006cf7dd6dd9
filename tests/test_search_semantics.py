"""Search results against an independent brute-force evaluator (FHIR R4 search.html, section by section).

The hub answers from its index; the evaluator here reads each stored resource with fhirpathpy and applies
the search rules written out plainly, without any of the hub's search code. Data: the official R4
examples of the types below and a generated union data set (Chinese names, MRNs, orders, results).
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import random
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache
from importlib import resources as pkg_resources
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest
from fhirpathpy import evaluate
from fhirpathpy.models import models
from pymongo import MongoClient

from bench.synthetic import organizations, patient_group
from fhir_server.search.compartment import patient_compartment_params
from fhir_server.search.keys import (
    COMPARTMENT,
    INDEX_LAYOUT,
    LAYOUT_MARKER,
    SORTS_WITHIN,
    WITHIN_LAYOUT,
    within_layout,
)
from fhir_server.search.registry import parameters_for
from tests.conftest import Hub, collated, pages_both_ways, start_hub, stop_hub, valid_examples

ZONE = ZoneInfo("Asia/Shanghai")
TYPES = ["Patient", "Observation", "Encounter", "Condition", "Procedure", "MedicationRequest", "DiagnosticReport",
         "ServiceRequest", "Practitioner", "Organization", "AllergyIntolerance", "Immunization", "CarePlan",
         "Location", "Appointment", "DocumentReference", "Questionnaire", "Specimen", "ImagingStudy", "Coverage",
         "RiskAssessment", "Group"]
GENERATED = 120
INF = float("inf")


@cache
def _definitions() -> dict[str, Any]:
    text = pkg_resources.files("fhir_server.search").joinpath("data/search_parameters.json").read_text("utf-8")
    return dict(json.loads(text)["types"])


# ---- the brute-force evaluator ------------------------------------------------------------------------------

_AS = re.compile(r"^\((?P<path>[A-Za-z.]+) as (?P<type>[A-Za-z]+)\)$")


_VALUES: dict[tuple[str, str, str, str], list[Any]] = {}


def values(resource: dict[str, Any], code: str) -> list[Any]:
    """What the parameter's FHIRPath selects in ``resource`` (cached by version: each case reads its whole
    universe)."""
    key = (resource["resourceType"], resource["id"], resource.get("meta", {}).get("versionId", ""), code)
    if key not in _VALUES:
        _VALUES[key] = _values(resource, code)
    return _VALUES[key]


def _values(resource: dict[str, Any], code: str, *, typed: bool = True) -> list[Any]:
    """``typed``: apply ``where(resolve() is T)`` (False: a reference by identifier alone names no type)."""
    definition = _definitions()[resource["resourceType"]][code]
    out: list[Any] = []
    for part in definition["paths"]:
        # "(X.y as T)" means every X.y of type T (fhirpathpy wants a singleton left of "as")
        expression = _AS.sub(r"\g<path>.ofType(\g<type>)", part["expression"])
        found = evaluate(resource, expression, model=models["r4"])
        if typed and part.get("is"):
            found = [v for v in found if isinstance(v, dict)
                     and str(v.get("reference", "")).split("/_history/")[0].split("/")[-2:-1] == [part["is"]]]
        out += [v for v in found if v is not None]
    return out


def references(resource: dict[str, Any], code: str, base: str) -> list[str]:
    """The references a reference parameter selects, as written (this server's as ``Type/id``)."""
    out = []
    for v in values(resource, code):
        ref = v.get("reference") if isinstance(v, dict) else v
        if isinstance(ref, str):
            out.append(local(ref, base))
    return out


def norm(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c)).strip()


@cache
def _readings() -> dict[str, str]:
    """Each Chinese character's pinyin reading, from the hub's table (search/data/pinyin.json)."""
    data = json.loads(pkg_resources.files("fhir_server.search").joinpath("data/pinyin.json").read_text("utf-8"))
    return {c: reading for reading, chars in data["readings"].items() for c in chars}


def syllables(text: str) -> list[str]:
    """A text as it sounds: each Chinese character's reading, each run of other letters and digits."""
    spaced = "".join(f" {_readings()[c]} " if c in _readings() else c if c.isalnum() else " " for c in norm(text))
    return spaced.split()


def sounds_like(value: str) -> Matcher:
    """``phonetic`` (R4: "some kind of phonetic matching"): one of a name's sounds starts with the value's, the
    sounds being each text of a name, its family and given names together, and their initials."""
    wanted = "".join(syllables(value))

    def names(v: Any) -> list[list[str]]:
        if isinstance(v, str):
            return [[v]]
        if not isinstance(v, dict):
            return []
        given = [g for g in v.get("given") or [] if isinstance(g, str)]
        family = [v["family"]] if isinstance(v.get("family"), str) else []
        return [family + given] + ([[v["text"]]] if isinstance(v.get("text"), str) else [])

    def heard(r: dict[str, Any]) -> bool:
        for v in values(r, "phonetic"):
            for name in names(v):
                for parts in [syllables(t) for t in name] + [[s for t in name for s in syllables(t)]]:
                    if parts and ("".join(parts).startswith(wanted) or "".join(p[0] for p in parts).startswith(wanted)):
                        return True
        return False
    return heard


def texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        return []
    out = [value[k] for k in ("family", "text", "city", "district", "state", "postalCode", "country")
           if isinstance(value.get(k), str)]
    for k in ("given", "prefix", "suffix", "line"):
        out += [v for v in value.get(k) or [] if isinstance(v, str)]
    return out


def codes(value: Any) -> list[tuple[str | None, str]]:
    if isinstance(value, bool):
        return [(None, str(value).lower())]
    if isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return []
    if "coding" in value:
        return [(c.get("system"), c["code"]) for c in value["coding"] if isinstance(c, dict) and c.get("code")]
    if "code" in value and isinstance(value["code"], str):
        return [(value.get("system"), value["code"])]
    if isinstance(value.get("value"), str):
        return [(value.get("system"), value["value"])]
    return []


def code_texts(value: Any) -> list[str]:
    """The text that goes with a code (token ``:text``): CodeableConcept.text, each Coding.display, and for an
    Identifier the same of its type."""
    if not isinstance(value, dict):
        return []
    out = [value[k] for k in ("text", "display") if isinstance(value.get(k), str)]
    out += [c["display"] for c in value.get("coding") or []
            if isinstance(c, dict) and isinstance(c.get("display"), str)]
    return out + code_texts(value.get("type"))


def span(text: str) -> tuple[float, float]:
    """Seconds since the epoch covered by a FHIR date/dateTime/instant (inclusive)."""
    if len(text) == 4:
        lo = datetime(int(text), 1, 1, tzinfo=ZONE)
        hi = datetime(int(text) + 1, 1, 1, tzinfo=ZONE)
    elif len(text) == 7:
        y, m = int(text[:4]), int(text[5:7])
        lo = datetime(y, m, 1, tzinfo=ZONE)
        hi = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=ZONE)
    elif len(text) == 10:
        lo = datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=ZONE)
        hi = lo + timedelta(days=1)
    else:
        lo = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if lo.tzinfo is None:
            lo = lo.replace(tzinfo=ZONE)
        step = timedelta(microseconds=1) if "." in text else timedelta(seconds=1) if text.count(":") >= 2 else \
            timedelta(minutes=1)
        hi = lo + step
    return lo.timestamp(), hi.timestamp() - 1e-6


def spans(value: Any) -> list[tuple[float, float]]:
    if isinstance(value, str):
        try:
            return [span(value)]
        except ValueError:
            return []
    if isinstance(value, dict) and ("start" in value or "end" in value):
        lo = span(value["start"])[0] if isinstance(value.get("start"), str) else -INF
        hi = span(value["end"])[1] if isinstance(value.get("end"), str) else INF
        return [(lo, hi)]
    if isinstance(value, dict) and "event" in value:
        return [s for e in value["event"] for s in spans(e)]
    return []


def date_matches(target: tuple[float, float], prefix: str, search: tuple[float, float]) -> bool:
    (lo, hi), (a, b) = target, search
    if prefix == "ap":  # overlaps the search range widened by a tenth of its distance from now, at least a day
        spread = max(abs(datetime.now().timestamp() - a) / 10, 86_400)
        return lo <= b + spread and hi >= a - spread
    eq = lo >= a and hi <= b
    return {"eq": eq, "ne": not eq, "gt": hi > b, "lt": lo < a, "ge": hi > b or eq, "le": lo < a or eq,
            "sa": lo > b, "eb": hi < a}[prefix]


def number_matches(x: float, prefix: str, text: str) -> bool:
    d = Decimal(text)
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    half = Decimal(5) * Decimal(10) ** (exp - 1)
    lo, hi, v = float(d - half), float(d + half), float(d)
    if prefix == "ap":  # within 10 % of the value
        return v - abs(v) * 0.1 <= x <= v + abs(v) * 0.1
    return {"eq": lo <= x < hi, "ne": not lo <= x < hi, "gt": x > v, "lt": x < v, "ge": x >= v, "le": x <= v,
            "sa": x > v, "eb": x < v}[prefix]


def local(ref: str, base: str) -> str:
    ref = ref.split("/_history/")[0]
    return ref[len(base) + 1:] if ref.startswith(base + "/") else ref


Matcher = Callable[[dict[str, Any]], bool]


def matcher(code: str, modifier: str, raw: str, kind: str, base: str, rtype: str = "Patient") -> Matcher:
    """The rule for one parameter and one value (no OR), by the text of FHIR R4 search.html."""
    if modifier == "missing":
        return lambda r: (not values(r, code)) == (raw == "true")
    if kind == "string":
        q = norm(raw)
        if code == "phonetic" and not modifier:
            return sounds_like(raw)
        if modifier == "exact":
            return lambda r: any(t == raw for v in values(r, code) for t in texts(v))
        if modifier == "contains":
            return lambda r: any(q in norm(t) for v in values(r, code) for t in texts(v))
        return lambda r: any(norm(t).startswith(q) for v in values(r, code) for t in texts(v))
    if kind == "token" and modifier == "text":  # a word of the text starts with the value; Chinese: anywhere
        wanted = " ".join(norm(raw).split())
        chinese = unicodedata.name(wanted[0], "").startswith("CJK UNIFIED IDEOGRAPH")
        words = re.compile(("" if chinese else "(^| )") + re.escape(wanted))
        return lambda r: any(words.search(" ".join(norm(t).split())) for v in values(r, code) for t in code_texts(v))
    if kind == "token" and modifier == "of-type":  # type-system|type-code|value of an Identifier
        type_system, type_code, wanted = raw.split("|")

        def typed(v: Any) -> bool:
            return isinstance(v, dict) and v.get("value") == wanted and any(
                isinstance(c, dict) and (c.get("system"), c.get("code")) == (type_system, type_code)
                for c in (v.get("type") or {}).get("coding") or [])
        return lambda r: any(typed(v) for v in values(r, code))
    if kind == "reference" and modifier == "identifier":
        system, bar, wanted = raw.rpartition("|")

        def named(v: Any) -> bool:
            ident = v.get("identifier") if isinstance(v, dict) else None
            return isinstance(ident, dict) and ident.get("value") == wanted and (
                not bar or (ident.get("system") or "") == system)
        return lambda r: any(named(v) for v in _values(r, code, typed=False))
    if kind == "token":
        if "|" in raw:
            system, _, code_ = raw.partition("|")

            def one(s: str | None, c: str) -> bool:
                if code_ == "":
                    return s == system
                return c == code_ and (s in (None, "") if system == "" else s == system)
        else:
            def one(s: str | None, c: str) -> bool:
                return c == raw
        hit: Matcher = lambda r: any(one(s, c) for v in values(r, code) for s, c in codes(v))  # noqa: E731
        return (lambda r: not hit(r)) if modifier == "not" else hit
    if kind == "reference":
        def refs(r: dict[str, Any]) -> list[str]:
            return references(r, code, base)
        if "/" in raw:
            return lambda r: raw in refs(r)
        # a bare id stands for that id on any of the parameter's target types (FHIR R4 search.html#reference)
        targets = _definitions()[rtype][code].get("target") or []
        return lambda r: any(x == raw or x in [f"{t}/{raw}" for t in targets] for x in refs(r))
    if kind == "uri":
        if modifier == "above":  # the resource's uri is the value or one of its ancestors by path
            return lambda r: any(isinstance(v, str) and (v == raw or raw.startswith(v + "/"))
                                 for v in values(r, code))
        if modifier == "below":
            return lambda r: any(isinstance(v, str) and v.startswith(raw) for v in values(r, code))
        return lambda r: any(v == raw for v in values(r, code))
    prefix, text = (raw[:2], raw[2:]) if raw[:2].isalpha() else ("eq", raw)
    if kind == "date":
        search = span(text)
        return lambda r: any(date_matches(s, prefix, search) for v in values(r, code) for s in spans(v))
    if kind == "number":
        return lambda r: any(number_matches(float(v), prefix, text) for v in values(r, code)
                             if isinstance(v, int | float | Decimal) and not isinstance(v, bool))
    number, _, unit = text.partition("|")
    system, _, unit_code = unit.partition("|")

    def quantity_hit(v: Any) -> bool:
        if not isinstance(v, dict) or not isinstance(v.get("value"), int | float | Decimal):
            return False
        if unit_code and (v.get("code") or v.get("unit")) != unit_code:
            return False
        if system and v.get("system") != system:
            return False
        return number_matches(float(v["value"]), prefix, number)
    return lambda r: any(quantity_hit(v) for v in values(r, code))


# ---- cases --------------------------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return format(Decimal(str(x)).normalize(), "f")


def cases_for(resource: dict[str, Any], code: str, kind: str, rng: random.Random, base: str) -> list[tuple[str, str]]:
    """(parameter name, value) pairs built from what ``resource`` holds for ``code``."""
    found = values(resource, code)
    if not found:
        return [(f"{code}:missing", "true"), (f"{code}:missing", "false")] if rng.random() < 0.2 else []
    v = rng.choice(found)
    out: list[tuple[str, str]] = []
    if kind == "string":
        parts = [t for t in texts(v) if t.strip()]
        if parts:
            t = rng.choice(parts)
            out += [(code, t[: max(1, len(t) // 2)]), (f"{code}:exact", t), (f"{code}:contains", t[1:3] or t)]
    elif kind == "token":
        pairs = codes(v)
        if pairs:
            s, c = rng.choice(pairs)
            out += [(code, c), (f"{code}:not", c)]
            out.append((code, f"{s}|{c}" if s else f"|{c}"))
            if s:
                out.append((code, f"{s}|"))
        words = [w for t in code_texts(v) for w in t.split() if w.strip("()[],.;:")]
        if words:
            word = rng.choice(words)
            out.append((f"{code}:text", word[: max(2, len(word) * 2 // 3)]))
        kinds = (v.get("type") or {}).get("coding") or [] if isinstance(v, dict) else []
        typed = [c for c in kinds if isinstance(c, dict) and c.get("system") and c.get("code")]
        if typed and isinstance(v.get("value"), str) and "|" not in v["value"]:
            out.append((f"{code}:of-type", f"{typed[0]['system']}|{typed[0]['code']}|{v['value']}"))
    elif kind == "reference":
        ref = v.get("reference") if isinstance(v, dict) else v if isinstance(v, str) else None
        if isinstance(ref, str) and not ref.startswith("#"):
            ref = local(ref, base)
            out.append((code, ref))
            if ref.count("/") == 1 and not ref.startswith(("http", "urn")):
                out.append((code, ref.split("/")[1]))
        named = [x.get("identifier") for x in _values(resource, code, typed=False) if isinstance(x, dict)]
        named = [i for i in named if isinstance(i, dict) and isinstance(i.get("value"), str)]
        if named:
            ident = rng.choice(named)
            out.append((f"{code}:identifier", f"{ident['system']}|{ident['value']}" if ident.get("system")
                        else ident["value"]))
    elif kind == "uri" and isinstance(v, str):
        out += [(code, v), (f"{code}:below", v[: max(1, len(v) * 2 // 3)]), (f"{code}:above", f"{v}/part")]
    elif kind == "date":
        s = rng.choice(spans(v)) if spans(v) else None
        if s is not None and abs(s[0]) != INF:
            moment = datetime.fromtimestamp(s[0], ZONE)
            for text in (moment.strftime("%Y"), moment.strftime("%Y-%m"), moment.strftime("%Y-%m-%d"),
                         moment.isoformat(timespec="seconds")):
                out.append((code, f"{rng.choice(['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap'])}{text}"))
    elif kind == "number" and isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        for prefix in ("", "gt", "lt", "ge", "le", "ne", "sa", "eb", "ap"):
            out.append((code, f"{prefix}{_fmt(float(v))}"))
    elif kind == "quantity" and isinstance(v, dict) and isinstance(v.get("value"), int | float | Decimal):
        number = _fmt(float(v["value"]))
        out += [(code, number), (code, f"gt{number}"), (code, f"le{number}"), (code, f"ap{number}")]
        unit = v.get("code") or v.get("unit")
        if unit:
            out.append((code, f"{number}||{unit}"))
            if v.get("system"):
                out.append((code, f"ge{number}|{v['system']}|{unit}"))
    return out


# ---- fixtures -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def search_hub(store_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(store_uri, tmp_path_factory.mktemp("search-hub"), database="search_semantics")
    yield running
    stop_hub(running)


@pytest.fixture(scope="module")
def stored(search_hub: Hub) -> dict[str, list[dict[str, Any]]]:
    """Load the data set; returns what the hub stored, read back by type (the evaluator's universe)."""
    candidates = [r for r in valid_examples() if r["resourceType"] in TYPES]
    candidates += organizations()
    for i in range(GENERATED):
        candidates += patient_group(i)
    by_key = {f"{r['resourceType']}/{r['id']}": r for r in candidates if r.get("id")}
    accepted: dict[str, list[dict[str, Any]]] = {}
    items = list(by_key.values())
    with search_hub.client() as api:
        for start in range(0, len(items), 200):
            chunk = items[start:start + 200]
            bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                for r in chunk]}
            answer = api.post("", json=bundle)
            assert answer.status_code == 200, answer.text
            assert any(e["response"]["status"].startswith(("200", "201")) for e in answer.json()["entry"])
        for rtype in {r["resourceType"] for r in items}:
            accepted[rtype] = []
            answer = api.get(f"/{rtype}", params={"_count": "1000"})
            while True:
                page = answer.json()
                accepted[rtype] += [e["resource"] for e in page["entry"]]
                nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
                if nxt is None:
                    break
                answer = api.get(nxt.replace(search_hub.base, ""))
    return accepted


def search_all(api: httpx.Client, base: str, rtype: str, params: list[tuple[str, str]], *,
               typed: bool = False, count: int = 100) -> list[str]:
    """Ids of every match (``typed``: as ``Type/id``), following next links to the end, ``count`` a page. ``rtype``
    is the path searched: a type, ``""`` (the system) or ``Patient/[id]/*``."""
    ids: list[str] = []
    answer = api.get(f"/{rtype}", params=[*params, ("_count", str(count))])
    while True:
        assert answer.status_code == 200, (params, answer.text)
        page = answer.json()
        ids += [f"{e['resource']['resourceType']}/{e['resource']['id']}" if typed else e["resource"]["id"]
                for e in page.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if nxt is None:
            return ids
        answer = api.get(nxt.replace(base, ""))


# ---- tests --------------------------------------------------------------------------------------------------

def parameter_cases(stored: dict[str, list[dict[str, Any]]], seed: int,
                    base: str) -> Iterator[tuple[str, str, str, str, list[str]]]:
    """Cases of every search parameter of every type: (type, parameter name, escaped value, kind[:modifier],
    the ids the evaluator expects, sorted)."""
    rng = random.Random(seed)
    for rtype in TYPES:
        universe = stored.get(rtype, [])
        if not universe:
            continue
        for code, definition in sorted(_definitions()[rtype].items()):
            kind = definition["type"]
            if kind in ("composite", "special") or code == "_id":
                continue
            having = [r for r in universe if values(r, code)]
            picked = rng.sample(having, min(2, len(having))) + rng.sample(universe, 1)
            for resource in picked:
                for name, value in cases_for(resource, code, kind, rng, base):
                    modifier = name.partition(":")[2]
                    test = matcher(code, modifier, value, kind, base, rtype)
                    expected = sorted(r["id"] for r in universe if test(r))
                    escaped = value.replace("\\", "\\\\").replace(",", "\\,")  # search.html#escaping
                    yield rtype, name, escaped, f"{kind}:{modifier}" if modifier else kind, expected


def _differences(case: str, got: list[str], expected: list[str]) -> list[str]:
    out = [f"{case}: duplicates in the pages"] if len(got) != len(set(got)) else []
    if sorted(got) != expected:
        missing, extra = set(expected) - set(got), set(got) - set(expected)
        out.append(f"{case}: missing {sorted(missing)[:3]} extra {sorted(extra)[:3]}")
    return out


def test_every_parameter_type_modifier_and_prefix_against_brute_force(
        search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    base = search_hub.base
    checked = 0
    kinds: set[str] = set()
    failures: list[str] = []
    with search_hub.client() as api:
        for rtype, name, value, kind, expected in parameter_cases(stored, 20261125, base):
            got = search_all(api, base, rtype, [(name, value)])
            checked += 1
            kinds.add(kind)
            failures += _differences(f"{rtype}?{name}={value}", got, expected)
    assert not failures, f"{len(failures)} of {checked} cases differ:\n" + "\n".join(failures[:40])
    assert checked > 500, checked
    assert {"string", "string:exact", "string:contains", "token", "token:not", "token:text", "token:of-type",
            "reference", "reference:identifier", "date", "number", "quantity", "uri", "uri:below",
            "uri:above"} <= kinds, kinds


def _cases_by_type(stored: dict[str, list[dict[str, Any]]], seed: int,
                   base: str) -> dict[str, list[tuple[str, str, set[str]]]]:
    out: dict[str, list[tuple[str, str, set[str]]]] = {}
    for rtype, name, value, _, expected in parameter_cases(stored, seed, base):
        out.setdefault(rtype, []).append((name, value, set(expected)))
    return out


def test_and_and_or_of_cases_against_brute_force(search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    """Two parameters must give the intersection of their cases, and two values of one parameter joined by a
    comma their union: the choice of the clause to scan, its probes and the re-check of the others."""
    base = search_hub.base
    rng = random.Random(20261126)
    failures: list[str] = []
    checked = 0
    with search_hub.client() as api:
        for rtype, own in sorted(_cases_by_type(stored, 20261126, base).items()):
            for _ in range(min(12, len(own) // 2)):
                (a, x, xs), (b, y, ys) = rng.sample(own, 2)
                got = search_all(api, base, rtype, [(a, x), (b, y)])
                failures += _differences(f"{rtype}?{a}={x}&{b}={y}", got, sorted(xs & ys))
                others = [c for c in own if c[0] == a and c[1] != x]
                if others and not a.endswith((":not", ":missing")):  # :not of a list is not "not a, or not b"
                    _, z, zs = rng.choice(others)
                    got = search_all(api, base, rtype, [(a, f"{x},{z}")])
                    failures += _differences(f"{rtype}?{a}={x},{z}", got, sorted(xs | zs))
                    checked += 1
                checked += 1
    assert not failures, f"{len(failures)} of {checked} cases differ:\n" + "\n".join(failures[:40])
    assert checked > 300, checked


def test_two_clauses_of_one_date_parameter_against_brute_force(search_hub: Hub,
                                                                stored: dict[str, list[dict[str, Any]]]) -> None:
    """``date=ge…&date=le…``: one date parameter bounded on both sides is read by a window of its entries (engine
    ``_resolve``, search/date_spans.py), and ``ap`` alone too. Over the official examples' dates (partial dates,
    periods open at one end, several values in one resource, time zones) it must give the intersection of the two
    cases, for every pair of prefixes the cases draw."""
    base = search_hub.base
    rng = random.Random(20261128)
    failures: list[str] = []
    checked = 0
    with search_hub.client() as api:
        for rtype, own in sorted(_cases_by_type(stored, 20261128, base).items()):
            params = parameters_for(rtype)
            dated: dict[str, list[tuple[str, set[str]]]] = {}
            for name, value, matched in own:
                if (p := params.get(name)) is not None and p.type == "date":
                    dated.setdefault(name, []).append((value, matched))
            for code, cases in sorted(dated.items()):
                for _ in range(min(8, len(cases) * (len(cases) - 1) // 2)):
                    (x, xs), (y, ys) = rng.sample(cases, 2)
                    got = search_all(api, base, rtype, [(code, x), (code, y)])
                    failures += _differences(f"{rtype}?{code}={x}&{code}={y}", got, sorted(xs & ys))
                    checked += 1
    assert not failures, f"{len(failures)} of {checked} cases differ:\n" + "\n".join(failures[:40])
    assert checked > 100, checked


@pytest.fixture(scope="module")
def joining_hub(store_uri: str, tmp_path_factory: pytest.TempPathFactory,
                stored: dict[str, list[dict[str, Any]]]) -> Iterator[Hub]:
    """A second hub on the same data that resolves a chain's or ``_has``'s sub-search first only when it has at
    most 2 matches (``search_chain_max``): a larger one is checked on each candidate (engine ``Join``). It sorts
    more than 5 matches in index order (``search_sort_in_memory``), so sorted searches read through those walks."""
    running = start_hub(store_uri, tmp_path_factory.mktemp("joining-hub"), database="search_semantics",
                        extra={"MEDUNION_SEARCH_CHAIN_MAX": "2", "MEDUNION_SEARCH_SORT_IN_MEMORY": "5",
                               "MEDUNION_INSTANCE_ID": "joining"})
    yield running
    stop_hub(running)


@pytest.mark.parametrize("hub_name", ["search_hub", "joining_hub"])
def test_chains_and_has_over_every_kind_of_case(hub_name: str, request: pytest.FixtureRequest,
                                                stored: dict[str, list[dict[str, Any]]]) -> None:
    """``subject:Patient.<case>`` must give the resources whose subject is a Patient of the case, and
    ``Patient?_has:<type>:subject:<case>`` the Patients that the case's resources name as subject: alone, beside
    a case of the type searched (which may drive instead) and sorted (in the brute-force order). On
    ``joining_hub`` every sub-search of more than two matches is checked on each candidate, in pages of 7: alone,
    the chain's own entries drive it (``_has``: the type's resources), and sorted, the index-order walks."""
    hub: Hub = request.getfixturevalue(hub_name)
    base = hub.base
    count = 100 if hub_name == "search_hub" else 7
    cases = _cases_by_type(stored, 20261127, base)
    rng = random.Random(20261127)
    patients = {r["id"]: r for r in stored["Patient"]}
    dated = {"Observation": ("date", "date"), "DiagnosticReport": ("date", "date"),
             "ServiceRequest": ("authored", "date")}

    def subjects(r: dict[str, Any]) -> set[str]:
        return set(references(r, "subject", base))

    failures: list[str] = []
    checked = 0
    with hub.client() as api:
        def check(rtype: str, params: list[tuple[str, str]], expected: set[str],
                  universe: dict[str, dict[str, Any]], sort: tuple[str, str] | None = None) -> None:
            nonlocal failures, checked
            text = "&".join(f"{k}={v}" for k, v in params)
            if sort is None:
                failures += _differences(f"{rtype}?{text}", search_all(api, base, rtype, params, count=count),
                                         sorted(expected))
            else:
                got = search_all(api, base, rtype, [*params, ("_sort", f"-{sort[0]}")], count=count)
                wanted = _sorted_by({i: universe[i] for i in expected}, [(sort[0], sort[1], True)], base)
                keys = [_sort_key(universe[i], sort[0], sort[1], True, base) if i in universe else i for i in got]
                # (ties in any order: walked down the index, they come by id descending; sorted in memory, ascending)
                if sorted(got) != sorted(wanted) or keys != [_sort_key(universe[i], sort[0], sort[1], True, base)
                                                             for i in wanted]:
                    failures.append(f"{rtype}?{text}&_sort=-{sort[0]}: {got[:5]} for {wanted[:5]}")
            checked += 1

        for source in ("Observation", "DiagnosticReport", "ServiceRequest"):
            universe = {r["id"]: r for r in stored[source]}
            for n, (name, value, matched) in enumerate(rng.sample(cases["Patient"], 25)):
                wanted = {f"Patient/{i}" for i in matched}
                expected = {i for i, r in universe.items() if subjects(r) & wanted}
                chain = [(f"subject:Patient.{name}", value)]
                check(source, chain, expected, universe)
                other, other_value, others = rng.choice(cases[source])
                check(source, [*chain, (other, other_value)], expected & others, universe)
                if n % 5 == 0:
                    check(source, chain, expected, universe, sort=dated[source])
            for n, (name, value, matched) in enumerate(rng.sample(cases[source], min(25, len(cases[source])))):
                named = {ref for r in stored[source] if r["id"] in matched for ref in subjects(r)}
                expected = {p for p in patients if f"Patient/{p}" in named}
                has = [(f"_has:{source}:subject:{name}", value)]
                check("Patient", has, expected, patients)
                other, other_value, others = rng.choice(cases["Patient"])
                check("Patient", [*has, (other, other_value)], expected & others, patients)
                if n % 5 == 0:
                    check("Patient", has, expected, patients, sort=("birthdate", "date"))
    assert not failures, f"{len(failures)} of {checked} cases differ:\n" + "\n".join(failures[:40])
    assert checked >= 320, checked


def test_concurrent_searches_get_their_own_results(search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    """Sixteen clients at once: their scans of the search index share store commands (``ScanBatcher``), and each
    search must still get exactly its own matches. Parameter cases of every type, chains and ``_has``."""
    base = search_hub.base
    patients = {r["id"]: r for r in stored["Patient"]}
    wang = {pid for pid, r in patients.items() if matcher("family", "", "王", "string", base)(r)}
    urgent = {r["subject"]["reference"][8:] for r in stored["ServiceRequest"] if r.get("priority") == "urgent"}
    cases = [(rtype, [(name, value)], expected)
             for rtype, name, value, _, expected in parameter_cases(stored, 20261126, base)]
    cases += [("DiagnosticReport", [("subject:Patient.family", "王")],
               sorted(r["id"] for r in stored["DiagnosticReport"]
                      if r.get("subject", {}).get("reference", "")[8:] in wang)),
              ("Patient", [("_has:ServiceRequest:subject:priority", "urgent")], sorted(urgent))] * 20
    random.Random(7).shuffle(cases)

    def run(part: list[tuple[str, list[tuple[str, str]], list[str]]]) -> list[str]:
        out: list[str] = []
        with search_hub.client() as api:
            for rtype, params, expected in part:
                out += _differences(f"{rtype}?{params}", search_all(api, base, rtype, params), expected)
        return out

    with ThreadPoolExecutor(16) as pool:
        failures = [f for found in pool.map(run, [cases[i::16] for i in range(16)]) for f in found]
    assert not failures, f"{len(failures)} of {len(cases)} cases differ:\n" + "\n".join(failures[:40])
    assert len(cases) > 500


def test_or_and_chinese_names_and_paging(search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    patients = stored["Patient"]
    base = search_hub.base
    with search_hub.client() as api:
        for name, value in [("name", "王"), ("family", "王"), ("given", "小东"), ("name", "王,李"),
                            ("name", "wang"), ("address-city", "上海")]:
            tests = [matcher(name, "", v, "string", base) for v in value.split(",")]
            expected = sorted(r["id"] for r in patients if any(t(r) for t in tests))
            assert expected, (name, value)
            assert sorted(search_all(api, base, "Patient", [(name, value)])) == expected
        both = [("family", "王"), ("gender", "female")]
        expected = sorted(r["id"] for r in patients if matcher("family", "", "王", "string", base)(r)
                          and matcher("gender", "", "female", "token", base)(r))
        assert sorted(search_all(api, base, "Patient", both)) == expected


def test_chains_has_and_includes(search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    base = search_hub.base
    patients = {r["id"]: r for r in stored["Patient"]}
    wang = {pid for pid, r in patients.items() if matcher("family", "", "王", "string", base)(r)}
    reports = stored["DiagnosticReport"]
    with search_hub.client() as api:
        chained = search_all(api, base, "DiagnosticReport", [("subject:Patient.family", "王")])
        assert sorted(chained) == sorted(r["id"] for r in reports
                                         if r.get("subject", {}).get("reference", "")[8:] in wang)
        two_levels = search_all(api, base, "Observation", [("subject:Patient.organization.identifier", "H03")])
        in_h03 = {pid for pid, r in patients.items()
                  if r.get("managingOrganization", {}).get("reference") == "Organization/h03"}
        assert sorted(two_levels) == sorted(r["id"] for r in stored["Observation"]
                                            if r.get("subject", {}).get("reference", "")[8:] in in_h03)
        assert two_levels
        urgent = {r["subject"]["reference"][8:] for r in stored["ServiceRequest"] if r.get("priority") == "urgent"}
        has = search_all(api, base, "Patient", [("_has:ServiceRequest:subject:priority", "urgent")])
        assert sorted(has) == sorted(urgent)
        nested = search_all(api, base, "Organization",
                            [("_has:Patient:organization:_has:ServiceRequest:subject:priority", "urgent")])
        assert sorted(nested) == sorted({patients[p]["managingOrganization"]["reference"][13:] for p in urgent
                                         if "managingOrganization" in patients[p]})
        page = api.get("/DiagnosticReport", params={"_id": "dr0000001", "_include": "DiagnosticReport:result",
                                                    "_revinclude": "Observation:based-on"}).json()
        matched = [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "match"]
        included = sorted(e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "include")
        assert matched == ["dr0000001"] and included == ["ob00000010", "ob00000011"]
        page = api.get("/ServiceRequest", params={"_id": "sr0000002", "_revinclude": "DiagnosticReport:based-on",
                                                  "_include:iterate": "DiagnosticReport:result"}).json()
        included = sorted(e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "include")
        assert included == ["dr0000002", "ob00000020", "ob00000021"]
        page = api.get("/Observation", params={"subject": "p0000004", "_include": "Observation:subject"}).json()
        assert [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "include"] == ["p0000004"]


def test_include_and_revinclude_of_every_reference_parameter(search_hub: Hub,
                                                             stored: dict[str, list[dict[str, Any]]]) -> None:
    """``T?_include=T:p`` must add exactly the stored resources that the matches name in ``p``, and
    ``U?_revinclude=T:p`` exactly the T that name a match in ``p``, for every reference parameter p of every
    type (derived ones such as Observation ``patient`` included), over the official examples."""
    base = search_hub.base
    stored_keys = {f"{t}/{r['id']}" for t, rs in stored.items() for r in rs}

    def named(resource: dict[str, Any], code: str) -> set[str]:
        return set(references(resource, code, base))

    def run(api: httpx.Client, rtype: str, params: list[tuple[str, str]]) -> tuple[set[str], set[str]]:
        matched: set[str] = set()
        included: set[str] = set()
        answer = api.get(f"/{rtype}", params=[*params, ("_count", "1000")])
        while True:
            assert answer.status_code == 200, (rtype, params, answer.text)
            page = answer.json()
            for e in page.get("entry", []):
                key = f"{e['resource']['resourceType']}/{e['resource']['id']}"
                (matched if e["search"]["mode"] == "match" else included).add(key)
            nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
            if nxt is None:
                return matched, included
            answer = api.get(nxt.replace(base, ""))

    failures: list[str] = []
    checked = 0
    with search_hub.client() as api:
        for rtype in TYPES:
            for code, definition in sorted(_definitions()[rtype].items()):
                if definition["type"] != "reference" or not stored.get(rtype):
                    continue
                matched, included = run(api, rtype, [("_include", f"{rtype}:{code}")])
                want = {k for r in stored[rtype] for k in named(r, code)} & stored_keys - matched
                failures += _differences(f"{rtype}?_include={rtype}:{code}", sorted(included), sorted(want))
                for target in definition.get("target") or []:
                    if stored.get(target):
                        matched, included = run(api, target, [("_revinclude", f"{rtype}:{code}")])
                        want = {f"{rtype}/{r['id']}" for r in stored[rtype] if named(r, code) & matched} - matched
                        failures += _differences(f"{target}?_revinclude={rtype}:{code}", sorted(included),
                                                 sorted(want))
                        checked += 1
                checked += 1
    assert not failures, f"{len(failures)} of {checked} cases differ:\n" + "\n".join(failures[:40])
    assert checked > 300, checked


def test_sort_total_count_and_system_search(search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    base = search_hub.base
    generated = [r for r in stored["Patient"] if re.fullmatch(r"p\d{7}", r["id"])]
    with search_hub.client() as api:
        params = [("identifier", "urn:oid:2.16.156.10011.1.1|"), ("_sort", "-birthdate,_id"), ("_count", "7")]
        ids: list[str] = []
        url: str | None = "/Patient?" + "&".join(f"{k}={v}" for k, v in params)
        while url:
            page = api.get(url.replace(base, "")).json()
            assert page["total"] == len(generated)
            ids += [e["resource"]["id"] for e in page["entry"]]
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        expected = sorted(generated, key=lambda r: r["id"])
        expected.sort(key=lambda r: r["birthDate"], reverse=True)
        assert ids == [r["id"] for r in expected]
        by_two = api.get("/Patient", params={"identifier": "urn:oid:2.16.156.10011.1.1|", "_count": "500",
                                             "_sort": "gender,-_id"}).json()
        got = [(e["resource"]["gender"], e["resource"]["id"]) for e in by_two["entry"]]
        assert got == sorted(got, key=lambda g: (g[0], [-ord(c) for c in g[1]]))
        count = api.get("/Observation", params={"code": "718-7", "_summary": "count"}).json()
        assert count["total"] == sum(1 for r in stored["Observation"] if matcher("code", "", "718-7", "token", base)(r))
        assert "entry" not in count or not [e for e in count["entry"] if e["search"]["mode"] == "match"]
        # a count is not paged: no link to follow (each would count again, page after page); _count=0 counts too
        # (FHIR R5's reading; it gave total 0 and the searches over several types no total)
        assert [link["relation"] for link in count["link"]] == ["self"], count["link"]
        zero = api.get("/Observation", params={"code": "718-7", "_count": "0"}).json()
        assert zero["total"] == count["total"] > 0 and not zero.get("entry") and len(zero["link"]) == 1, zero
        accurate = api.get("/ServiceRequest", params={"status": "active", "_total": "accurate", "_count": "3"}).json()
        assert accurate["total"] == sum(1 for r in stored["ServiceRequest"] if r.get("status") == "active")
        estimate = api.get("/ServiceRequest", params={"status": "active", "_total": "estimate", "_count": "3"}).json()
        assert estimate["total"] >= accurate["total"]  # every match at least (orphan entries may add a few)
        none = api.get("/ServiceRequest", params={"status": "active", "_total": "none", "_count": "3"}).json()
        assert "total" not in none
        system = api.get("", params={"_type": "Patient,Organization", "identifier": "H05,MRN00000005"}).json()
        assert sorted(e["resource"]["id"] for e in system["entry"]) == ["h05", "p0000005"]
        posted = api.post("/Patient/_search", content="family=王&gender=male",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert posted.status_code == 200
        assert sorted(e["resource"]["id"] for e in posted.json()["entry"]) == sorted(
            search_all(api, base, "Patient", [("family", "王"), ("gender", "male")]))
        # the result parameters of a form apply as in a query: _elements and _summary shape the resources
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        shaped = api.post("/Patient/_search", content="family=王&_elements=gender&_count=2", headers=form).json()
        assert {tuple(sorted(e["resource"])) for e in shaped["entry"]} == {("gender", "id", "meta", "resourceType")}
        summary = api.post("/Patient/_search", content="family=王&_summary=true&_count=2", headers=form).json()
        assert all("SUBSETTED" in str(e["resource"]["meta"]) for e in summary["entry"]), summary["entry"][0]
        bad = api.post("/Patient/_search", content="family=王&_summary=nonsense", headers=form)
        assert bad.status_code == 400 and "_summary" in bad.json()["issue"][0]["diagnostics"]


def everything(api: httpx.Client, url: str) -> tuple[list[str], list[str]]:
    """The matches and the included resources (``Type/id``, sorted, each once) of every page from ``url`` on."""
    matches: list[str] = []
    included: set[str] = set()
    next_url: str | None = url
    while next_url:
        answer = api.get(next_url.removeprefix(str(api.base_url).rstrip("/")))
        assert answer.status_code == 200, answer.text
        page = answer.json()
        for e in page.get("entry", []):
            key = f"{e['resource']['resourceType']}/{e['resource']['id']}"
            if e["search"]["mode"] == "match":
                matches.append(key)
            else:
                assert e["search"]["mode"] == "include" and key not in matches, e
                included.add(key)
        next_url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    return sorted(matches), sorted(included)


def test_compartment_search_and_everything(search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    base = search_hub.base
    with search_hub.client() as api:
        requests = api.get("/Patient/p0000007/ServiceRequest").json()
        assert [e["resource"]["id"] for e in requests["entry"]] == ["sr0000007"]
        compartment = sorted(["Patient/p0000007", "ServiceRequest/sr0000007", "Observation/ob00000070",
                              "Observation/ob00000071", "DiagnosticReport/dr0000007"])
        assert everything(api, "/Patient/p0000007/$everything?_count=2") == (compartment, ["Organization/h07"])
        assert everything(api, "/Patient/p0000007/$everything") == (compartment, ["Organization/h07"])
        # _type chooses among the compartment's types and the types they refer to
        only = "/Patient/p0000007/$everything?_type=Observation"
        assert everything(api, only) == (["Observation/ob00000070", "Observation/ob00000071"], [])
        both = "/Patient/p0000007/$everything?_type=Patient,Organization"
        assert everything(api, both) == (["Patient/p0000007"], ["Organization/h07"])
        alone = api.get("/Patient/p0000007/$everything", params={"_type": "Organization"})
        assert alone.status_code == 400 and alone.json()["issue"][0]["expression"] == ["_type"]
        # care dates: the patient's order, results and report are of 2026-10-02 (the Patient has no date of care)
        after = "/Patient/p0000007/$everything?start=2026-10-03&_count=2"
        assert everything(api, after) == (["Patient/p0000007"], ["Organization/h07"])
        assert everything(api, "/Patient/p0000007/$everything?start=2026-10-02&end=2026-10-02") == (
            compartment, ["Organization/h07"])
        assert everything(api, "/Patient/p0000007/$everything?end=2026-10-01T23:59:59%2B08:00")[0] == [
            "Patient/p0000007"]
        # a parameter it does not take is said in the Bundle, or refused when asked to be strict
        other = api.get("/Patient/p0000007/$everything", params={"date": "2026"}).json()
        notes = [i["diagnostics"] for e in other["entry"] if e["search"]["mode"] == "outcome"
                 for i in e["resource"]["issue"]]
        assert len(notes) == 1 and "'date'" in notes[0]
        assert len([e for e in other["entry"] if e["search"]["mode"] == "match"]) == len(compartment)
        strict = api.get("/Patient/p0000007/$everything", params={"date": "2026", "_count": "2"},
                         headers={"Prefer": "handling=strict"})
        assert strict.status_code == 400 and strict.json()["issue"][0]["expression"] == ["date"]
    with httpx.Client(base_url=base, headers={"Authorization": "Bearer " + search_hub.token(
            "patient/*.rs", patient="p0000007")}) as own:
        mine = own.get("/Observation").json()
        assert sorted(e["resource"]["id"] for e in mine["entry"]) == ["ob00000070", "ob00000071"]
        assert [e["resource"]["id"] for e in own.get("/Patient").json()["entry"]] == ["p0000007"]
        # the hospital is not in the patient's compartment: a patient/ token is not shown it
        assert everything(own, "/Patient/p0000007/$everything") == (compartment, [])


def test_everything_keeps_the_resources_of_the_care_dates_asked(api: httpx.Client) -> None:
    """``$everything?start=&end=`` (R4: care dates, not record dates) keeps the resources whose date of care meets
    the period, by R4's ``clinical-date`` (an Observation's effective, an Encounter's period) or the type's own
    (a ServiceRequest's authoredOn); a stay that straddles ``start`` is kept, a result without a date is not, a
    type without a date of care (Condition) comes whole. Bad dates are a 400 at the parameter."""
    patient = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "日期"}]}).json()["id"]
    subject = {"reference": f"Patient/{patient}"}

    def post(body: dict[str, Any]) -> str:
        answer = api.post(f"/{body['resourceType']}", json={**body, "subject": subject})
        assert answer.status_code == 201, answer.text
        return f"{body['resourceType']}/{answer.json()['id']}"

    def observation(when: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "CEA"}}
        return {**body, "effectiveDateTime": when} if when else body

    june, march, undated = (post(observation(w)) for w in ("2025-06-10T09:00:00+08:00", "2026-03-02", None))
    stay = post({"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"},
                 "period": {"start": "2025-12-20", "end": "2026-01-05"}})
    order = post({"resourceType": "ServiceRequest", "status": "active", "intent": "order", "code": {"text": "CT"},
                  "authoredOn": "2026-02-14T10:00:00+08:00"})
    chronic = post({"resourceType": "Condition", "onsetDateTime": "2010-05-01", "code": {"text": "hypertension"}})
    own = f"Patient/{patient}"

    def kept(**dates: str) -> list[str]:
        return everything(api, f"/Patient/{patient}/$everything?{urlencode({**dates, '_count': '2'})}")[0]

    assert kept() == sorted([own, june, march, undated, stay, order, chronic])
    assert kept(start="2026-01-01", end="2026-03-31") == sorted([own, march, stay, order, chronic])
    assert kept(start="2026-03") == sorted([own, march, chronic])
    assert kept(end="2025-12-31") == sorted([own, june, stay, chronic])
    assert kept(start="2026-01-06", end="2026-02-13T23:59:59+08:00") == sorted([own, chronic])
    for params, where in (({"start": "2026-13-01"}, "start"), ({"end": "soon"}, "end"),
                          ({"start": "ge2026"}, "start"), ({"start": "2026-03", "end": "2026-02"}, "end")):
        bad = api.get(f"/Patient/{patient}/$everything", params=params)
        assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == [where], (params, bad.text)


def test_a_search_over_several_types_selects_nothing_of_a_type_without_the_parameter(
        search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    """``GET [base]?gender=male`` finds what has gender male, not every resource of the types without a gender
    parameter; the same through ``POST [base]/_search``, ``_type`` and a compartment's ``*``."""
    base = search_hub.base
    definitions = _definitions()

    def expected(types: list[str], code: str, raw: str, kind: str) -> list[str]:
        return sorted(f"{t}/{r['id']}" for t in types if code in definitions[t] for r in stored.get(t, [])
                      if any(matcher(code, "", v, kind, base, t)(r) for v in raw.split(",")))

    def notes(page: dict[str, Any]) -> list[str]:
        return [i["diagnostics"] for e in page.get("entry", []) if e["search"]["mode"] == "outcome"
                for i in e["resource"]["issue"]]

    with search_hub.client() as api:
        males = search_all(api, base, "", [("gender", "male")], typed=True)
        assert sorted(males) == expected(list(stored), "gender", "male", "token")
        assert {m.split("/")[0] for m in males} >= {"Patient", "Practitioner"}
        strict = api.get("", params={"gender": "male", "_count": "1"}, headers={"Prefer": "handling=strict"})
        assert strict.status_code == 200  # defined for some types: not an unknown parameter
        page = api.get("", params={"_type": "Observation,Patient", "gender": "female", "_count": "500"}).json()
        found = sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in page["entry"]
                       if e["search"]["mode"] == "match")
        assert found == expected(["Patient"], "gender", "female", "token")
        assert notes(page) == ["Search parameter 'gender' is not defined for Observation: no Observation matches"]
        unknown = api.get("", params={"_type": "Organization,Location", "no-such": "x", "_count": "500"}).json()
        assert len([e for e in unknown["entry"] if e["search"]["mode"] == "match"]) == \
            len(stored["Organization"]) + len(stored["Location"])  # ignored, as in a type-level search
        assert notes(unknown) == ["Search parameter 'no-such' is not defined for any of the types searched"]
        refused = api.get("", params={"no-such": "x"}, headers={"Prefer": "handling=strict"})
        assert refused.status_code == 400 and refused.json()["issue"][0]["expression"] == ["no-such"]
        form = "_type=Patient,Organization&identifier=H05,MRN00000005"
        posted = api.post("/_search", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert posted.status_code == 200, posted.text
        assert sorted(e["resource"]["id"] for e in posted.json()["entry"]) == ["h05", "p0000005"]

        everything = sorted(search_all(api, base, "Patient/p0000007/$everything", [], typed=True))
        assert sorted(search_all(api, base, "Patient/p0000007/*", [], typed=True)) == everything
        final = search_all(api, base, "Patient/p0000007/*", [("status", "final")], typed=True)
        assert sorted(final) == sorted(k for k in expected(list(stored), "status", "final", "token") if k in everything)
        assert final  # the generated reports and observations are final
        posted = api.post("/Patient/p0000007/_search", content="_type=Observation",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert sorted(e["resource"]["id"] for e in posted.json()["entry"]) == ["ob00000070", "ob00000071"]
        posted = api.post("/Patient/p0000007/Observation/_search", content="_count=1",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert posted.status_code == 200 and posted.json()["entry"][0]["resource"]["id"] == "ob00000070"
        assert api.get("/Patient/p0000007/*", params={"_type": "Organization"}).status_code == 400
        assert api.get("/Organization/h05/*").status_code == 400


def test_sort_totals_and_includes_span_every_type_of_a_search_over_several(
        search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    base = search_hub.base

    def walk(path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every match in order, two per page, following next links."""
        out: list[dict[str, Any]] = []
        answer = api.get(path, params={**params, "_count": "2"})
        while True:
            assert answer.status_code == 200, answer.text
            page = answer.json()
            out += [e["resource"] for e in page.get("entry", []) if e["search"]["mode"] == "match"]
            nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
            if nxt is None:
                return out
            answer = api.get(nxt.replace(base, ""))

    with search_hub.client() as api:
        everything = search_all(api, base, "Patient/p0000007/$everything", [], typed=True)
        by_id = [f"{r['resourceType']}/{r['id']}" for r in walk("/Patient/p0000007/*", {"_sort": "_id"})]
        assert by_id == sorted(everything, key=lambda k: (k.split("/")[1], k))  # one order, not type by type
        latest = walk("/Patient/p0000007/*", {"_sort": "-_lastUpdated"})
        stamps = [r["meta"]["lastUpdated"] for r in latest]
        assert stamps == sorted(stamps, reverse=True) and len(latest) == len(everything)
        dated = walk("/Patient/p0000007/*", {"_sort": "-date", "_type": "Observation,Patient,DiagnosticReport"})
        times = [r.get("effectiveDateTime") for r in dated]
        assert times[-1] is None and dated[-1]["resourceType"] == "Patient"  # no date parameter: after the dated
        assert times[:-1] == sorted(times[:-1], reverse=True) and len(times) == 4  # two results, one report

        expected = len(stored["Patient"]) + len(stored["Organization"])
        count = api.get("", params={"_type": "Patient,Organization", "_summary": "count"}).json()
        assert count["total"] == expected and not count.get("entry")
        assert [link["relation"] for link in count["link"]] == ["self"], count["link"]
        zero = api.get("", params={"_type": "Patient,Organization", "_count": "0"}).json()
        assert zero["total"] == expected and not zero.get("entry") and len(zero["link"]) == 1, zero
        accurate = api.get("", params={"_type": "Patient,Organization", "_total": "accurate", "_count": "1"}).json()
        assert accurate["total"] == expected and len(accurate["entry"]) == 1

        both = api.get("", params={"_type": "Observation,DiagnosticReport", "_id": "ob00000070,dr0000007",
                                   "_include": "Observation:subject,DiagnosticReport:subject"}).json()
        modes = sorted((e["search"]["mode"], e["resource"]["resourceType"], e["resource"]["id"]) for e in both["entry"])
        assert modes == [("include", "Patient", "p0000007"), ("match", "DiagnosticReport", "dr0000007"),
                         ("match", "Observation", "ob00000070")]  # included by both searches: once
        matched = api.get("", params={"_type": "Observation,Patient", "_id": "ob00000070,p0000007",
                                      "_include": "Observation:subject"}).json()
        assert sorted(e["search"]["mode"] for e in matched["entry"]) == ["match", "match"]  # a match, not again
        wrong = api.get("", params={"_type": "Patient,Organization", "_include": "Observation:subject"})
        assert wrong.status_code == 400


def test_text_and_content_match_words_of_the_narrative_and_of_the_whole_resource(
        search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    """_text: the narrative as read (markup removed, character references decoded); _content: every string of the
    resource, with that narrative instead of its XHTML. Short texts are found by their index entry alone, longer
    ones (over 4,096 bytes) by reading the resource: both kinds are among the matches."""
    import html
    import random
    import re
    import unicodedata

    def folded(text: str) -> str:  # written out again here: case and accents folded, CJK kept
        return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))

    def narrative(r: dict[str, Any]) -> str:
        return folded(html.unescape(re.sub(r"<[^>]*>", " ", (r.get("text") or {}).get("div", ""))))

    def strings(v: Any) -> str:
        if isinstance(v, str):
            return folded(v)
        if isinstance(v, list):
            return "\n".join(strings(x) for x in v)
        if isinstance(v, dict):
            return "\n".join(strings(x) for k, x in v.items() if k not in ("resourceType", "data"))  # base64
        return ""

    def everything(r: dict[str, Any]) -> str:
        return strings({k: v for k, v in r.items() if k != "text"}) + "\n" + narrative(r)

    def expected(rtype: str, code: str, value: str) -> list[str]:
        text_of = narrative if code == "_text" else everything
        return sorted(r["id"] for r in stored[rtype] if any(
            all(folded(w) in text_of(r) for w in alternative.split()) for alternative in value.split(",")))

    base = search_hub.base
    cases = [("Patient", "_content", "王"), ("Patient", "_content", "CHEN,李"), ("Patient", "_text", "Peter"),
             ("Observation", "_text", "hemoglobin"), ("Observation", "_content", "2345-7 MMOL"),
             ("Patient", "_content", "小东"), ("Patient", "_content", "no-such-word-anywhere"),
             ("Patient", "_content", "xhtml")]  # in the markup only
    rng = random.Random(7)
    typed = [t for t in sorted(stored) if len(stored[t]) >= 3]
    def piece(rtype: str, code: str) -> str | None:  # a piece of a word of some resource's text
        words = (narrative if code == "_text" else everything)(rng.choice(stored[rtype])).split()
        words = [w for w in words if len(w) >= 2 and "," not in w and "\\" not in w]
        if not words:
            return None
        word = rng.choice(words)
        start = rng.randrange(len(word) - 1)
        return word[start:start + rng.randint(2, 8)]

    while len(cases) < 60:  # a piece of some resource's text, searched in its type
        rtype, code = rng.choice(typed), rng.choice(["_text", "_content", "_content"])
        if (first := piece(rtype, code)) is not None:
            cases.append((rtype, code, first))
    while len(cases) < 80:  # two pieces (AND), often of two resources: some match, some do not
        rtype, code = rng.choice(typed), rng.choice(["_text", "_content"])
        first, second = piece(rtype, code), piece(rtype, code)
        if first is not None and second is not None:
            cases.append((rtype, code, f"{first} {second}"))
    with search_hub.client() as api:
        long_found = short_found = 0
        for rtype, code, value in cases:
            want = expected(rtype, code, value)
            assert sorted(search_all(api, base, rtype, [(code, value)])) == want, (rtype, code, value)
            text_of = narrative if code == "_text" else everything
            for r in stored[rtype]:
                if r["id"] in want:
                    long_text = len(text_of(r).strip().encode()) > 4096
                    long_found += long_text
                    short_found += not long_text
        assert expected("Patient", "_content", "王") and not expected("Patient", "_content", "no-such-word-anywhere")
        assert not expected("Patient", "_content", "xhtml")
        assert long_found and short_found, (long_found, short_found)
        combined = search_all(api, base, "Patient", [("gender", "female"), ("_content", "王")])  # gender drives
        assert sorted(combined) == sorted(r["id"] for r in stored["Patient"] if r.get("gender") == "female"
                                          and "王" in everything(r))
        assert api.get("/Patient", params={"_text:exact": "x"}).status_code == 400


def test_content_skips_base64_and_finds_long_texts_by_reading_them(api: httpx.Client) -> None:
    """``data`` (an attachment's base64) is not searched; a text too long for its index entry (here 5,000
    characters of Chinese, 15,000 bytes) is found by reading the resource, a short one by its entry: each only
    by what it says, in the middle of a word too."""
    tag = uuid.uuid4().hex[:10]
    long_report = "病理诊断：" + "肺腺癌伴淋巴结转移，" * 500 + f"标记{tag}"
    made = {}
    for name, conclusion, data in (("short", f"右肺结节 {tag}", "aGVsbG8gd29ybGQ="), ("long", long_report, None)):
        report: dict[str, Any] = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "病理"},
                                  "conclusion": conclusion}
        if data:
            report["presentedForm"] = [{"contentType": "text/plain", "data": data}]
        answer = api.post("/DiagnosticReport", json=report)
        assert answer.status_code == 201, answer.text
        made[name] = answer.json()["id"]

    def found(value: str) -> set[str]:
        answer = api.get("/DiagnosticReport", params={"_content": value, "_count": "100"})
        assert answer.status_code == 200, answer.text
        return {e["resource"]["id"] for e in answer.json().get("entry", []) if e["search"]["mode"] == "match"}

    assert found(tag) == {made["short"], made["long"]}
    assert found(f"肺结节 {tag}") == {made["short"]}
    assert not found(f"肺结节 {tag} 淋巴结")  # every word must be there (AND), not the first one only
    assert found(f"淋巴结转移 {tag}") == {made["long"]}
    assert found(f"{tag[2:8]},aGVsbG8") == {made["short"], made["long"]}  # by the middle of the tag, not the base64
    assert not found("aGVsbG8gd29ybGQ")


def test_bad_search_input_is_a_clear_error(search_hub: Hub) -> None:
    with search_hub.client() as api:
        for params, where in [({"birthdate": "19x0"}, "birthdate"), ({"code:in": "http://vs"}, "code:in"),
                              ({"_sort": "nosuch"}, "_sort"), ({"_has:Nope:x:y": "1"}, "_has:Nope:x:y"),
                              ({"value-quantity": "abc"}, "value-quantity"), ({"_cursor": "!!"}, "_cursor")]:
            rtype = "Observation" if "value-quantity" in params or "code:in" in params else "Patient"
            answer = api.get(f"/{rtype}", params=params)
            assert answer.status_code == 400, (params, answer.text)
            issue = answer.json()["issue"][0]
            assert issue["diagnostics"] and issue.get("expression", [where])[0] == where, issue
        for walk in (["k", "Patient|birthdate|Lzz|p1|1"], ["k", "Patient|gender|6d616c65.|p1|1"], ["t", 5], ["x", "a"],
                     ["k", "Patient|birthdate|H8000000000000000.8000000000000000|p1|1"], "k",
                     ["m", "Patient|@absent|gender|p1|1"], ["m", "Patient|birthdate|L8000000000000000.8|p1|1"],
                     ["m", "Patient|@absent|birthdate|p1"], ["k", "Patient|@absent|birthdate|p1|1"]):
            cursor = base64.urlsafe_b64encode(json.dumps({"w": walk}).encode()).decode().rstrip("=")
            answer = api.get("/Patient", params={"_sort": "birthdate", "_cursor": cursor})  # made up, or another's
            assert answer.status_code == 400 and "cursor" in answer.json()["issue"][0]["diagnostics"], answer.text


def test_paging_to_the_end_while_writes_continue(api: httpx.Client, hub: Hub) -> None:
    """Every resource that matched throughout is seen exactly once; deleted ones vanish, nothing repeats."""
    system = f"urn:paging:{random.randrange(10**9)}"

    def make(n: int) -> str:
        body = {"resourceType": "Patient", "identifier": [{"system": system, "value": f"v{n}"}],
                "name": [{"family": "王", "given": [f"{n}"]}]}
        answer = api.post("/Patient", json=body)
        assert answer.status_code == 201
        return str(answer.json()["id"])

    ids = [make(n) for n in range(60)]
    seen: list[str] = []
    deleted: set[str] = set()
    updated: set[str] = set()
    url: str | None = f"/Patient?identifier={system}|&_count=7"
    rng = random.Random(7)
    while url:
        page = api.get(url.replace(hub.base, "")).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        for _ in range(3):  # writes between pages: new matches, updates, deletions of not-yet-seen ones
            ids.append(make(len(ids)))
            victim = rng.choice([i for i in ids if i not in seen and i not in deleted])
            assert api.delete(f"/Patient/{victim}").status_code == 204
            deleted.add(victim)
            changed = rng.choice(ids)
            if changed not in deleted:
                current = api.get(f"/Patient/{changed}").json()
                current["gender"] = "female"
                assert api.put(f"/Patient/{changed}", json=current).status_code == 200
                updated.add(changed)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen)), "a resource appeared on two pages"
    assert not set(seen) & deleted, "a resource was returned after its deletion"  # victims were not yet seen
    stable = set(ids[:60]) - deleted
    assert stable <= set(seen), f"missed {sorted(stable - set(seen))[:5]}"
    assert updated & stable, "the test updated nothing it pages over"


def _sort_key(resource: dict[str, Any], code: str, kind: str, descending: bool, base: str) -> Any:
    """What ``_sort`` orders ``resource`` by (FHIR R4 search.html#sort: the lowest value ascending, the highest
    descending; a date by its start ascending, its end descending); None: no value (last either way)."""
    found: list[Any] = []
    for v in values(resource, code):
        if kind == "string":
            found += [collated(norm(t)[:100]) for t in texts(v) if t.strip()]
        elif kind == "token":
            found += [c for _, c in codes(v)]
        elif kind == "date":
            found += [high if descending else low for low, high in spans(v)]
        elif kind == "number" and isinstance(v, int | float | Decimal) and not isinstance(v, bool):
            found.append(float(v))
        elif kind == "quantity" and isinstance(v, dict) and isinstance(v.get("value"), int | float | Decimal):
            found.append(float(v["value"]))
        elif kind == "uri" and isinstance(v, str):
            found.append(v)
    if kind == "reference":  # as written: a contained "#x" too
        found = references(resource, code, base)
    return (max(found) if descending else min(found)) if found else None


def _sorted_by(resources: dict[str, dict[str, Any]], sort: list[tuple[str, str, bool]], base: str) -> list[str]:
    """The ids of ``resources`` in the order of a ``_sort`` by several keys (code, kind, descending): each key's
    value as ``_sort_key`` gives it, a resource without one after those with one, full ties by id as the index
    keys hold them (each followed by ``|``: ``12`` before ``1``)."""
    def compare(a: str, b: str) -> int:
        for code, kind, descending in sort:
            x, y = (_sort_key(resources[r], code, kind, descending, base) for r in (a, b))
            if x != y:
                if x is None or y is None:
                    return 1 if x is None else -1
                return (1 if x < y else -1) if descending else (-1 if x < y else 1)
        return (f"{a}|" > f"{b}|") - (f"{a}|" < f"{b}|")
    return sorted(resources, key=functools.cmp_to_key(compare))


def _ids_or_failure(api: httpx.Client, base: str, path: str, params: list[tuple[str, str]], count: int,
                    failures: list[str]) -> list[str] | None:
    """The ids of every page of a search (``search_all``), or None with the reason added to ``failures``."""
    try:
        return search_all(api, base, path, params, count=count)
    except AssertionError as exc:
        failures.append(f"{path}?{'&'.join(f'{k}={v}' for k, v in params)}: {str(exc)[:200]}")
        return None


def _first_difference(got: list[str], expected: list[str]) -> str:
    """Where two orders of ids part, for a failure's message."""
    at = next((i for i, (x, y) in enumerate(zip(got, expected, strict=False)) if x != y), min(len(got), len(expected)))
    return (f"from position {at} got {got[at:at + 3]}, expected {expected[at:at + 3]} "
            f"({len(got)} of {len(expected)})")


def test_every_parameter_sorts_the_official_examples(search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    """``_sort`` by each parameter of each type, both ways, over the official examples and the generated data,
    paged to the end 7 at a time, must give the evaluator's order (resources without a value last), even with
    odd data such as an element present without a sortable value. Without another parameter, a sort by a date,
    number, quantity or token is read in index order (index_order.py), which orders equal values by their
    entries: the values must come in the evaluator's order, each resource once."""
    failures: list[str] = []
    base = search_hub.base
    checked = 0
    with search_hub.client() as api:
        for rtype in TYPES:
            universe = stored.get(rtype, [])
            for code, definition in sorted(_definitions()[rtype].items()):
                kind = definition["type"]
                if kind in ("composite", "special") or code.startswith("_") or not universe:
                    continue
                for descending in (False, True):
                    sort = f"-{code}" if descending else code
                    keyed = [(_sort_key(r, code, kind, descending, base), r["id"]) for r in universe]

                    def order(a: tuple[Any, str], b: tuple[Any, str], descending: bool = descending) -> int:
                        if a[0] != b[0]:
                            if a[0] is None or b[0] is None:
                                return 1 if a[0] is None else -1
                            return (1 if a[0] > b[0] else -1) * (-1 if descending else 1)
                        return (a[1] > b[1]) - (a[1] < b[1])
                    expected = [rid for _, rid in sorted(keyed, key=functools.cmp_to_key(order))]
                    value_of = {rid: value for value, rid in keyed}
                    got = _ids_or_failure(api, base, rtype, [("_sort", sort), ("_elements", "id")], 7, failures)
                    if got is None:
                        continue
                    checked += 1
                    if sorted(got) != sorted(expected) or \
                            [value_of[r] for r in got] != [value_of[r] for r in expected]:
                        failures.append(f"{rtype}?_sort={sort}: {_first_difference(got, expected)}")
    assert not failures, f"{len(failures)} of {checked} sorts differ:\n" + "\n".join(failures[:40])
    assert checked > 700, checked


def test_sorts_by_a_date_within_one_status_or_subject_over_the_official_examples(
        search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    """Each pair of keys.py ``SORTS_WITHIN`` over the official examples and the generated data: for every code
    of the status (any system) and up to 12 subjects or Patient compartments, ``<param>=<value>&_sort=±<date>`` or
    ``Patient/<id>/<type>?_sort=±<date>`` paged 3 at a time gives the evaluator's matches with their dates in its
    order (read within that value: one clause drives); a given name or a birth date within a family:
    ``_sort=±family,±given`` (``±birthdate``) gives the evaluator's order (each family's group taken from its
    entries within it), and ``family=<f>&_sort=±birthdate`` too (within f where no longer family starts with it)."""
    failures: list[str] = []
    base = search_hub.base
    checked = 0
    with search_hub.client() as api:
        for rtype, pairs in SORTS_WITHIN.items():
            universe = stored.get(rtype, [])
            for by, dated in pairs:
                by_kind = "reference" if by == COMPARTMENT else _definitions()[rtype][by]["type"]
                dated_kind = _definitions()[rtype][dated]["type"]
                if by_kind == "string":  # a given name or a birth date within a family name: both keys
                    for first, then in itertools.product((False, True), repeat=2):
                        sort = [(by, "string", first), (dated, dated_kind, then)]
                        text = f"{'-' * first}{by},{'-' * then}{dated}"
                        expected = _sorted_by({r["id"]: r for r in universe}, sort, base)
                        got = _ids_or_failure(api, base, rtype, [("_sort", text), ("_elements", "id")], 3, failures)
                        if got is None:
                            continue
                        checked += 1
                        if got != expected:
                            failures.append(f"{rtype}?_sort={text}: {_first_difference(got, expected)}")
                    if dated_kind == "string":
                        continue

                def held(resource: dict[str, Any], by: str = by, by_kind: str = by_kind) -> set[str]:
                    if by == COMPARTMENT:  # the Patients whose compartment holds it
                        return {r for p in patient_compartment_params(rtype) for r in references(resource, p, base)
                                if r.startswith("Patient/")}
                    if by_kind == "reference":
                        return {r for r in references(resource, by, base) if "/" in r and "://" not in r}
                    if by_kind == "string":  # a family name: its matches start with it (Hu: Huang too)
                        return {t for v in values(resource, by) for t in texts(v)}
                    return {c for v in values(resource, by) for _, c in codes(v)}
                wanted = sorted({v for r in universe for v in held(r)})
                for value in wanted[:12]:
                    has = (matcher(by, "", value, "string", base, rtype) if by_kind == "string"
                           else lambda r, value=value: value in held(r))
                    theirs = [r for r in universe if has(r)]
                    for descending in (False, True):
                        sort = f"-{dated}" if descending else dated
                        date_of = {r["id"]: _sort_key(r, dated, "date", descending, base) for r in theirs}
                        expected = _sorted_by({r["id"]: r for r in theirs}, [(dated, "date", descending)], base)
                        params = [(by, value), ("_sort", sort), ("_elements", "id")]
                        path = rtype
                        if by == COMPARTMENT:  # Patient/<id>/<type>
                            params, path = params[1:], f"{value}/{rtype}"
                        got = _ids_or_failure(api, base, path, params, 3, failures)
                        if got is None:
                            continue
                        checked += 1
                        if sorted(got) != sorted(expected) or [date_of[r] for r in got] != [date_of[r] for r in
                                                                                        expected]:
                            failures.append(f"{rtype}?{by}={value}&_sort={sort}: {got[:6]} for {expected[:6]}")

    assert not failures, f"{len(failures)} of {checked} sorts differ:\n" + "\n".join(failures[:40])
    assert checked > 90, checked


def _create_all(api: httpx.Client, resources: list[dict[str, Any]]) -> None:
    """POST ``resources`` in transactions of 500."""
    for at in range(0, len(resources), 500):
        entries = [{"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
                   for r in resources[at:at + 500]]
        done = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        assert done.status_code == 200, done.text


def _all_resources(api: httpx.Client, hub: Hub, url: str) -> dict[str, dict[str, Any]]:
    """Every match of a search by id, following its ``next`` links from ``url``."""
    found: dict[str, dict[str, Any]] = {}
    at: str | None = url
    while at:
        page = api.get(at).json()
        found.update((e["resource"]["id"], e["resource"]) for e in page.get("entry", []))
        at = next((x["url"].replace(hub.base, "") for x in page["link"] if x["relation"] == "next"), None)
    return found


def _last_page(api: httpx.Client, hub: Hub, url: str) -> httpx.Response:
    """The answer for the last page of a search, following its ``next`` links from ``url``, or the first answer
    that is not a 200."""
    answer = api.get(url)
    while answer.status_code == 200:
        nxt = next((x["url"] for x in answer.json()["link"] if x["relation"] == "next"), None)
        if nxt is None:
            break
        answer = api.get(nxt.replace(hub.base, ""))
    return answer


def test_a_large_sort_by_date_holds_every_precision_in_order_across_pages(api: httpx.Client, hub: Hub) -> None:
    """A sort no clause narrows is read in index order: descending dates by their end, short ones read by their
    start and held until none still unread can end later. Dates of every precision around one day (a day ends
    after the same day's times, a month and a period span it), ties and resources without a date must come in
    the evaluator's order on pages of 3, both ways, and the previous links must give back the same pages."""
    tag = uuid.uuid4().hex[:8]
    rng = random.Random(7)
    dated: list[Any] = ["2031-05-01", "2031-05-01T10:00:00+08:00", "2031-05-01T23:30:00+08:00", "2031-05", "2031",
                        {"start": "2031-04-30", "end": "2031-05-02"}, "2031-05-01T10:00:00+08:00",
                        {"start": "2031-05-01T09:00:00+08:00", "end": "2031-05-01T11:00:00+08:00"},
                        "2031-05-01T10:00:00.123+08:00", "2031-05-02", "2031-04-30T23:59:59+08:00",
                        "2030-12-31T20:00:00-08:00", {"start": "2031-05-01T22:00:00+08:00"}, None, None]
    for _ in range(25):
        moment = datetime(2031, 4, 29, tzinfo=ZONE) + timedelta(seconds=rng.randrange(5 * 86400))
        dated.append(rng.choice([moment.date().isoformat(), moment.isoformat(timespec="seconds"),
                                 moment.isoformat(timespec="milliseconds"), moment.isoformat()[:7]]))
    mine: dict[str, dict[str, Any]] = {}
    for i, when in enumerate(dated):
        body: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                                "code": {"coding": [{"system": f"urn:sort-test:{tag}", "code": str(i)}]}}
        if isinstance(when, dict):
            body["effectivePeriod"] = when
        elif when is not None:
            body["effectiveDateTime"] = when
        created = api.post("/Observation", json=body)
        assert created.status_code == 201, created.text
        mine[created.json()["id"]] = created.json()

    for descending in (True, False):
        # code:not drives no scan, so the walk covers every Observation of the store: ours are checked in it
        pages = pages_both_ways(api, hub, f"/Observation?_sort={'-' if descending else ''}date&code:not=urn:none|x"
                                           "&_count=3")
        got = [rid for ids in pages for rid in ids if rid in mine]
        assert sorted(got) == sorted(mine) and len(got) == len(mine)
        keyed = {rid: _sort_key(r, "date", "date", descending, hub.base) for rid, r in mine.items()}
        dated_ones = [keyed[rid] for rid in got if keyed[rid] is not None]
        assert dated_ones == sorted(dated_ones, reverse=descending), (descending, dated_ones)
        assert all(keyed[rid] is None for rid in got[len(dated_ones):]), "a resource without a date came before"

    # several values: a resource sorts by its lowest ascending, its highest descending, and comes once
    coded: dict[str, list[str]] = {}
    for codes in (["m"], ["a", "z"], ["k", "b"], ["n", "c"], ["y"], ["d"], ["x", "e", "l"]):
        body = {"resourceType": "Observation", "status": "final", "code": {"text": tag},
                "category": [{"coding": [{"system": f"urn:sort-test:{tag}", "code": f"{tag}{c}"}]} for c in codes]}
        created = api.post("/Observation", json=body)
        assert created.status_code == 201, created.text
        coded[created.json()["id"]] = codes
    for descending in (False, True):
        url = f"/Observation?_sort={'-' if descending else ''}category&code:not=urn:none|x&_count=4"
        got = [rid for ids in pages_both_ways(api, hub, url) for rid in ids if rid in coded]
        expected = sorted(coded, key=lambda rid: max(coded[rid]) if descending else min(coded[rid]), reverse=descending)
        assert got == expected, descending


def test_a_large_sort_by_a_string_puts_each_value_before_its_extensions(api: httpx.Client, hub: Hub) -> None:
    """A string sort no clause narrows is read in index order (index layout 5): a value before its extensions
    ("wang" before "wanga"), case and accents folded as in memory, Chinese by pinyin (layout 8: 陈 李 吕 王 曾 张,
    西 xi before 先 xian, 汪 before 王 by code point, Chinese after Korean), several names by the lowest ascending
    and the highest descending, resources without one last; pages of 3 both ways, and the previous links give
    back the same pages."""
    tag = "qz" + uuid.uuid4().hex[:6]  # a prefix of every family here: the walk's other Patients are skipped
    chinese = ["陈", "李", "罗", "吕", "汪", "王", "王小", "王小东", "西", "先", "曾", "张"]  # pinyin order
    families: list[list[str] | None] = [
        [tag], [f"{tag}a"], [f"{tag}A"], [f"{tag}ab"], [f"{tag}abc"], [f"{tag}b"], [f"{tag}É"], [f"{tag}e"],
        [f"{tag}ea"], *([f"{tag}{c}"] for c in reversed(chinese)), [f"{tag}김"], [f"{tag}z", f"{tag}"],
        [f"{tag}aa", f"{tag}王小"], [f"{tag} "], None]
    mine: dict[str, dict[str, Any]] = {}
    for n, names in enumerate(families):
        body: dict[str, Any] = {"resourceType": "Patient",
                                "identifier": [{"system": f"urn:sort-test:{tag}", "value": str(n)}]}
        if names is not None:
            body["name"] = [{"family": f} for f in names]
        created = api.post("/Patient", json=body)
        assert created.status_code == 201, created.text
        mine[created.json()["id"]] = created.json()

    for descending in (False, True):
        pages = pages_both_ways(api, hub, f"/Patient?_sort={'-' if descending else ''}family&gender:not=none&_count=3")
        got = [rid for ids in pages for rid in ids if rid in mine]
        assert sorted(got) == sorted(mine) and len(got) == len(mine)
        keyed = {rid: _sort_key(r, "family", "string", descending, hub.base) for rid, r in mine.items()}
        named = [keyed[rid] for rid in got if keyed[rid] is not None]
        assert len(named) == len(families) - 1  # only the last has no name
        assert named == sorted(named, reverse=descending), (descending, named)
        assert all(keyed[rid] is None for rid in got[len(named):]), "a Patient without a family name came before"
        order = [family for rid in got if len(mine[rid].get("name", [])) == 1
                 and (family := mine[rid]["name"][0]["family"][len(tag):]) in ["김", *chinese]]
        assert order == (list(reversed(["김", *chinese])) if descending else ["김", *chinese]), order


def test_a_large_sort_by_several_keys_orders_each_value_of_the_first_by_the_others(store_uri: str,
                                                                                   tmp_path: Any) -> None:
    """A sort by several keys over more matches than it may sort in memory (``search_sort_max`` 6 here) is read
    in index order of its first key, the Patients sharing a value of it ordered by the others: ties of the first
    key across pages of 3, both ways, case folded into one value, several names, Patients without a family (a
    group of their own, last) and full ties by id. More Patients with one family than it may sort in memory are a
    400 that says so, at the page that reaches them. A filtered sort whose first page passes over more Patients
    than ``search_order_budget`` (3 here) is sorted in memory when it has few matches, and stays in index order
    when it has too many for memory."""
    hub = start_hub(store_uri, tmp_path / "home", database=f"multisort_{uuid.uuid4().hex[:8]}",
                    extra={"MEDUNION_SEARCH_SORT_IN_MEMORY": "5", "MEDUNION_SEARCH_SORT_MAX": "6",
                           "MEDUNION_SEARCH_ORDER_BUDGET": "3"})
    people: list[tuple[list[str] | None, list[str] | None, str | None, str]] = [  # families, givens, born, gender
        (["li"], ["wei"], "1960-03-01", "female"), (["li"], ["Ai"], "1970", "female"),
        (["li"], None, "1955-01-02", "male"), (["Li"], ["bo"], None, "female"), (["liu"], ["z"], "1980-05", "male"),
        (["LIU"], ["b"], "1980-05-06", "female"), (["王"], ["小东"], "1990-01-01", "female"),
        (["王"], ["小"], "1990-01-01", "female"), (["王"], ["小"], "1990-01-01", "male"),
        (["li", "zhou"], ["m"], "1961", "male"), (None, ["c"], "2000", "female"), (None, ["a"], None, "male"),
        (None, None, "1999-12-31", "male"), (["Émile"], ["x"], "1975-07-07", "male")]
    try:
        with hub.client() as api:
            mine: dict[str, dict[str, Any]] = {}
            for families, givens, born, gender in people:
                names = [{"family": f, "given": givens} for f in families or [None]]
                body: dict[str, Any] = {"resourceType": "Patient", "gender": gender}
                if families or givens:
                    body["name"] = [{k: v for k, v in n.items() if v is not None} for n in names]
                if born:
                    body["birthDate"] = born
                created = api.post("/Patient", json=body)
                assert created.status_code == 201, created.text
                mine[created.json()["id"]] = created.json()

            def plan(url: str) -> str:  # which plan ran: the first page's next cursor tells
                link = next(x["url"] for x in api.get(url).json()["link"] if x["relation"] == "next")
                cursor = link.split("_cursor=")[1].split("&")[0].partition(".")[2]  # after the layout
                mark = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
                return "index" if isinstance(mark, dict) and "w" in mark and "s" in mark else "memory"

            def expected(sort: list[tuple[str, str, bool]], only: Callable[[dict[str, Any]], bool] = bool
                         ) -> list[str]:
                return _sorted_by({rid: r for rid, r in mine.items() if only(r)}, sort, hub.base)

            for sort in ([("family", "string", False), ("given", "string", False)],
                         [("family", "string", True), ("given", "string", False)],
                         [("family", "string", False), ("given", "string", True), ("birthdate", "date", False)],
                         [("birthdate", "date", True), ("family", "string", False)],
                         [("birthdate", "date", False), ("given", "string", True)]):
                text = ",".join(("-" if descending else "") + code for code, _, descending in sort)
                pages = pages_both_ways(api, hub, f"/Patient?_sort={text}&_count=3")
                assert [rid for ids in pages for rid in ids] == expected(sort), text
                assert plan(f"/Patient?_sort={text}&_count=3") == "index", text

            # pages asked for at once from one cursor: those that find its group being read wait for that read
            first = api.get("/Patient?_sort=family,given&_count=3").json()
            second = next(x["url"] for x in first["link"] if x["relation"] == "next").replace(hub.base, "")
            alone = [e["resource"]["id"] for e in api.get(second).json()["entry"]]
            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(lambda _: api.get(second), range(16)))
            assert all(r.status_code == 200 and [e["resource"]["id"] for e in r.json()["entry"]] == alone
                       for r in together)

            by_name = [("family", "string", False), ("given", "string", False)]
            female = "gender=female&_sort=family,given&_count=2"  # 7 matches: more than memory takes
            pages = pages_both_ways(api, hub, f"/Patient?{female}")
            assert [rid for ids in pages for rid in ids] == expected(by_name, lambda r: r["gender"] == "female")
            assert plan(f"/Patient?{female}") == "index"
            older = "gender=female&birthdate=lt1985&_sort=family,given&_count=2"  # 3 matches: in memory
            pages = pages_both_ways(api, hub, f"/Patient?{older}")
            assert [rid for ids in pages for rid in ids] == expected(
                by_name, lambda r: r["gender"] == "female" and r.get("birthDate", "9") < "1985")
            assert plan(f"/Patient?{older}") == "memory"

            for n in range(7):  # more Patients named zhou than a sort may order in memory
                created = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "zhou",
                                                                                         "given": [str(n)]}]})
                assert created.status_code == 201, created.text
                mine[created.json()["id"]] = created.json()
            # by given name, the group is taken from the given names within zhou: no group is sorted in memory
            pages = pages_both_ways(api, hub, "/Patient?_sort=family,given&_count=3")
            assert [rid for ids in pages for rid in ids] == expected(by_name)
            answer = _last_page(api, hub, "/Patient?_sort=family,-birthdate&_count=3")  # read whole: too many
            assert answer.status_code == 400, "the zhou Patients were sorted past search_sort_max"
            assert "share one value of the first _sort key" in answer.json()["issue"][0]["diagnostics"]
    finally:
        stop_hub(hub)


@pytest.mark.parametrize("keep", ["30", "0"])
def test_pages_inside_a_large_group_of_a_sort_by_several_keys_come_in_order_while_writes_happen(
        store_uri: str, tmp_path: Any, keep: str) -> None:
    """A group of 120 Patients with one family, sorted by given name (ties and no given among them) on pages of 7,
    both ways (and all 124 sorted by birth date, which none has, then given name: one group without a value).
    The second page asked 16 times at once right after the first comes to each. A group read whole (below: one
    gender's) is kept for the pages after the first inside it, which take their Patients from it as it was read
    (engine ``_Groups``; with ``search_sort_keep`` 0, each page reads the group again), each Patient read again.
    Between two pages, a Patient deleted, one moved to another family, one given another name and one added to
    the group ahead of the cursor: the deleted one never comes, none comes twice, the moved one comes with its new
    family only, and the order stays the evaluator's. A family's group is walked in its given names' entries within
    it, page by page: the added one comes. The same within a gender, whose group is read whole: the added one
    comes when each page reads the group again, and not when the group is kept (it comes once the group is read
    again)."""
    hub = start_hub(store_uri, tmp_path / "home", database=f"groups_{uuid.uuid4().hex[:8]}",
                    extra={"MEDUNION_SEARCH_SORT_IN_MEMORY": "5", "MEDUNION_SEARCH_SORT_KEEP": keep})
    rng = random.Random(11)
    givens = ["an", "bo", "Chen", "de", "fang", "gang", "hui", "王", "小东", None]
    people = [("zhao", rng.choice(givens), "male") for _ in range(120)]
    people += [("li", "a", "female"), ("li", None, "female"), ("wu", "x", "female"), ("Zhao", "b", "female")]
    try:
        with hub.client() as api:
            _create_all(api, [{"resourceType": "Patient", "identifier": [{"system": "urn:groups", "value": str(n)}],
                               "gender": gender, "name": [{"family": family, **({"given": [given]} if given else {})}]}
                              for n, (family, given, gender) in enumerate(people)])

            def current() -> dict[str, dict[str, Any]]:
                found = api.get("/Patient?identifier=urn:groups|&_count=1000").json()
                return {e["resource"]["id"]: e["resource"] for e in found["entry"]}

            def expected(mine: dict[str, dict[str, Any]], descending: bool) -> list[str]:
                return _sorted_by(mine, [("family", "string", descending), ("given", "string", descending)], hub.base)

            mine = current()
            # the second page asked 16 times at once right after the first: while the group is read and kept
            # behind the first page, they wait for that read (each gets the page, none hangs)
            first = api.get("/Patient?identifier=urn:groups|&_sort=family,given&_count=7").json()
            second = next(x["url"] for x in first["link"] if x["relation"] == "next").replace(hub.base, "")
            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(lambda _: api.get(second), range(16)))
            assert all(r.status_code == 200 for r in together), [r.text for r in together if r.status_code != 200]
            assert all([e["resource"]["id"] for e in r.json()["entry"]] == expected(mine, False)[7:14]
                       for r in together)
            for descending in (False, True):
                sort = "-family,-given" if descending else "family,given"
                url = f"/Patient?identifier=urn:groups|&_sort={sort}&_count=7"
                pages = pages_both_ways(api, hub, url)
                assert [rid for ids in pages for rid in ids] == expected(mine, descending), sort
                assert len(pages) == 18
            # none has a birth date: all are the group of those without a value of the first key, kept likewise
            pages = pages_both_ways(api, hub, "/Patient?identifier=urn:groups|&_sort=-birthdate,given&_count=7")
            assert [rid for ids in pages for rid in ids] == _sorted_by(
                mine, [("birthdate", "date", True), ("given", "string", False)], hub.base)

            # writes between pages: within a family (a group walked in the given names within it, page by page) and
            # within a gender (a group read whole and kept, or not with keep 0)
            for first, kind, change, within in (("family", "string", {"family": "li"}, True),
                                                ("gender", "token", {"gender": "female"}, False)):
                sort = [(first, kind, False), ("given", "string", False)]
                url = f"/Patient?identifier=urn:groups|&_sort={first},given&_count=7"
                seen: list[str] = []
                for _ in range(2):
                    page = api.get(url).json()
                    seen += [e["resource"]["id"] for e in page["entry"]]
                    url = next(x["url"].replace(hub.base, "") for x in page["link"] if x["relation"] == "next")
                ahead = [rid for rid in _sorted_by(mine, sort, hub.base) if rid not in seen]
                gone, moved, renamed = ahead[20], ahead[30], ahead[40]
                assert api.delete(f"/Patient/{gone}").status_code in (200, 204)
                for rid, changed in ((moved, change), (renamed, {"given": ["aaa"]})):
                    body = mine[rid]
                    if "gender" in changed:
                        body = {**body, **changed}
                    else:
                        body = {**body, "name": [{**body["name"][0], **changed}]}
                    assert api.put(f"/Patient/{rid}", json=body).status_code == 200
                created = api.post("/Patient", json={"resourceType": "Patient", "gender": "male",
                                                     "name": [{"family": "zhao", "given": ["zzz"]}],
                                                     "identifier": [{"system": "urn:groups", "value": "added"}]})
                assert created.status_code == 201, created.text
                added = created.json()["id"]
                while url:
                    page = api.get(url).json()
                    seen += [e["resource"]["id"] for e in page.get("entry", [])]
                    url = next((x["url"].replace(hub.base, "") for x in page["link"] if x["relation"] == "next"),
                               None)
                assert gone not in seen and moved not in seen and len(seen) == len(set(seen)), first
                now = current()
                got = [r for r in seen if r != renamed]
                assert got == [r for r in _sorted_by(now, sort, hub.base) if r in seen and r != renamed], first
                assert set(seen) >= set(now) - {moved, renamed, added}
                assert (added in seen) == (within or keep == "0"), \
                    f"{first}: a kept group was read again, or a group was kept with keep 0"
                mine = now
    finally:
        stop_hub(hub)


@pytest.mark.parametrize("keep", ["30", "0"])
def test_a_group_larger_than_memory_takes_pages_in_the_order_of_the_second_key(store_uri: str, tmp_path: Any,
                                                                               keep: str) -> None:
    """130 Patients with one family (spelled three ways) where ``search_sort_max`` is 40: a sort by several keys
    walks the second key's entries inside that group (a string, a date, a token; both ways) instead of sorting
    it in memory, so every page comes, on pages of 7 both ways, in the evaluator's order: ties of the second key
    ordered by the third and by id, several given names, a Patient with two families (in the group descending
    only), the members without a given name last. By given name or birth date, the pages walk those within the
    family (keys.py ``SORTS_WITHIN``); by identifier, the group's ids are kept for the pages after the first (with
    ``search_sort_keep`` 30, not 0): a member added after the second page is missed by the later pages (within the
    family, it comes). More members without a value of the second key than ``search_sort_max`` are a 400 that
    says so, at the page that reaches them."""
    hub = start_hub(store_uri, tmp_path / "home", database=f"bysecond_{uuid.uuid4().hex[:8]}",
                    extra={"MEDUNION_SEARCH_SORT_IN_MEMORY": "5", "MEDUNION_SEARCH_SORT_MAX": "40",
                           "MEDUNION_SEARCH_SORT_KEEP": keep})
    rng = random.Random(5)
    givens: list[list[str]] = [["an"], ["bo"], ["Chen"], ["de"], ["王"], ["小东"], ["li"], ["li", "an"], ["zz", "bo"],
                               []]
    born = [None, "1960", "1960-03-01", "1971-05", "1971-05-02", "1980-01-01", "1990"]
    names = [[{"family": rng.choice(["chen", "Chen", "CHÉN"]), "given": rng.choice(givens)}] for _ in range(130)]
    names += [[{"family": "bai", "given": ["x"]}, {"family": "chen", "given": ["a"]}]]  # bai ascending, chen descending
    names += [[{"family": "bai", "given": [g]}] for g in ("c", "b")]
    names += [[{"family": "zhou", "given": [g]}] for g in ("a", "b")]
    try:
        with hub.client() as api:
            _create_all(api, [{"resourceType": "Patient", "identifier": [{"system": "urn:big", "value": f"{n:03d}"}],
                               "name": [{k: v for k, v in name.items() if v} for name in patient],
                               **({"birthDate": b} if (b := rng.choice(born)) else {})}
                              for n, patient in enumerate(names)])
            mine = _all_resources(api, hub, "/Patient?_count=1000")

            for sort in ([("family", "string", False), ("given", "string", False)],
                         [("family", "string", True), ("given", "string", True), ("birthdate", "date", False)],
                         [("family", "string", False), ("birthdate", "date", False), ("given", "string", False)],
                         [("family", "string", True), ("identifier", "token", True)]):
                text = ",".join(("-" if descending else "") + code for code, _, descending in sort)
                pages = pages_both_ways(api, hub, f"/Patient?_sort={text}&_count=7")
                assert [rid for ids in pages for rid in ids] == _sorted_by(mine, sort, hub.base), text

            # a chen Patient added after the second page: by identifier, the group's ids kept (keep 30), its later
            # pages miss it; by given name or birth date, the pages walk those within chen and meet it
            for text, within in (("family,identifier", False), ("family,given", True), ("family,birthdate", True)):
                second = text.split(",")[1]
                sort = [("family", "string", False), (second, {"identifier": "token", "given": "string",
                                                                "birthdate": "date"}[second], False)]
                url: str | None = f"/Patient?_sort={text}&_count=7"
                seen: list[str] = []
                for _ in range(2):
                    page = api.get(url).json()
                    seen += [e["resource"]["id"] for e in page["entry"]]
                    url = next(x["url"].replace(hub.base, "") for x in page["link"] if x["relation"] == "next")
                added = api.post("/Patient", json={"resourceType": "Patient", "birthDate": "1961",
                                                   "identifier": [{"system": "urn:big", "value": "999"}],
                                                   "name": [{"family": "chen", "given": ["zzz"]}]})
                assert added.status_code == 201, added.text
                while url:
                    page = api.get(url).json()
                    seen += [e["resource"]["id"] for e in page.get("entry", [])]
                    url = next((x["url"].replace(hub.base, "") for x in page["link"] if x["relation"] == "next"),
                               None)
                assert [rid for rid in seen if rid in mine] == _sorted_by(mine, sort, hub.base), text
                assert (added.json()["id"] in seen) == (within or keep == "0"), \
                    f"{text}: members kept with keep 0, or not with keep 30"

            _create_all(api, [{"resourceType": "Patient", "name": [{"family": "chen"}]} for _ in range(40)])
            answer = _last_page(api, hub, "/Patient?_sort=family,given&_count=7")
            assert answer.status_code == 400, "more chen Patients without a given name were sorted than memory takes"
            assert "have none of the second" in answer.json()["issue"][0]["diagnostics"]
    finally:
        stop_hub(hub)


def test_a_group_sparse_among_the_second_keys_entries_is_read_whole(store_uri: str, tmp_path: Any) -> None:
    """A large group whose members' second-key values lie past many other resources' (110 Patients named chen, given
    names x to z, behind 1,100 named bai, given a) is read whole once the walk of the second key would read four
    entries per member, and the pages, 100 at a time both ways, still come in the evaluator's order."""
    hub = start_hub(store_uri, tmp_path / "home", database=f"sparse_{uuid.uuid4().hex[:8]}",
                    extra={"MEDUNION_SEARCH_SORT_IN_MEMORY": "5"})
    rng = random.Random(3)
    names = [("bai", ["a"])] * 1100 + [("chen", rng.choice([["x"], ["y"], ["z"], []])) for _ in range(110)]
    try:
        with hub.client() as api:
            _create_all(api, [{"resourceType": "Patient", "name": [{"family": f, "given": g} if g else {"family": f}]}
                              for f, g in names])
            mine = _all_resources(api, hub, "/Patient?_count=1000")
            assert len(mine) == len(names)
            sort = [("family", "string", False), ("given", "string", False)]
            pages = pages_both_ways(api, hub, "/Patient?_sort=family,given&_count=100")
            assert [rid for ids in pages for rid in ids] == _sorted_by(mine, sort, hub.base)
    finally:
        stop_hub(hub)


def _walk_with_plans(api: httpx.Client, hub: Hub, url: str) -> tuple[list[str], list[str]]:
    """The ids of every page of a sorted search from ``url`` on, and the plan that each ``next`` link goes on with,
    as its cursor says: ``index`` (read in index order) or ``memory`` (every match read and sorted)."""
    at: str | None = url
    ids: list[str] = []
    plans: list[str] = []
    while at:
        answer = api.get(at)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        ids += [e["resource"]["id"] for e in page.get("entry", [])]
        at = next((x["url"].replace(hub.base, "") for x in page["link"] if x["relation"] == "next"), None)
        if at:
            cursor = at.split("_cursor=")[1].split("&")[0].partition(".")[2]  # after the layout
            mark = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            plans.append("index" if isinstance(mark, dict) and "w" in mark else "memory")
    return ids, plans


def test_a_sort_that_reads_too_much_in_index_order_is_sorted_in_memory(store_uri: str, tmp_path: Any) -> None:
    """Past ``search_sort_in_memory`` keys a sort walks its parameter's entries; when the first page reads more
    than ``search_order_budget`` resources to fill (a filter selective beside the type), the search is sorted in
    memory instead. Both plans give the evaluator's order, page after page; the cursor tells which ran."""
    hub = start_hub(store_uri, tmp_path / "home", database=f"order_{uuid.uuid4().hex[:8]}",
                    extra={"MEDUNION_SEARCH_SORT_IN_MEMORY": "5", "MEDUNION_SEARCH_ORDER_BUDGET": "40"})
    try:
        with hub.client() as api:
            made: dict[str, tuple[str, str]] = {}
            for i in range(90):  # the rare ones are the oldest: the descending walk meets them last
                kind = "rare" if i < 8 else "common"
                body = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                        "category": [{"coding": [{"system": "urn:order-test", "code": kind}]}],
                        "effectiveDateTime": (datetime(2030, 1, 1, tzinfo=ZONE) + timedelta(hours=i)).isoformat()}
                created = api.post("/Observation", json=body)
                assert created.status_code == 201, created.text
                made[created.json()["id"]] = (kind, body["effectiveDateTime"])

            for kind, plan in (("common", "index"), ("rare", "memory")):
                url = f"/Observation?category=urn:order-test|{kind}&_sort=-date&_count=3"
                ids, plans = _walk_with_plans(api, hub, url)
                mine = [r for r, (k, _) in made.items() if k == kind]
                expected = sorted(mine, key=lambda r: made[r][1], reverse=True)
                assert ids == expected, kind
                assert plans and set(plans) == {plan}, (kind, plans)
    finally:
        stop_hub(hub)


def _authored(i: int, start: datetime) -> dict[str, str]:
    """``authoredOn`` of the ``i``-th order: none, a day (an entry by its end too) or a second, each on its own day."""
    if i % 10 == 3:
        return {}
    day = start + timedelta(days=i)
    return {"authoredOn": day.date().isoformat() if i % 4 == 0 else (day + timedelta(seconds=i)).isoformat()}


def test_a_worklist_reads_the_dates_of_its_status_alone(store_uri: str, tmp_path: Any) -> None:
    """``ServiceRequest?status=…&_sort=±authored`` reads the ``authored`` entries kept within that status (keys.py
    ``SORTS_WITHIN``): pages in the evaluator's order both ways, every one in index order, even for a status
    that the date's own entries would meet last, past more than ``search_order_budget`` orders of the others
    (sorted in memory then: the test above), or a status of a few orders. An update that changes an order's status
    moves it between lists."""
    hub = start_hub(store_uri, tmp_path / "home", database=f"worklist_{uuid.uuid4().hex[:8]}",
                    extra={"MEDUNION_SEARCH_SORT_IN_MEMORY": "5", "MEDUNION_SEARCH_ORDER_BUDGET": "40"})
    start = datetime(2031, 1, 1, 8, tzinfo=ZONE)
    try:
        with hub.client() as api:
            patient = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "周"}]}).json()["id"]
            bodies = []
            for i in range(150):  # on-hold: the oldest, so met last by a descending walk of every order; 3 drafts
                status = "on-hold" if i < 12 else "draft" if i in (20, 77, 140) else "active" if i % 2 else "completed"
                bodies.append({"resourceType": "ServiceRequest", "status": status, "intent": "order",
                               "subject": {"reference": f"Patient/{patient}"}, **_authored(i, start)})
            _create_all(api, bodies)
            made = _all_resources(api, hub, "/ServiceRequest?_count=1000")
            assert len(made) == len(bodies)

            def check(status: str, count: int = 4) -> None:
                mine = {r: body for r, body in made.items() if body["status"] == status}
                for descending in (True, False):
                    url = f"/ServiceRequest?status={status}&_sort={'-' if descending else ''}authored&_count={count}"
                    expected = _sorted_by(mine, [("authored", "date", descending)], hub.base)
                    ids, plans = _walk_with_plans(api, hub, url)
                    assert ids == expected, (status, descending)
                    assert set(plans) == {"index"}, (status, descending, plans)
                    assert [rid for page in pages_both_ways(api, hub, url) for rid in page] == expected

            for status in ("on-hold", "active", "completed"):
                check(status)
            check("draft", 2)  # fewer than search_sort_in_memory: still read in index order, nothing else read
            moved = {"on-hold": next(r for r, b in made.items() if b["status"] == "active"),
                     "active": next(r for r, b in made.items() if b["status"] == "on-hold")}
            for status, rid in moved.items():
                made[rid] = {**made[rid], "status": status}
                answer = api.put(f"/ServiceRequest/{rid}", json=made[rid])
                assert answer.status_code == 200, answer.text
            check("on-hold")
            check("active")
    finally:
        stop_hub(hub)


def test_a_worklist_by_priority_then_latest_first_takes_a_large_priority_by_its_dates(store_uri: str,
                                                                                       tmp_path: Any) -> None:
    """``_sort=priority,-authored``: a priority shared by more orders than ``search_sort_max`` is taken in the order
    of the ``authored`` entries walked down from the cursor's date (engine ``_by_second_key``; a descending date's
    position names its end, index_order.py ``start_of``), not read whole (which is a 400 past that cap). Dates of
    every precision (a year or a month ends after the seconds inside it), ties of one date, orders without one
    (last within their priority); alone and beside a status, both directions of the first key and of the second,
    pages both ways in the evaluator's order. Then with 1,100 asap orders, more than ``_Groups.BY_IDS``: the walk
    of the dates checks each order it meets for its priority instead of reading the group's ids first (which past
    ten times ``search_sort_max`` is a 400)."""
    hub = start_hub(store_uri, tmp_path / "home", database=f"priorities_{uuid.uuid4().hex[:8]}",
                    extra={"MEDUNION_SEARCH_SORT_IN_MEMORY": "5", "MEDUNION_SEARCH_SORT_MAX": "60"})
    rng = random.Random(5)
    moments = ["2031", "2031-03", "2031-03-04", "2031-03-04T09:15:00+08:00", "2031-03-04T09:15:00.5+08:00",
               "2030-12-31T23:59:59+08:00", "2031-12-31", "2032-01-01T00:00:00+08:00"]
    def orders(n: int, priority: Callable[[int], str]) -> list[dict[str, Any]]:
        bodies = []
        for i in range(n):
            when = rng.choice(moments) if i % 3 == 0 else None if i % 17 == 5 else (
                datetime(2031, 1, 1, 8, tzinfo=ZONE) + timedelta(hours=rng.randrange(8000))).isoformat()
            bodies.append({"resourceType": "ServiceRequest", "intent": "order", "priority": priority(i),
                           "status": "active" if rng.random() < 0.6 else "completed",
                           "subject": {"display": "周"}, **({"authoredOn": when} if when else {})})
        return bodies

    def check(api: httpx.Client, counts: tuple[int, int]) -> None:
        made = _all_resources(api, hub, "/ServiceRequest?_count=1000")
        for query, count in zip(("", "status=active&"), counts, strict=True):
            mine = {rid: r for rid, r in made.items() if not query or r["status"] == "active"}
            for first, second in ((False, True), (True, True), (False, False)):
                sort = f"{'-' if first else ''}priority,{'-' if second else ''}authored"
                url = f"/ServiceRequest?{query}_sort={sort}&_count={count}"
                expected = _sorted_by(mine, [("priority", "token", first), ("authored", "date", second)], hub.base)
                ids, plans = _walk_with_plans(api, hub, url)
                assert ids == expected, url
                assert set(plans) == {"index"}, (url, plans)
                assert [rid for page in pages_both_ways(api, hub, url) for rid in page] == expected, url

    try:
        with hub.client() as api:
            # 130 routine: more than the sort may order in memory as one group
            _create_all(api, orders(170, lambda i: "routine" if i < 130 else "urgent" if i < 155 else "stat"))
            check(api, (7, 5))
            # a new group (the routine group's ids are kept for its pages after the first: not written into here)
            _create_all(api, orders(1100, lambda i: "asap"))
            check(api, (40, 30))
    finally:
        stop_hub(hub)


def _without_entries(db: Any, rtype: str, code: str) -> int:
    """Take the entries whose code starts with ``code`` from the database's resources of ``rtype`` (their versions'
    ``ix`` and ``search_index``), as a hub of a layout before them left it; how many index keys went."""
    for doc in db["resources"].find({"_id": {"$regex": f"^{rtype}/"}}, {"ix": 1}):
        kept = [i for i in doc["ix"].split(" ") if not i.startswith(code)]
        db["resources"].update_one({"_id": doc["_id"]}, {"$set": {"ix": " ".join(kept)}})
    return int(db["search_index"].delete_many({"_id": {"$regex": f"^{rtype}\\|{re.escape(code)}"}}).deleted_count)


def _upgrading_elsewhere(db: Any, layout: int) -> None:
    """Make the database a store of index layout ``layout`` whose upgrade another hub instance has started."""
    db["jobs"].replace_one({"_id": LAYOUT_MARKER}, {"_id": LAYOUT_MARKER, "layout": layout})
    db["jobs"].insert_one({"_id": f"{LAYOUT_MARKER}-{INDEX_LAYOUT}", "o": "another instance"})


def _upgrading_here(store_uri: str, home: Any, database: str, extra: dict[str, str]) -> Hub:
    """A hub that takes over the upgrade of the database (``_upgrading_elsewhere``), once it has completed."""
    with MongoClient(store_uri) as mongo:
        mongo[database]["jobs"].delete_one({"_id": f"{LAYOUT_MARKER}-{INDEX_LAYOUT}"})
    hub = start_hub(store_uri, home, database=database, extra=extra)
    with MongoClient(store_uri) as mongo:
        deadline = time.monotonic() + 60
        while (mongo[database]["jobs"].find_one({"_id": LAYOUT_MARKER}) or {}).get("layout") != INDEX_LAYOUT:
            if time.monotonic() > deadline:
                stop_hub(hub)
                raise AssertionError("the upgrade did not finish within 60 s")
            time.sleep(0.2)
    return hub


def _across_upgrade(store_uri: str, home: Any, database: str, extra: dict[str, str], rtype: str, code: str,
                    layout: int, count: int, check: Callable[[httpx.Client, Hub, bool], None]) -> None:
    """Take the ``count`` entries whose code starts with ``code`` from the database's ``rtype`` resources, as a hub
    of ``layout`` left them, with its upgrade started by another instance: ``check(api, hub, False)`` on a hub then;
    then a hub that takes the upgrade over, the entries back, and ``check(api, hub, True)``."""
    with MongoClient(store_uri) as mongo:
        db = mongo[database]
        assert _without_entries(db, rtype, code) == count
        _upgrading_elsewhere(db, layout)
    hub = start_hub(store_uri, home, database=database, extra=extra)
    try:
        with hub.client() as api:
            check(api, hub, False)
    finally:
        stop_hub(hub)
    hub = _upgrading_here(store_uri, home, database, extra)
    try:
        with MongoClient(store_uri) as mongo:
            whole = {"_id": {"$regex": f"^{rtype}\\|{re.escape(code)}"}}
            assert mongo[database]["search_index"].count_documents(whole) == count
        with hub.client() as api:
            check(api, hub, True)
    finally:
        stop_hub(hub)


def test_a_worklist_on_a_store_indexed_before_those_entries_reads_the_dates_themselves(store_uri: str,
                                                                                      tmp_path: Any) -> None:
    """A store of layout 8 has no entries of dates within a status: until its upgrade has indexed every order, a
    worklist walks the ``authored`` entries themselves (within the status, it would find none of them); a page
    read so goes on so after the upgrade, and the next first page reads the new entries."""
    home, database = tmp_path / "home", f"within_{uuid.uuid4().hex[:8]}"
    extra = {"MEDUNION_SEARCH_SORT_IN_MEMORY": "2"}
    start = datetime(2033, 5, 1, 8, tzinfo=ZONE)
    url = "/ServiceRequest?status=on-hold&_sort=-authored&_count=3"
    hub = start_hub(store_uri, home, database=database, extra=extra)
    try:
        with hub.client() as api:
            _create_all(api, [{"resourceType": "ServiceRequest", "status": "on-hold" if i % 3 else "active",
                               "intent": "order", "subject": {"reference": "Patient/someone"}, **_authored(i, start)}
                              for i in range(40)])
            made = _all_resources(api, hub, "/ServiceRequest?_count=1000")
            expected = _sorted_by({r: b for r, b in made.items() if b["status"] == "on-hold"},
                                  [("authored", "date", True)], hub.base)
            assert _walk_with_plans(api, hub, url) == (expected, ["index"] * ((len(expected) - 1) // 3))
    finally:
        stop_hub(hub)
    with MongoClient(store_uri) as mongo:  # as a hub of layout 8 left it; another instance is upgrading it
        db = mongo[database]
        within = {"_id": {"$regex": r"^ServiceRequest\|authored@"}}
        assert _without_entries(db, "ServiceRequest", "authored@") >= 20
        _upgrading_elsewhere(db, WITHIN_LAYOUT - 1)
    hub = start_hub(store_uri, home, database=database, extra=extra)
    try:
        with hub.client() as api:
            assert _walk_with_plans(api, hub, url)[0] == expected
            first = api.get(url).json()
            nxt = next(x["url"].replace(hub.base, "") for x in first["link"] if x["relation"] == "next")
    finally:
        stop_hub(hub)
    hub = _upgrading_here(store_uri, home, database, extra)
    try:
        with MongoClient(store_uri) as mongo:
            db = mongo[database]
            assert db["search_index"].count_documents(within) >= 20
        with hub.client() as api:
            rest, _ = _walk_with_plans(api, hub, nxt)
            assert [e["resource"]["id"] for e in first["entry"]] + rest == expected
            assert _walk_with_plans(api, hub, url)[0] == expected
    finally:
        stop_hub(hub)


def test_a_compartment_on_a_store_indexed_before_its_entries_reads_the_dates_themselves(store_uri: str,
                                                                                         tmp_path: Any) -> None:
    """A store of layout 9 has no Observation dates within the Patient compartment: until its upgrade completes,
    ``Patient/<id>/Observation?_sort=-date`` walks the dates themselves (within the compartment it would find
    none of them), and afterwards reads the new entries."""
    home, database = tmp_path / "home", f"compartment_{uuid.uuid4().hex[:8]}"
    extra = {"MEDUNION_SEARCH_SORT_IN_MEMORY": "2"}
    start = datetime(2034, 2, 1, 8, tzinfo=ZONE)
    hub = start_hub(store_uri, home, database=database, extra=extra)
    try:
        with hub.client() as api:
            pid = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "吴"}]}).json()["id"]
            _create_all(api, [{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                               "subject": {"reference": f"Patient/{pid if i % 2 else 'someone'}"},
                               "effectiveDateTime": (start + timedelta(hours=i)).isoformat()} for i in range(30)])
            made = _all_resources(api, hub, "/Observation?_count=1000")
            expected = _sorted_by({r: b for r, b in made.items() if b["subject"]["reference"] == f"Patient/{pid}"},
                                  [("date", "date", True)], hub.base)
            url = f"/Patient/{pid}/Observation?_sort=-date&_count=4"
            assert _walk_with_plans(api, hub, url)[0] == expected
    finally:
        stop_hub(hub)

    def check(api: httpx.Client, hub: Hub, upgraded: bool) -> None:
        walked = _walk_with_plans(api, hub, url)
        assert walked[0] == expected
        if upgraded:
            assert walked == (expected, ["index"] * 3)

    _across_upgrade(store_uri, home, database, extra, "Observation", "date@Patient@",
                    within_layout(COMPARTMENT, "date") - 1, 30, check)  # both patients'


def test_a_sort_by_name_on_a_store_indexed_before_given_names_within_families(store_uri: str,
                                                                              tmp_path: Any) -> None:
    """A store of layout 10 has no given names within family names: until its upgrade completes,
    ``_sort=family,given`` takes each family's group from the family's and given names' own entries (within the
    family it would find none of them), and afterwards from the new entries (one per Patient with a given name, a
    ``~`` one for the Patient without)."""
    home, database = tmp_path / "home", f"names_{uuid.uuid4().hex[:8]}"
    extra = {"MEDUNION_SEARCH_SORT_IN_MEMORY": "2"}
    hub = start_hub(store_uri, home, database=database, extra=extra)
    givens = ["an", "bo", "王", "小东", "Chen", None]
    try:
        with hub.client() as api:
            _create_all(api, [{"resourceType": "Patient", "name": [
                {"family": ["zhao", "li", "王"][i % 3], **({"given": [g]} if (g := givens[i % 6]) else {})}]}
                for i in range(30)])
            made = _all_resources(api, hub, "/Patient?_count=1000")
            expected = {sort: _sorted_by(made, [("family", "string", sort[0] == "-"),
                                                ("given", "string", "-g" in sort)], hub.base)
                        for sort in ("family,given", "-family,-given", "family,-given")}
            for sort, ids in expected.items():
                assert _walk_with_plans(api, hub, f"/Patient?_sort={sort}&_count=4")[0] == ids, sort
    finally:
        stop_hub(hub)

    def check(api: httpx.Client, hub: Hub, upgraded: bool) -> None:
        for sort, ids in expected.items():
            assert _walk_with_plans(api, hub, f"/Patient?_sort={sort}&_count=4")[0] == ids, sort

    _across_upgrade(store_uri, home, database, extra, "Patient", "given@family@", within_layout("family", "given") - 1,
                    30, check)


def test_a_name_and_birth_date_search_on_a_store_indexed_before_birth_dates_within_families(store_uri: str,
                                                                                          tmp_path: Any) -> None:
    """A store of layout 15 has no birth dates within family names: until its upgrade completes,
    ``Patient?family=zhao&birthdate=ge1970`` and ``_sort=family,-birthdate`` read the families' and the dates' own
    entries, and afterwards the new ones (two per Patient with a birth date, a ``~`` one for the Patient without),
    with the same matches in the same order. The upgrade re-indexes the Patients alone: no other type's entries
    changed at layout 16."""
    home, database = tmp_path / "home", f"born_{uuid.uuid4().hex[:8]}"
    extra = {"MEDUNION_SEARCH_SORT_IN_MEMORY": "2"}
    born = ["1960", "1970-05", "1971-02-03", "1990", None]
    hub = start_hub(store_uri, home, database=database, extra=extra)
    try:
        with hub.client() as api:
            _create_all(api, [{"resourceType": "Patient", "name": [{"family": ["zhao", "li", "王"][i % 3]}],
                               **({"birthDate": b} if (b := born[i % 5]) else {})} for i in range(30)])
            _create_all(api, [{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}])
            made = _all_resources(api, hub, "/Patient?_count=1000")
            searches = {"/Patient?family=zhao&birthdate=ge1970&_count=4": sorted(
                            r for r, b in made.items() if b["name"][0]["family"] == "zhao" and b.get("birthDate", "0")
                            >= "1970"),
                        "/Patient?family=王&birthdate=lt1980&_count=4": sorted(
                            r for r, b in made.items() if b["name"][0]["family"] == "王" and "birthDate" in b
                            and b["birthDate"] < "1980")}
            ordered = _sorted_by(made, [("family", "string", False), ("birthdate", "date", True)], hub.base)
            assert all(searches.values())
    finally:
        stop_hub(hub)

    def check(api: httpx.Client, hub: Hub, upgraded: bool) -> None:
        for url, ids in searches.items():
            assert sorted(_walk_with_plans(api, hub, url)[0]) == ids, url
        assert _walk_with_plans(api, hub, "/Patient?_sort=family,-birthdate&_count=4")[0] == ordered
        if upgraded:
            with MongoClient(store_uri) as mongo:
                job = mongo[database]["jobs"].find_one({"kind": "reindex", "layout": INDEX_LAYOUT})
            assert job is not None and job["types"] == ["Patient"] and job["status"] == "completed", job

    _across_upgrade(store_uri, home, database, extra, "Patient", "birthdate@family@",
                    within_layout("family", "birthdate") - 1, sum(2 if born[i % 5] else 1 for i in range(30)), check)


def test_a_patients_timeline_reads_the_dates_of_its_observations_alone(store_uri: str, tmp_path: Any) -> None:
    """``Observation?patient=…&_sort=-date`` reads the ``date`` entries kept within the subject's id: one
    patient's observations in the evaluator's order, in index order, though the other patient's newer ones
    outnumber ``search_order_budget``. The run of an id holds every type's: ``subject=<id>`` finds the Group's
    of that id too, ``patient=<id>`` and ``subject=Patient/<id>`` only the patient's. The compartment (subject or
    performer: three of the others' name the patient as performer) is read within its own run, whether searched as
    ``Patient/<id>/Observation`` or by a ``patient/``-scoped app; the Patient compartment of DiagnosticReport is
    its subject alone: ``Patient/<id>/DiagnosticReport?_sort=-date`` is read within the subject's run."""
    hub = start_hub(store_uri, tmp_path / "home", database=f"timeline_{uuid.uuid4().hex[:8]}",
                    extra={"MEDUNION_SEARCH_SORT_IN_MEMORY": "5", "MEDUNION_SEARCH_ORDER_BUDGET": "40"})
    start = datetime(2032, 3, 1, 9, tzinfo=ZONE)
    try:
        with hub.client() as api:
            mine, other = (api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": f}]}).json()["id"]
                           for f in ("钱", "孙"))
            group = api.put(f"/Group/{mine}", json={"resourceType": "Group", "id": mine, "type": "person",
                                                    "actual": True})
            assert group.status_code == 201, group.text
            bodies = []
            for i in range(130):  # this patient's first (the oldest), the other's, then the group's; no two end at once
                subject = f"Patient/{mine}" if i < 60 else (f"Patient/{other}" if i < 120 else f"Group/{mine}")
                performer = [{"reference": f"Patient/{mine}"}] if i in (61, 90, 125) else []  # in its compartment
                when = start + timedelta(hours=i)
                end = when + timedelta(minutes=25 + i, seconds=7)
                timing = ({"effectivePeriod": {"start": when.isoformat(), "end": end.isoformat()}} if i % 3 == 0 else
                          {} if i % 11 == 5 else {"effectiveDateTime": when.isoformat()})
                bodies.append({"resourceType": "Observation", "status": "final", "code": {"text": "血红蛋白"},
                               "subject": {"reference": subject}, **timing,
                               **({"performer": performer} if performer else {})})
            _create_all(api, bodies)
            made = _all_resources(api, hub, "/Observation?_count=1000")
            assert len(made) == len(bodies)
            reports = [{"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "血常规"},
                        "subject": {"reference": f"Patient/{mine if i < 10 else other}"},  # the patient's: the oldest
                        **({"effectiveDateTime": (start + timedelta(hours=i, minutes=7)).isoformat()} if i % 9 else {})}
                       for i in range(150)]
            _create_all(api, reports)
            theirs = {r: body for r, body in _all_resources(api, hub, "/DiagnosticReport?_count=1000").items()
                      if body["subject"]["reference"] == f"Patient/{mine}"}
            for descending in (True, False):  # the compartment is the subject alone: read within it
                ids, plans = _walk_with_plans(api, hub, f"/Patient/{mine}/DiagnosticReport?_sort="
                                                        f"{'-' if descending else ''}date&_count=4")
                assert ids == _sorted_by(theirs, [("date", "date", descending)], hub.base), descending
                assert set(plans) == {"index"}, (descending, plans)
            held = {r for r, body in made.items() if body["subject"]["reference"] == f"Patient/{mine}"
                    or body.get("performer", [{}])[0].get("reference") == f"Patient/{mine}"}
            compartment = {r: made[r] for r in held}
            with hub.client("patient/Observation.rs", patient=mine) as app:  # every search within the compartment
                for client, url in ((api, f"/Patient/{mine}/Observation?_sort=-date&_count=7"),
                                    (app, "/Observation?_sort=-date&_count=7"), (api, f"/Patient/{mine}/Observation"
                                                                                      "?_sort=date&_count=7")):
                    ids, plans = _walk_with_plans(client, hub, url)
                    assert ids == _sorted_by(compartment, [("date", "date", "-date" in url)], hub.base), url
                    assert set(plans) == {"index"}, (url, plans)
            for query, subjects in ((f"patient={mine}", {f"Patient/{mine}"}),
                                    (f"subject=Patient/{mine}", {f"Patient/{mine}"}),
                                    (f"subject={mine}", {f"Patient/{mine}", f"Group/{mine}"}),
                                    (f"subject:Group={mine}", {f"Group/{mine}"})):
                theirs = {r: body for r, body in made.items() if body["subject"]["reference"] in subjects}
                for descending in (True, False):
                    url = f"/Observation?{query}&_sort={'-' if descending else ''}date&_count=7"
                    ids, plans = _walk_with_plans(api, hub, url)
                    assert ids == _sorted_by(theirs, [("date", "date", descending)], hub.base), (query, descending)
                    if "Group" not in query:  # the group's ascending come past the patient's 60: over the budget
                        assert set(plans) <= {"index"}, (query, descending, plans)
    finally:
        stop_hub(hub)


def test_elements_present_without_a_searchable_value_break_no_search(api: httpx.Client) -> None:
    """A Reference with only a display, a CodeableConcept with only text, an Address with only a use: each is
    indexed as present without a value (for :missing). Includes, _has, _sort and :contains must pass over
    them: HL7 v2 feeds send exactly such references."""
    tag = f"t{random.randrange(10**9)}"
    meta = {"tag": [{"system": "urn:present-test", "code": tag}]}

    def create(body: dict[str, Any]) -> str:
        answer = api.post(f"/{body['resourceType']}", json={**body, "meta": meta})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    patient = create({"resourceType": "Patient", "name": [{"family": "王", "given": ["小东"]}],
                      "address": [{"city": "上海"}]})
    bare = create({"resourceType": "Patient", "name": [{"family": "李"}], "address": [{"use": "home"}]})
    coded = create({"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient}"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}})
    texted = create({"resourceType": "Observation", "status": "final", "subject": {"display": "王小东"},
                     "code": {"text": "血常规"}})
    tagged = ("_tag", f"urn:present-test|{tag}")

    def ids(path: str, params: list[tuple[str, str]], mode: str = "match") -> list[str]:
        answer = api.get(path, params=[tagged, *params])
        assert answer.status_code == 200, answer.text
        return [e["resource"]["id"] for e in answer.json().get("entry", []) if e["search"]["mode"] == mode]

    assert sorted(ids("/Observation", [])) == sorted([coded, texted])
    assert ids("/Observation", [("_include", "Observation:subject")], "include") == [patient]
    assert ids("/Observation", [("subject:missing", "false"), ("code:missing", "false")]) != []
    assert ids("/Patient", [("_has:Observation:subject:status", "final")]) == [patient]
    assert ids("/Patient", [("_revinclude", "Observation:subject")], "include") == [coded]
    assert ids("/Observation", [("_sort", "code")]) == [coded, texted]  # without a sortable value: last
    assert ids("/Observation", [("_sort", "-code")]) == [coded, texted]
    assert ids("/Patient", [("address:contains", "海")]) == [patient]
    assert sorted(ids("/Patient", [("address:missing", "false")])) == sorted([patient, bare])


def test_type_restricted_references_match_versioned_and_absolute_urls(api: httpx.Client, hub: Hub) -> None:
    """``patient`` is ``subject.where(resolve() is Patient)``: a reference to a version of the patient, and one
    by the absolute URL of a patient of another server, are references to a Patient (both were missed)."""
    tag = f"t{random.randrange(10**9)}"
    meta = {"tag": [{"system": "urn:reference-test", "code": tag}]}
    pid = f"p{random.randrange(10**9)}"
    assert api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}).status_code == 201
    foreign = f"https://other.example.org/fhir/Patient/{pid}"

    def observe(reference: str) -> str:
        answer = api.post("/Observation", json={"resourceType": "Observation", "status": "final", "meta": meta,
                                                "code": {"text": "CEA"}, "subject": {"reference": reference}})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    versioned, there, here, group = (observe(f"Patient/{pid}/_history/1"), observe(foreign),
                                     observe(f"{hub.base}/Patient/{pid}"), observe(f"Group/{pid}"))

    def ids(params: list[tuple[str, str]], mode: str = "match") -> list[str]:
        answer = api.get("/Observation", params=[("_tag", f"urn:reference-test|{tag}"), *params])
        assert answer.status_code == 200, answer.text
        return sorted(e["resource"]["id"] for e in answer.json().get("entry", []) if e["search"]["mode"] == mode)

    assert ids([("patient", pid)]) == sorted([versioned, here])
    assert ids([("patient", f"Patient/{pid}")]) == sorted([versioned, here])
    assert ids([("patient", f"{hub.base}/Patient/{pid}")]) == sorted([versioned, here])
    assert ids([("patient", foreign)]) == [there]
    assert ids([("patient", f"Group/{pid}")]) == []
    assert ids([("subject", f"Group/{pid}")]) == [group]
    assert ids([("subject:Patient", pid)]) == sorted([versioned, here])
    assert ids([("_id", versioned), ("_include", "Observation:patient")], "include") == [pid]
    # AuditEvent ``patient`` has entries of its own (no plain parameter has its expression)
    audit = api.post("/AuditEvent", json={
        "resourceType": "AuditEvent", "meta": meta, "recorded": "2026-11-26T10:00:00+08:00",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "agent": [{"requestor": True, "who": {"reference": f"Patient/{pid}/_history/1"}}],
        "source": {"observer": {"display": "MedUnion Hub"}}})
    assert audit.status_code == 201, audit.text
    found = api.get("/AuditEvent", params={"patient": pid, "_tag": f"urn:reference-test|{tag}"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [audit.json()["id"]]


def test_token_text_finds_chinese_anywhere_and_other_words_by_prefix(api: httpx.Client) -> None:
    """``code:text`` is indexed (each word of a code's text, and each tail of a Chinese run): a Chinese value
    is found anywhere in the text, any other value at the start of a word."""
    tag = f"t{random.randrange(10**9)}"
    made = api.post("/Condition", json={
        "resourceType": "Condition", "meta": {"tag": [{"system": "urn:text-test", "code": tag}]},
        "subject": {"reference": "Patient/example"},
        "code": {"text": "原发性肺癌（右上叶）", "coding": [{"system": "http://snomed.info/sct", "code": "93880001",
                                                      "display": "Primary malignant neoplasm of lung"}]}})
    assert made.status_code == 201, made.text

    def found(value: str) -> bool:
        answer = api.get("/Condition", params={"code:text": value, "_tag": f"urn:text-test|{tag}"})
        assert answer.status_code == 200, answer.text
        return [e["resource"]["id"] for e in answer.json().get("entry", [])] == [made.json()["id"]]

    for value in ("肺癌", "原发性", "右上叶", "MALIGNANT", "neoplasm of", "Prim", "malignant,乳腺癌"):
        assert found(value), value
    for value in ("alignant", "乳腺癌", "lung cancer", "肺 癌"):
        assert not found(value), value
    assert api.get("/Condition", params={"code:text": " "}).status_code == 400


def test_composite_parameters_hold_within_one_element(search_hub: Hub,
                                                      stored: dict[str, list[dict[str, Any]]]) -> None:
    base = search_hub.base
    with search_hub.client() as api:
        def ids(params: dict[str, str]) -> set[str]:
            return set(search_all(api, base, "Observation", list(params.items())))

        systolic = "http://loinc.org|8480-6"  # blood-pressure: systolic 107 mm[Hg], diastolic 60 mm[Hg]
        assert "blood-pressure" in ids({"component-code-value-quantity": f"{systolic}$gt100"})
        assert "blood-pressure" not in ids({"component-code-value-quantity": f"{systolic}$lt100"})
        # 60 is the diastolic component's value: the systolic code and 60 are in different components
        assert "blood-pressure" not in ids({"component-code-value-quantity": f"{systolic}$60"})
        assert "blood-pressure" in ids({"component-code-value-quantity": "http://loinc.org|8462-4$60"})
        expected = {r["id"] for r in stored["Observation"]
                    if any(c.get("code") == "718-7" for c in r.get("code", {}).get("coding", []))
                    and r.get("valueQuantity", {}).get("value", 0) > 17}
        assert expected and ids({"code-value-quantity": "http://loinc.org|718-7$gt17"}) == expected
        either = ids({"code-value-quantity": "http://loinc.org|718-7$gt17,http://loinc.org|2345-7$lt3.5"})
        assert expected < either
        bad = api.get("/Observation", params={"code-value-quantity": "http://loinc.org|718-7"})
        assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["code-value-quantity"]


def test_previous_links_walk_back_over_the_same_pages(search_hub: Hub, stored: dict[str, list[dict[str, Any]]]) -> None:
    base = search_hub.base

    def link(page: dict[str, Any], relation: str) -> str | None:
        return next((x["url"].replace(base, "") for x in page["link"] if x["relation"] == relation), None)

    with search_hub.client() as api:
        for start in ("/Patient?gender=female&_count=7", "/Patient?_count=9",  # index, type scan
                      "/Patient?identifier=urn:oid:2.16.156.10011.1.1|&_sort=-birthdate,_id&_count=6",  # sorted
                      "/Patient/p0000007/$everything?_count=2",  # several types in turn
                      "?_type=Organization,Patient&identifier=H01,H02,H03,MRN00000001,MRN00000002&_count=2",
                      "?_type=Organization,Patient&_count=25",
                      # read in index order (index_order.py): no clause drives a scan
                      "/Patient?_sort=-birthdate&_count=7", "/Observation?_sort=date&_count=5",
                      "/Patient?_sort=gender&_count=9", "/Patient?_sort=-_lastUpdated&_count=11",
                      "/Patient?_sort=-_id&_count=8", "/Patient?_sort=birthdate&gender:not=male&_count=6"):
            pages: list[list[str]] = []
            url: str | None = start
            page: dict[str, Any] = {}
            while url:
                page = api.get(url).json()
                pages.append([e["resource"]["id"] for e in page["entry"]])
                url = link(page, "next")
            assert len(pages) >= 3, start
            assert link(api.get(start).json(), "previous") is None  # nothing before the first page
            back: list[list[str]] = [pages[-1]]
            url = link(page, "previous")
            while url:
                page = api.get(url).json()
                back.append([e["resource"]["id"] for e in page["entry"]])
                url = link(page, "previous")
            assert back[::-1] == pages, start
