"""Search: index entries computed at write time and the queries built from search parameters.

For now the parameters that conditional interactions need (``_id``, ``identifier``); the search issue
widens this package to the full R4 SearchParameter registry.
"""

from __future__ import annotations

from fhir_server.search.criteria import Criteria, parse_criteria
from fhir_server.search.index import index_entries

__all__ = ["Criteria", "index_entries", "parse_criteria"]
