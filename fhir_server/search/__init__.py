"""Search: index entries computed at write time, parsed searches, and the engine that runs them.

``registry`` (parameters as data) -> ``entries``/``keys`` (what a resource is indexed under) -> ``query``
(what a search asks) -> ``engine`` (index scans, re-checks, paging, includes).
"""

from __future__ import annotations

from fhir_server.search.compartment import patient_compartment_params
from fhir_server.search.engine import SearchEngine, SearchPage, compartment_clause
from fhir_server.search.keys import entry_keys
from fhir_server.search.query import Clause, SearchQuery, parse_search, query_pairs, refuse_ignored, types_named

__all__ = ["Clause", "SearchEngine", "SearchPage", "SearchQuery", "compartment_clause", "entry_keys",
           "parse_search", "patient_compartment_params", "query_pairs", "refuse_ignored",
           "types_named"]
