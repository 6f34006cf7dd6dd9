"""Validation of a resource: its structure against the R4B model and its codes against R4's required value sets,
with one issue per problem located by FHIRPath."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fhir_server.errors import BadRequest, Issue
from fhir_server.model.codes import code_issues
from fhir_server.model.types import ID_RE, model_class, require_supported_type

__all__ = ["fhirpath_of", "validate_resource"]

_MAX_ISSUES = 100


def fhirpath_of(resource_type: str, loc: tuple[int | str, ...]) -> str:
    """Turn a pydantic error location into a FHIRPath expression: ('name', 0, 'given') -> Patient.name[0].given."""
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-after[") or part.startswith("function-"):
            continue
        else:
            path += f".{part}"
    return path


def _message(error: dict[str, Any]) -> str:
    # pydantic messages never contain the offending value (we do not echo patient data back into logs)
    msg = str(error.get("msg", "invalid value"))
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "Unknown element (not defined for this type in FHIR R4)"
    if kind == "missing":
        return "Required element is missing"
    return msg.removeprefix("Value error, ")


def validate_resource(resource: Any, *, expected_type: str | None = None, expected_id: str | None = None) -> str:
    """Check ``resource`` (parsed JSON) and return its resourceType, or raise BadRequest listing every problem.

    ``expected_type`` is the type named by the URL; ``expected_id`` the id named by the URL on update
    (FHIR R4 http.html#update: the resource must have an id element equal to the URL's id).
    """
    if not isinstance(resource, dict):
        raise BadRequest("The body must be a FHIR resource: a JSON object", issues=[
            Issue(code="structure", diagnostics="The body must be a FHIR resource: a JSON object")])
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise BadRequest("resourceType is missing", issues=[
            Issue(code="required", diagnostics="resourceType is missing", expression=("resourceType",))])
    if expected_type is not None and rtype != expected_type:
        msg = f"resourceType '{rtype}' does not match the type in the URL '{expected_type}'"
        raise BadRequest(msg, issues=[Issue(code="invalid", diagnostics=msg, expression=("resourceType",))])
    require_supported_type(rtype)

    issues: list[Issue] = []
    rid = resource.get("id")
    if expected_id is not None:
        if rid is None:
            issues.append(Issue(code="required", diagnostics="update needs the resource id in the body",
                                expression=(f"{rtype}.id",)))
        elif rid != expected_id:
            issues.append(Issue(code="invalid", diagnostics=f"id '{rid}' in the body does not match the URL id "
                                f"'{expected_id}'", expression=(f"{rtype}.id",)))
    if rid is not None and (not isinstance(rid, str) or not ID_RE.match(rid)):
        issues.append(Issue(code="value", diagnostics="id must be 1-64 characters of A-Z a-z 0-9 - .",
                            expression=(f"{rtype}.id",)))
    try:
        model_class(rtype).model_validate(resource)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False)[:_MAX_ISSUES]:
            issues.append(Issue(code="structure" if error["type"] == "extra_forbidden" else "value",
                                diagnostics=_message(dict(error)),
                                expression=(fhirpath_of(rtype, tuple(error["loc"])),)))
    except (ValueError, TypeError) as exc:
        issues.append(Issue(code="invalid", diagnostics=f"invalid resource: {type(exc).__name__}",
                            expression=(rtype,)))
    issues += code_issues(resource)[:_MAX_ISSUES]
    if issues:
        raise BadRequest(f"{rtype} is not valid: {len(issues)} problem(s)", issues=issues)
    return rtype
