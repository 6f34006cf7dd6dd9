"""Patches of a stored resource: JSON Patch (RFC 6902, a list of operations) and FHIRPath Patch (FHIR R4
fhirpatch.html, a ``Parameters`` resource of ``operation`` parameters: add, insert, delete, replace, move).

A FHIRPath Patch ``path`` is located, not just evaluated: it is read as steps (``Patient.name[0].given``,
``Patient.identifier.where(system = 'x')``, ``Observation.value.ofType(Quantity)``, ``first()``, ``last()``), each
step keeping where its elements sit so that they can be changed; ``where`` criteria are evaluated by fhirpathpy
on each element. Other functions are refused with a 422 that names the operation. Whether a new element is a
list (``add``) comes from the R4 model. The result is validated by the caller like any write.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fhirpathpy
import jsonpatch
import orjson
from fhir.resources.R4B import get_fhir_model_class

from fhir_server.errors import BadRequest, Issue, UnprocessableEntity
from fhir_server.model.types import model_class
from fhir_server.search.registry import split_top_level

__all__ = ["apply_patch"]


def apply_patch(body: bytes, patch: Any, *, rtype: str, rid: str) -> dict[str, Any]:
    """The resource ``body`` with ``patch`` applied: a JSON Patch (a list) or a FHIRPath Patch (a Parameters
    resource). The result must stay ``rtype``/``rid``."""
    if isinstance(patch, list):
        patched = _json_patch(orjson.loads(body), patch)
    elif isinstance(patch, dict) and patch.get("resourceType") == "Parameters":
        patched = _FhirPathPatch(orjson.loads(body), rtype).apply(patch)
    else:
        raise BadRequest("A patch is a JSON Patch (an array of operations) or a FHIRPath Patch (a Parameters "
                         "resource)")
    if not isinstance(patched, dict) or patched.get("resourceType") != rtype or patched.get("id") != rid:
        raise UnprocessableEntity("A patch must not change resourceType or id")
    return patched


def _json_patch(resource: dict[str, Any], operations: list[Any]) -> Any:
    try:
        return jsonpatch.apply_patch(resource, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
        raise UnprocessableEntity(f"The JSON Patch cannot be applied: {exc}", issues=[
            Issue(code="processing", diagnostics=f"The JSON Patch cannot be applied: {exc}")]) from exc


# ---- FHIRPath Patch -----------------------------------------------------------------------------------------

@dataclass
class _Loc:
    """Where an element sits: ``holder[key]`` (a dict and an element name, or a list and a position); ``trail``
    is the element names and positions from the resource (it gives the element's type in the model)."""

    holder: dict[str, Any] | list[Any]
    key: str | int
    trail: tuple[str | int, ...]

    @property
    def value(self) -> Any:
        return self.holder[self.key]  # type: ignore[index]


class _PatchError(Exception):
    """A FHIRPath Patch operation that cannot be applied; ``part`` names the offending part, if one does."""

    def __init__(self, message: str, part: str | None = None) -> None:
        super().__init__(message)
        self.part = part


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # an element name
_STEP = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<arg>.*)\))?(?P<index>(?:\[\d+\])?)$", re.S)


