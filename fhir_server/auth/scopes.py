"""SMART App Launch v2 scopes (``system|user|patient/<Type|*>.<cruds>``, and the v1 ``read``/``write``/``*``).

The service layer asks a Principal before every interaction; routers never decide access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fhir_server.errors import Forbidden

__all__ = ["Grant", "Principal", "parse_scopes"]

# SMART v2 (hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html): context/Type.permissions,
# permissions are an ordered subset of "cruds"; v1 suffixes read/write/* map to rs / cud / cruds.
_SCOPE_RE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True, slots=True)
class Grant:
    context: str  # patient | user | system
    rtype: str  # a resource type or "*"
    permissions: frozenset[str]

    def covers(self, permission: str, rtype: str) -> bool:
        return permission in self.permissions and self.rtype in ("*", rtype)


def parse_scopes(scope: str) -> tuple[Grant, ...]:
    """Grants of a space-separated scope string. Unknown scopes (openid, launch, v2 ``?`` filters) grant nothing."""
    grants: list[Grant] = []
    for item in scope.split():
        m = _SCOPE_RE.match(item)
        if not m or not m.group(3):
            continue
        perms = _V1.get(m.group(3), m.group(3))
        grants.append(Grant(m.group(1), m.group(2), frozenset(perms)))
    return tuple(grants)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling (``sub``), what they may do (grants), and the launch patient of patient/ scopes."""

    subject: str
    grants: tuple[Grant, ...]
    patient: str | None = None
    claims: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def allows(self, permission: str, rtype: str) -> bool:
        """Whether ``require`` would pass (without building its refusal)."""
        return any(g.covers(permission, rtype) and (g.context != "patient" or self.patient is not None)
                   for g in self.grants)

    def require(self, permission: str, rtype: str, *, rid: str | None = None) -> str | None:
        """Check that a grant allows ``permission`` (one of c r u d s) on ``rtype``; raise Forbidden if none does.

        Returns None for unrestricted access, or the id of the token's patient when only ``patient/`` scopes
        allow it: the caller must then keep to that patient's compartment (the service checks every
        resource it reads or writes against it).
        """
        compartment: str | None = None
        for grant in self.grants:
            if not grant.covers(permission, rtype):
                continue
            if grant.context in ("system", "user"):
                return None
            if self.patient is not None:
                compartment = self.patient
        if compartment is not None:
            return compartment
        name = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}[permission]
        raise Forbidden(
            f"The token's scopes do not allow {name} on {rtype}: needs e.g. system/{rtype}.{permission} "
            f"or user/{rtype}.{permission}" + (" (patient/ scopes need a patient claim)" if any(
                g.context == "patient" and g.covers(permission, rtype) for g in self.grants) else ""))
