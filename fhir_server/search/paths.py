"""FHIRPath expressions of search parameters, compiled to functions from a resource (parsed JSON) to values.

Simple paths (``Patient.name``, ``Observation.effective``, ``(Observation.value as Quantity)``,
``(Observation.value as CodeableConcept).text``, ``Condition.onset.as(Age)``) and paths with equality filters
on a primitive (``Patient.telecom.where(system='phone')``,
``PlanDefinition.relatedArtifact.where(type='composed-of').resource``) compile to plain dictionary walks;
everything else is evaluated by fhirpathpy with the R4 model. The two must agree on every official example and
on the edge cases of ``where`` and casts (tests/test_search_paths.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

__all__ = ["Extractor", "check_syntax", "children", "compile_path", "is_fast"]

Extractor = Callable[[dict[str, Any]], list[Any]]

_STEPS = r"(?:\.where\([a-z][A-Za-z]*='[^'\\]*'\)|\.[a-z][A-Za-z]*)+"
_SIMPLE = re.compile(rf"^(?P<path>[A-Z][A-Za-z]*{_STEPS})(?:\.as\((?P<type>[A-Za-z]+)\))?$")
_CAST = re.compile(rf"^\((?P<path>[A-Z][A-Za-z]*(?:\.[a-z][A-Za-z]*)+) as (?P<type>[A-Za-z]+)\)(?P<then>{_STEPS})?$")
_STEP = re.compile(r"\.(?:where\((?P<field>[a-z][A-Za-z]*)='(?P<value>[^'\\]*)'\)|(?P<name>[a-z][A-Za-z]*))")


# FHIRPath `as T` also matches T's specializations (FHIR R4 datatypes: canonical, url, oid and uuid are uris...)
_SPECIALIZATIONS = {
    "uri": ("uri", "url", "canonical", "oid", "uuid"),
    "string": ("string", "code", "id", "markdown"),
    "integer": ("integer", "positiveInt", "unsignedInt"),
    "Quantity": ("Quantity", "Age", "Count", "Distance", "Duration"),
}


# the types a choice element [x] can take in R4 (datatypes.html#open): value[x] appears as valueQuantity, ...
_CHOICE_TYPES = frozenset("""Base64Binary Boolean Canonical Code Date DateTime Decimal Id Instant Integer Markdown Oid
PositiveInt String Time UnsignedInt Uri Url Uuid Address Age Annotation Attachment CodeableConcept Coding ContactPoint
Count Distance Duration HumanName Identifier Money Period Quantity Range Ratio Reference SampledData Signature Timing
ContactDetail Contributor DataRequirement Expression ParameterDefinition RelatedArtifact TriggerDefinition
UsageContext Dosage Meta""".split())


def children(items: list[Any], name: str, choice_type: str | None) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if choice_type is not None:
            keys = [name + t[0].upper() + t[1:] for t in _SPECIALIZATIONS.get(choice_type, (choice_type,))]
        elif name in item:
            keys = [name]
        else:  # a choice element named without its type: effective -> effectiveDateTime, effectivePeriod...
            keys = [k for k in item if k.startswith(name) and k[len(name):] in _CHOICE_TYPES]
        for key in keys:
            value = item.get(key)
            if isinstance(value, list):
                out.extend(v for v in value if v is not None)
            elif value is not None:
                out.append(value)
    return out


def _equals(value: Any, literal: str) -> bool:
    """FHIRPath ``field = 'literal'`` on one item's field: true only for that one string (a repeated primitive
    is a collection, equal only if it holds exactly that one string; anything else is not a string)."""
    if isinstance(value, list):
        return len(value) == 1 and value[0] == literal
    return isinstance(value, str) and value == literal


# a step: (name, None, choice type of the last name) or (None, (field, literal), None) for where(field='literal')
_Step = tuple[str | None, tuple[str, str] | None, str | None]


def _walker(rtype: str, steps: list[_Step]) -> Extractor:
    def extract(resource: dict[str, Any]) -> list[Any]:
        if resource.get("resourceType") != rtype and rtype not in ("Resource", "DomainResource"):
            return []
        items: list[Any] = [resource]
        for name, where, cast in steps:
            if name is not None:
                items = children(items, name, cast)
            elif where is not None:
                items = [i for i in items if isinstance(i, dict) and _equals(i.get(where[0]), where[1])]
            if not items:
                break
        return items

    return extract


def _fast(expression: str) -> Extractor | None:
    m = _SIMPLE.match(expression) or _CAST.match(expression)
    if m is None:
        return None
    rtype, _, rest = m.group("path").partition(".")
    steps = _steps("." + rest)
    cast = m.group("type")
    if cast is not None:
        name, where, _ = steps[-1]
        if name is None:  # X.where(...).as(T): not a choice element; leave it to fhirpathpy
            return None
        steps[-1] = (name, where, cast)
    then = m.groupdict().get("then")  # (X as T).text: steps into the cast value
    return _walker(rtype, steps + _steps(then) if then else steps)


def _steps(path: str) -> list[_Step]:
    out: list[_Step] = []
    for step in _STEP.finditer(path):
        if step.group("name") is not None:
            out.append((step.group("name"), None, None))
        else:
            out.append((None, (step.group("field"), step.group("value")), None))
    return out


def is_fast(expression: str) -> bool:
    return _fast(expression) is not None


def _general(expression: str) -> Extractor:
    compiled = fhirpath_compile(expression, models["r4"])

    def extract(resource: dict[str, Any]) -> list[Any]:
        return list(compiled(resource, {}))

    return extract


@cache
def compile_path(expression: str, *, general: bool = False) -> Extractor:
    """The extractor of one FHIRPath expression; ``general=True`` forces the FHIRPath engine."""
    if not general:
        fast = _fast(expression)
        if fast is not None:
            return fast
    return _general(expression)


class _RaiseOnError(ErrorListener):  # type: ignore[misc]
    def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any) -> None:
        raise ValueError(f"FHIRPath syntax error at column {column}: {msg}")


def check_syntax(expression: str) -> None:
    """Raise ValueError if ``expression`` is not valid FHIRPath (fhirpathpy's own parser recovers silently)."""
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaiseOnError())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(_RaiseOnError())
    parser.expression()
    if parser.getCurrentToken().type != Token.EOF:
        raise ValueError(f"FHIRPath syntax error: unexpected text at column {parser.getCurrentToken().column}")