class _FhirPathPatch:
    def __init__(self, resource: dict[str, Any], rtype: str) -> None:
        self.resource, self.rtype = resource, rtype

    def apply(self, parameters: dict[str, Any]) -> dict[str, Any]:
        operations = parameters.get("parameter")
        if not isinstance(operations, list) or not operations:
            raise BadRequest("A FHIRPath Patch needs at least one 'operation' parameter", issues=[Issue(
                code="required", diagnostics="No operation parameter", expression=("Parameters.parameter",))])
        for n, operation in enumerate(operations):
            where = f"Parameters.parameter[{n}]"
            if not isinstance(operation, dict) or operation.get("name") != "operation":
                raise BadRequest(f"{where} is not an 'operation' parameter", issues=[Issue(
                    code="invalid", diagnostics="Every parameter of a FHIRPath Patch is named 'operation'",
                    expression=(where,))])
            given = operation.get("part")
            parts: list[Any] = given if isinstance(given, list) else []
            try:
                self._operation(parts)
            except _PatchError as exc:
                at = next((f"{where}.part[{i}]" for i, p in enumerate(parts)
                           if isinstance(p, dict) and p.get("name") == exc.part), where)
                raise UnprocessableEntity(f"FHIRPath Patch {where}: {exc}", issues=[Issue(
                    code="processing", diagnostics=str(exc), expression=(at,))]) from None
        return self.resource

    # ---- one operation

    def _operation(self, parts: list[Any]) -> None:
        named = {p.get("name"): p for p in parts if isinstance(p, dict)}
        kind = _primitive(named.get("type"), "type")
        path = _primitive(named.get("path"), "path")
        if not isinstance(kind, str) or kind not in ("add", "insert", "delete", "replace", "move"):
            raise _PatchError("'type' must be add, insert, delete, replace or move", "type")
        if not isinstance(path, str) or not path.strip():
            raise _PatchError("'path' (a FHIRPath expression) is missing", "path")
        found = self._locate(path)
        if kind != "add" and any(not loc.trail for loc in found):
            raise _PatchError(f"'path' names the resource itself; {kind} needs an element of it", "path")
        if kind == "delete":
            if len(found) > 1:
                raise _PatchError(f"'path' matches {len(found)} elements; delete takes one", "path")
            if found:
                self._remove(found[0])
            return
        if kind == "replace":
            target = self._single(found)
            target.holder[target.key] = self._value(named, target.trail)  # type: ignore[index]
            return
        if kind == "add":
            target = self._single(found)
            name = _primitive(named.get("name"), "name")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise _PatchError("'name' (the element to add) is missing or not an element name", "name")
            container = target.value
            if not isinstance(container, dict):
                raise _PatchError("'path' must name an element that has children (not a primitive)", "path")
            value = self._value(named, (*target.trail, name))
            existing = container.get(name)
            if isinstance(existing, list):
                _in_step(container, name, lambda shadow: shadow.append(None))
                existing.append(value)
            elif existing is not None:
                raise _PatchError(f"'{name}' already has a value there (use replace)", "name")
            else:
                container[name] = [value] if _repeats(self.rtype, (*target.trail, name)) else value
            return
        # insert and move work on a list: the path names the repeating element
        holder, name, items, trail = self._list_of(found, path)
        if kind == "insert":
            index = _primitive(named.get("index"), "index")
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= len(items):
                raise _PatchError(f"'index' must be an integer from 0 to {len(items)}", "index")
            value = self._value(named, (*trail, name))
            _in_step(holder, name, lambda shadow: shadow.insert(index, None))
            items.insert(index, value)
            holder[name] = items
            return
        source = _primitive(named.get("source"), "source")
        destination = _primitive(named.get("destination"), "destination")
        for what, n in (("source", source), ("destination", destination)):
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < len(items):
                raise _PatchError(f"'{what}' must be an integer from 0 to {len(items) - 1}", what)
        assert isinstance(source, int) and isinstance(destination, int)
        _in_step(holder, name, lambda shadow: shadow.insert(destination, shadow.pop(source)))
        items.insert(destination, items.pop(source))

    @staticmethod
    def _single(found: list[_Loc]) -> _Loc:
        if len(found) != 1:
            raise _PatchError(f"'path' must match exactly one element; it matches {len(found)}", "path")
        return found[0]

    def _list_of(self, found: list[_Loc], path: str) -> tuple[dict[str, Any], str, list[Any], tuple[str | int, ...]]:
        """The list a path names (``Patient.identifier``) as (its parent, its name, the list, the parent's trail):
        every match an item of the same list, or none when the list is absent and its parent is there (an insert
        into a new list)."""
        if found and all(isinstance(loc.holder, list) for loc in found) and \
                len({id(loc.holder) for loc in found}) == 1:
            trail = found[0].trail[:-2]
            parent, name = self._locate_trail(trail), found[0].trail[-2]
            assert isinstance(parent, dict) and isinstance(name, str)
            return parent, name, parent[name], trail
        steps = split_top_level(path, ".")
        if not found and len(steps) > 1 and _NAME.fullmatch(steps[-1]):
            parents = self._locate(".".join(steps[:-1]))
            if len(parents) == 1 and isinstance(parents[0].value, dict) and \
                    _repeats(self.rtype, (*parents[0].trail, steps[-1])):
                return parents[0].value, steps[-1], [], parents[0].trail
        raise _PatchError("'path' must name one repeating element (a list)", "path")

    def _locate_trail(self, trail: tuple[str | int, ...]) -> Any:
        node: Any = self.resource
        for key in trail:
            node = node[key]
        return node

    def _remove(self, loc: _Loc) -> None:
        """Remove the element (with its primitive extensions), then any list or object left empty by it (FHIR
        JSON has no empty ones)."""
        if isinstance(loc.holder, dict):
            assert isinstance(loc.key, str)
            loc.holder.pop(f"_{loc.key}", None)
        elif len(loc.trail) >= 2 and isinstance(loc.trail[-2], str):
            index = loc.key
            assert isinstance(index, int)
            _in_step(self._locate_trail(loc.trail[:-2]), loc.trail[-2], lambda shadow: shadow.pop(index))
        del loc.holder[loc.key]  # type: ignore[arg-type]
        trail = loc.trail[:-1]
        while trail:
            node = self._locate_trail(trail)
            if node:  # not empty
                return
            parent = self._locate_trail(trail[:-1])
            del parent[trail[-1]]
            trail = trail[:-1]

    # ---- locating a path

    def _locate(self, path: str) -> list[_Loc]:
        steps = split_top_level(path, ".")
        if steps and steps[0] in (self.rtype, "Resource", "DomainResource"):
            steps = steps[1:]
        root = _Loc({"": self.resource}, "", ())
        current: list[_Loc] = [root]
        for step in steps:
            m = _STEP.match(step)
            if m is None:
                raise _PatchError(f"'path' step '{step}' is not supported in a FHIRPath Patch path", "path")
            name, arg, index = m.group("name"), m.group("arg"), m.group("index")
            if arg is None:
                current = [child for loc in current for child in _children(loc, name)]
            elif name == "where":
                current = [loc for loc in current if _holds(loc.value, arg)]
            elif name in ("first", "last") and not arg.strip():
                current = current[:1] if name == "first" else current[-1:]
            elif name == "ofType":
                current = [loc for loc in current if _is_of_type(self.rtype, loc, arg.strip())]
            else:
                raise _PatchError(f"'path' uses {name}(), which a FHIRPath Patch path here does not support "
                                  "(where, first, last, ofType and indexes are)", "path")
            if index:
                n = int(index[1:-1])
                current = current[n:n + 1]
        return current

    # ---- values

    def _value(self, named: dict[Any, Any], trail: tuple[str | int, ...]) -> Any:
        part = named.get("value")
        if not isinstance(part, dict):
            raise _PatchError("'value' is missing", "value")
        return _element(part, _element_class(self.rtype, trail))


