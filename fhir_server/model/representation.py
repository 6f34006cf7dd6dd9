"""Representations of a stored resource: XML <-> JSON, ``_summary`` and ``_elements`` subsets.

JSON is the stored form; XML goes through the R4B model (fhir.resources) in both directions.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import orjson
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring

from fhir_server.errors import BadRequest, Issue
from fhir_server.model.types import model_class, require_supported_type

__all__ = ["SummaryMode", "from_xml", "select_elements", "summarize", "to_xml"]

SummaryMode = Literal["true", "text", "data", "count", "false"]

# FHIR R4 search.html#summary: a subsetted resource SHALL carry this tag
_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_FHIR_NS = "{http://hl7.org/fhir}"


@cache
def _element_sets(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """JSON names of (summary elements, mandatory elements) of a type, from the model's metadata."""
    summary: set[str] = set()
    mandatory: set[str] = set()
    for name, field in model_class(resource_type).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        json_name = field.alias or name
        if extra.get("summary_element_property"):
            summary.add(json_name)
        if extra.get("element_required") or field.is_required():
            mandatory.add(json_name)
    return frozenset(summary), frozenset(mandatory)


def _named_in(key: str, names: frozenset[str]) -> bool:
    """``key`` is one of ``names``, or the ``_name`` element that carries a primitive's id and extensions."""
    return key in names or key.lstrip("_") in names


def _tag_subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(_SUBSETTED)
    meta["tag"] = tags
    resource["meta"] = meta
    return resource


def summarize(resource: dict[str, Any], mode: SummaryMode) -> dict[str, Any]:
    """Apply ``_summary`` (true | text | data) to one resource."""
    if mode == "false":
        return resource
    rtype = resource["resourceType"]
    summary, mandatory = _element_sets(rtype)
    keep: set[str] = {"resourceType", "id", "meta"}
    if mode == "true":
        keep |= summary
    elif mode == "text":
        keep |= {"text"} | mandatory
    if mode == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    else:
        out = {k: v for k, v in resource.items() if _named_in(k, frozenset(keep))}
    return _tag_subsetted(out)


def select_elements(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    """Apply ``_elements``: the named top-level elements plus the mandatory ones (FHIR R4 search.html#elements)."""
    rtype = resource["resourceType"]
    _, mandatory = _element_sets(rtype)
    wanted = {e.split(".", 1)[-1] if e.startswith(rtype + ".") else e for e in elements}
    keep = frozenset({"resourceType", "id", "meta"} | mandatory | wanted)
    # choice elements: _elements=value selects valueQuantity, valueString, ...
    out = {k: v for k, v in resource.items() if _named_in(k, keep) or any(k.startswith(w) and
           k[len(w):][:1].isupper() for w in wanted)}
    return _tag_subsetted(out)


def to_xml(resource: dict[str, Any], *, pretty: bool = False) -> bytes:
    """FHIR XML of a (valid, stored) JSON resource."""
    model = model_class(resource["resourceType"]).model_validate(resource)
    text: str | bytes = model.model_dump_xml(pretty_print=pretty)
    return text if isinstance(text, bytes) else text.encode("utf-8")


def from_xml(body: bytes) -> dict[str, Any]:
    """Parse a FHIR XML resource into its JSON form. DTDs and entities are refused before parsing."""
    try:
        root = safe_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise BadRequest("XML with a DTD or entities is refused", issues=[
            Issue(code="security", diagnostics=f"XML with a DTD or entities is refused ({type(exc).__name__})")
        ]) from exc
    except Exception as exc:  # xml.etree.ElementTree.ParseError and friends
        raise BadRequest("The body is not well-formed XML", issues=[
            Issue(code="structure", diagnostics=f"The body is not well-formed XML: {exc}")]) from exc
    tag = str(root.tag)
    if not tag.startswith(_FHIR_NS):
        raise BadRequest("XML root element is not in the FHIR namespace http://hl7.org/fhir")
    rtype = require_supported_type(tag[len(_FHIR_NS):])
    try:
        model = model_class(rtype).model_validate_xml(body)
    except Exception as exc:
        first = str(exc).splitlines()[:3]
        raise BadRequest(f"{rtype} XML is not valid", issues=[
            Issue(code="structure", diagnostics=" ".join(first), expression=(rtype,))]) from exc
    parsed: dict[str, Any] = orjson.loads(model.model_dump_json())
    return parsed
