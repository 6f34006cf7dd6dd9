"""Derives fhir_server/model/data/required_codes.json: where R4 requires a code from a fixed value set.

Source: the StructureDefinitions, ValueSets and CodeSystems of the npm package hl7.fhir.r4.examples@4.0.1
(CC0). An element counts when its type is ``code`` and its binding strength is ``required`` (FHIR R4
terminologies.html#required: the code SHALL be from the value set), and the value set can be listed from the
package: whole code systems whose content is complete, listed concepts, other such value sets. Value sets
defined by a filter or by a code system outside the package (languages, MIME types, UCUM, currencies) are left
to the structural checks.

The output is a tree per resource type and datatype, keyed by JSON property name: ``"=<value set>"`` for a
code element, ``"@<Type>"`` for an element of a datatype that has code elements somewhere below it, ``"#<path>"``
for a ``contentReference`` (e.g. ``Questionnaire.item.item``), ``"!"`` for a resource inside a resource
(``contained``, ``Bundle.entry.resource``: checked as its own type), or a nested object for a backbone element.

Run: scripts/fetch-fhir-examples.sh && .venv/bin/python scripts/derive_required_codes.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_server.model.types import SUPPORTED_TYPES  # noqa: E402

PACKAGE = ROOT / ".cache" / "fhir-r4-examples" / "package"
OUT = ROOT / "fhir_server" / "model" / "data" / "required_codes.json"


def _load(prefix: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.glob(f"{prefix}-*.json"))]


class Terminology:
    def __init__(self) -> None:
        self.value_sets = {vs["url"]: vs for vs in _load("ValueSet")}
        self.code_systems = {cs["url"]: cs for cs in _load("CodeSystem")}

    def codes(self, url: str, seen: frozenset[str] = frozenset()) -> list[str] | None:
        """Every code of the value set ``url``, or None when it cannot be listed from the package."""
        url = url.split("|", 1)[0]
        vs = self.value_sets.get(url)
        if vs is None or url in seen or "compose" not in vs:
            return None
        out: set[str] = set()
        for include in vs["compose"].get("include", []):
            found = self._part(include, seen | {url})
            if found is None:
                return None
            out |= found
        for exclude in vs["compose"].get("exclude", []):
            found = self._part(exclude, seen | {url})
            if found is None:
                return None
            out -= found
        return sorted(out) if out else None

    def _part(self, part: dict[str, Any], seen: frozenset[str]) -> set[str] | None:
        if part.get("filter"):
            return None
        found: set[str] | None = None
        if "concept" in part:
            found = {c["code"] for c in part["concept"]}
        elif "system" in part:
            cs = self.code_systems.get(part["system"])
            if cs is None or cs.get("content") != "complete":
                return None
            found = set(_all_codes(cs.get("concept", [])))
        for other in part.get("valueSet", []):
            codes = self.codes(other, seen)
            if codes is None:
                return None
            found = set(codes) if found is None else found & set(codes)  # include = intersection of its parts
        return found


def _all_codes(concepts: list[dict[str, Any]]) -> list[str]:
    out = []
    for concept in concepts:
        out.append(concept["code"])
        out += _all_codes(concept.get("concept", []))
    return out


def _json_names(element: dict[str, Any]) -> list[tuple[str, str]]:
    """The JSON property names of an element with the type each one has (``value[x]`` -> valueQuantity …)."""
    name = element["path"].rsplit(".", 1)[1]
    types = [t["code"] for t in element.get("type", [])]
    if name.endswith("[x]"):
        return [(name[:-3] + t[0].upper() + t[1:], t) for t in types]
    return [(name, types[0] if types else "")]


def derive() -> dict[str, Any]:
    terminology = Terminology()
    definitions = {sd["type"]: sd for sd in _load("StructureDefinition")
                   if sd.get("derivation") == "specialization" and sd.get("kind") in ("resource", "complex-type")}
    trees: dict[str, dict[str, Any]] = {}
    value_sets: dict[str, list[str]] = {}

    def tree_of(sd: dict[str, Any]) -> dict[str, Any]:
        root: dict[str, Any] = {}
        nodes = {sd["type"]: root}
        for element in sd["snapshot"]["element"][1:]:
            parent = nodes.get(element["path"].rsplit(".", 1)[0])
            if parent is None:  # below an element of a datatype (not expanded in the snapshot)
                continue
            if "contentReference" in element:
                parent[_json_names(element)[0][0]] = "#" + element["contentReference"].lstrip("#")
                continue
            for key, kind in _json_names(element):
                binding = element.get("binding") or {}
                if kind == "code" and binding.get("strength") == "required":
                    url = binding["valueSet"].split("|", 1)[0]
                    codes = terminology.codes(url)
                    if codes is not None:
                        value_sets[url] = codes
                        parent[key] = "=" + url
                elif kind in ("BackboneElement", "Element") and len(_json_names(element)) == 1:
                    nodes[element["path"]] = parent[key] = {}
                elif kind == "Resource":  # contained, Bundle.entry.resource, Parameters.parameter.resource
                    parent[key] = "!"
                elif kind in definitions and kind != "Extension":
                    parent[key] = "@" + kind
        return root

    for name, sd in definitions.items():
        trees[name] = tree_of(sd)

    # keep only what leads to a code: datatypes without codes below them, and empty backbones, go
    useful: dict[str, bool] = {}

    def has_codes(node: Any, stack: frozenset[str]) -> bool:
        if isinstance(node, dict):
            return any(has_codes(v, stack) for v in node.values())
        if node.startswith(("=", "!")):
            return True
        if node.startswith("@"):
            kind = node[1:]
            if kind not in useful:
                useful[kind] = False if kind in stack else has_codes(trees[kind], stack | {kind})
            return useful[kind]
        return True  # a contentReference: its target is checked where it is defined

    def prune(node: dict[str, Any], stack: frozenset[str]) -> dict[str, Any]:
        out = {}
        for key, value in sorted(node.items()):
            if isinstance(value, dict):
                value = prune(value, stack)
                if value:
                    out[key] = value
            elif has_codes(value, stack):
                out[key] = value
        return out

    kept = {name: prune(tree, frozenset({name})) for name, tree in sorted(trees.items())}
    datatypes = {name for name, sd in definitions.items() if sd["kind"] == "complex-type"}
    types = {name: tree for name, tree in kept.items() if tree and (name in datatypes or name in SUPPORTED_TYPES)}
    used = {v[1:] for v in json.dumps(types).split('"') if v.startswith("=")}
    return {"source": "hl7.fhir.r4.examples@4.0.1 (CC0): StructureDefinitions, ValueSets, CodeSystems",
            "valueSets": {url: value_sets[url] for url in sorted(used)}, "types": types}


if __name__ == "__main__":
    data = derive()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{OUT.relative_to(ROOT)}: {len(data['types'])} types, {len(data['valueSets'])} value sets")