def _in_step(parent: dict[str, Any], name: str, change: Callable[[list[Any]], Any]) -> None:
    """Apply to ``_name`` (the ids and extensions of a list of primitives, position by position) the change about
    to be made to ``name``, and drop it when no position has any left. Without one, or out of step, nothing."""
    shadow, items = parent.get(f"_{name}"), parent.get(name)
    if not isinstance(shadow, list) or not isinstance(items, list) or len(shadow) != len(items):
        return
    change(shadow)
    if all(item is None for item in shadow):
        del parent[f"_{name}"]


def _children(loc: _Loc, name: str) -> list[_Loc]:
    node = loc.value
    if not isinstance(node, dict):
        return []
    keys = [name] if name in node else [k for k in node if k.startswith(name) and len(k) > len(name)
                                         and k[len(name)].isupper()]  # a choice element: value -> valueQuantity
    out = []
    for key in keys:
        value = node[key]
        trail = (*loc.trail, key)
        if isinstance(value, list):
            out += [_Loc(value, i, (*trail, i)) for i in range(len(value))]
        else:
            out.append(_Loc(node, key, trail))
    return out


def _is_of_type(rtype: str, loc: _Loc, name: str) -> bool:
    """Is the element ``name``-typed: a choice element of that type (valueQuantity), a resource of that type,
    or an element the model types so?"""
    if isinstance(loc.key, str) and loc.key.endswith(name) and loc.key != name:
        return True
    if isinstance(loc.value, dict) and loc.value.get("resourceType") == name:
        return True
    cls = _element_class(rtype, loc.trail)
    return cls is not None and cls.__name__ == name


