"""`GET /test_framework/v1/results/`: the evaluator results, filtered and paginated as Django REST Framework does.

This is how a client finds a run whose start answer was lost: it names the run with a unique tag and searches for it.

* Filters: ``search`` (as DRF's ``SearchFilter`` on ``name``: split on whitespace and commas, double quotes keep a
  phrase, every term a case-insensitive substring of the name; empty: no filter), ``agent_id``, ``project_id`` (the
  one sent to ``run_scenarios``), ``scenarios`` (comma-separated evaluator ids; a result with any of them). A
  non-integer ``agent_id``/``project_id``/``scenarios`` is a 400 field map (``{"agent_id": ["Enter a number."]}``).
* Order: newest first (by id, which grows with creation). Cekura does not document its order.
* Pagination (``PageNumberPagination``): ``page`` from 1, ``page_size`` default 10, at most 100 (more is clamped;
  zero, negative or not a number falls back to 10); a page that is not a positive integer or is past the last page
  is a 404 ``{"detail": "Invalid page."}`` (page 1 of nothing is an empty 200). ``next``/``previous`` are absolute
  URLs (the server's own base URL, the query's other parameters kept and sorted) or null.
* Each item is a ``Result``: the fields of ``results/{id}/`` but ``runs`` an array, plus ``agent_name``,
  ``met_expected_outcome_count``, ``total_expected_outcome_count``, ``run_type`` and ``updated_at`` (the time the
  result ended at Cekura once terminal, else the time of the answer). Listing does not count as a poll of a result
  and never fixes its answer.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qs, urlencode

from simulator.evaluations import current_view, iso
from simulator.jobs import JobStore
from simulator.model import EVALUATOR_RUN, Job
from simulator.replies import JsonObject, Reply, detail, dumps, field_error

PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
TERMINAL = frozenset(("completed", "failed", "timeout", "cancelled"))
_TERMS = re.compile(r'"[^"]*"|[^\s,]+')
_LIST_ONLY = ("run_settings", "failed_reasons", "overall_evaluation")


def search_terms(search: str) -> list[str]:
    """DRF's search terms: whitespace/comma separated, a double-quoted phrase kept whole, lower-cased."""
    terms = (term.strip('"').lower() for term in _TERMS.findall(search.replace("\x00", "")))
    return [term for term in terms if term]


def _int_param(params: dict[str, list[str]], name: str) -> int | Reply | None:
    value = (params.get(name) or [""])[-1].strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return field_error(400, name, "Enter a number.")


def _page_size(params: dict[str, list[str]]) -> int:
    try:
        size = int((params.get("page_size") or [""])[-1])
    except ValueError:
        return PAGE_SIZE
    return min(size, MAX_PAGE_SIZE) if size > 0 else PAGE_SIZE


def _url(base: str, params: dict[str, list[str]], page: int | None) -> str:
    query = {name: values for name, values in params.items() if name != "page"}
    if page is not None:
        query["page"] = [str(page)]
    encoded = urlencode(sorted(query.items()), doseq=True)
    return f"{base}?{encoded}" if encoded else base


def _matches(job: Job, terms: list[str], agent: Any, project: Any, scenarios: frozenset[int] | None) -> bool:
    if agent is not None and job.agent_id != agent:
        return False
    filters = job.filters or {}
    if project is not None and filters.get("project_id") != project:
        return False
    if scenarios is not None and not scenarios & filters.get("scenarios", frozenset()):
        return False
    name = (job.key or "").lower()
    return all(term in name for term in terms)


def list_item(job: Job, now: float, wall: float) -> JsonObject:
    """One `Result` of the list: the result's current answer, runs as an array."""
    view = current_view(job, now)
    item = {key: value for key, value in view.items() if key not in _LIST_ONLY}
    item["runs"] = sorted(view["runs"].values(), key=lambda run: run["id"])
    item["agent_name"] = None if job.agent_id is None else f"Simulated agent {job.agent_id}"
    item["met_expected_outcome_count"] = view["success_runs_count"]
    item["total_expected_outcome_count"] = view["total_runs_count"]
    item["run_type"] = "text" if view["run_as_text"] else "voice"
    item["created_at"] = iso(job.created_wall)
    ended = job.finishes_at() if view["status"] in TERMINAL else None
    item["updated_at"] = iso(ended if ended is not None else wall)
    return item


def list_results(store: JobStore, base_url: str, query: str) -> Reply:
    """Answer `GET results/?...` (see the module docstring)."""
    params = parse_qs(query, keep_blank_values=True)
    wanted: dict[str, Any] = {}
    for name in ("agent_id", "project_id"):
        value = _int_param(params, name)
        if isinstance(value, tuple):
            return value
        wanted[name] = value
    scenarios: frozenset[int] | None = None
    raw = (params.get("scenarios") or [""])[-1].strip()
    if raw:
        try:
            scenarios = frozenset(int(part) for part in raw.split(",") if part.strip())
        except ValueError:
            return field_error(400, "scenarios", "Enter a number.")
    terms = search_terms((params.get("search") or [""])[-1])
    found = [
        job
        for job in reversed(store.jobs.values())
        if job.kind == EVALUATOR_RUN and _matches(job, terms, wanted["agent_id"], wanted["project_id"], scenarios)
    ]
    size = _page_size(params)
    pages = max(1, -(-len(found) // size))
    try:
        page = int((params.get("page") or ["1"])[-1])
    except ValueError:
        return detail(404, "Invalid page.")
    if not 1 <= page <= pages:
        return detail(404, "Invalid page.")
    now, wall = time.monotonic(), time.time()
    chosen = found[(page - 1) * size : page * size]
    return 200, dumps(
        {
            "count": len(found),
            "next": _url(base_url, params, page + 1) if page < pages else None,
            "previous": None if page == 1 else _url(base_url, params, None if page == 2 else page - 1),
            "results": [list_item(job, now, wall) for job in chosen],
        }
    )
