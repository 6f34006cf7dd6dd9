"""The ``searchset`` Bundle of one page of a search (FHIR R4 search.html#return), for the REST API and for
search entries of batch/transaction Bundles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fhir_server.errors import BadRequest, Issue, operation_outcome
from fhir_server.search import SearchPage
from fhir_server.settings import Settings
from fhir_server.storage import Version

__all__ = ["page_size", "searchset"]


def page_size(text: str | None, settings: Settings) -> int:
    """``_count`` (absent: the default page size), capped by the settings; anything but digits is a 400."""
    if text is None:
        return settings.history_default_count
    if not text.isdigit():
        raise BadRequest("_count must be a non-negative integer", issues=[
            Issue(code="value", diagnostics="_count must be a non-negative integer", expression=("_count",))])
    return min(int(text), settings.history_max_count)


def searchset(page: SearchPage, *, url: str, base: str, params: list[tuple[str, str]], ignored: list[str],
              resource_of: Callable[[Version], Any], summary_count: bool = False) -> dict[str, Any]:
    """Matches, included resources, an OperationOutcome entry for what was ignored or cut short, and self /
    next / previous links (by the page's stable cursors). ``resource_of`` renders a stored version."""
    keep = [(k, v) for k, v in params if k != "_cursor"]
    links = [{"relation": "self", "url": f"{url}?{urlencode(params)}"}]
    if page.next_cursor is not None:
        links.append({"relation": "next", "url": f"{url}?{urlencode([*keep, ('_cursor', page.next_cursor)])}"})
    if page.previous_cursor is not None:
        links.append({"relation": "previous",
                      "url": f"{url}?{urlencode([*keep, ('_cursor', page.previous_cursor)])}"})
    entries: list[dict[str, Any]] = []
    if not summary_count:
        for mode, versions in (("match", page.matches), ("include", page.included)):
            entries += [{"fullUrl": f"{base}/{v.key}", "resource": resource_of(v), "search": {"mode": mode}}
                        for v in versions]
    notes = [*ignored, *page.warnings]
    if notes:
        outcome = operation_outcome([Issue(severity="warning", code="not-supported" if n in ignored else
                                           "incomplete", diagnostics=n) for n in notes])
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = links
    bundle["entry"] = entries
    return bundle