def _holds(value: Any, criteria: str) -> bool:
    try:
        return fhirpathpy.evaluate(value, criteria) == [True]
    except Exception:  # fhirpathpy raises many kinds; the criteria are the client's
        raise _PatchError(f"'path' has where() criteria that cannot be evaluated: {criteria}", "path") from None


def _primitive(part: Any, name: str) -> Any:
    """The value[x] of a part holding a primitive (None when absent)."""
    if not isinstance(part, dict):
        return None
    values = [v for k, v in part.items() if k.startswith("value")]
    if len(values) != 1:
        raise _PatchError(f"'{name}' needs one value[x]", name)
    return values[0]


def _element(part: dict[str, Any], cls: Any) -> Any:
    """A ``value`` part as the JSON of the element: its value[x], its resource, or its parts (an element without a
    named type, e.g. Patient.contact, given as one part per child)."""
    values = [v for k, v in part.items() if k.startswith("value") and k != "value"]
    if values:
        return values[0]
    if isinstance(part.get("resource"), dict):
        return part["resource"]
    children = part.get("part")
    if not isinstance(children, list) or not children:
        raise _PatchError("'value' has no value[x], resource or parts", "value")
    out: dict[str, Any] = {}
    for child in children:
        if not isinstance(child, dict) or not isinstance(child.get("name"), str):
            raise _PatchError("every part of 'value' needs a name", "value")
        name = child["name"]
        sub = _element(child, _field_class(cls, name))
        if name in out:
            out[name] = (out[name] if isinstance(out[name], list) else [out[name]]) + [sub]
        elif _field_repeats(cls, name):
            out[name] = [sub]
        else:
            out[name] = sub
    return out


# ---- the R4 model: which elements repeat, and the type of an element

def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(is a list, the item type) of a pydantic field annotation (Optional and List removed)."""
    listed = False
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin in (list, typing.List):  # noqa: UP006 - fhir.resources annotates with typing.List
            listed, annotation = True, args[0]
        elif args and origin is not None and origin is not typing.Annotated:
            annotation = args[0]
        elif origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        else:
            return listed, annotation


def _field_class(cls: Any, name: str) -> Any:
    fields = getattr(cls, "model_fields", None)
    if not fields or name not in fields:
        return None
    _, item = _unwrap(fields[name].annotation)
    type_name = getattr(item, "__name__", "")
    if type_name.endswith("Type") and type_name != "Type":
        try:
            return get_fhir_model_class(type_name[:-4])
        except (KeyError, ValueError, AttributeError):
            return None
    return None


def _field_repeats(cls: Any, name: str) -> bool:
    fields = getattr(cls, "model_fields", None)
    return bool(fields and name in fields and _unwrap(fields[name].annotation)[0])


def _element_class(rtype: str, trail: tuple[str | int, ...]) -> Any:
    """The model class of the element at ``trail`` (names and positions from the resource), None if unknown."""
    cls = model_class(rtype)
    for key in trail:
        if isinstance(key, int):
            continue
        cls = _field_class(cls, key)
        if cls is None:
            return None
    return cls


def _repeats(rtype: str, trail: tuple[str | int, ...]) -> bool:
    """Is the element at ``trail`` a list in FHIR JSON?"""
    return _field_repeats(_element_class(rtype, trail[:-1]), str(trail[-1]))
