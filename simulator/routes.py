"""The route table of the simulated Cekura API operations (the paths of `cekura-openapi.json`, each ending in `/`).

A route's name is its path's last segment (`auto-fetch`, `auto-fetch-progress`, `run_scenarios`, `end_calls`, ...):
it keys the statistics. Two exceptions keep the names distinct: the v1 tools auto-fetch routes are named
`tools/auto-fetch` and `tools/auto-fetch-progress` (the seed v2 routes own `auto-fetch`), a result's GET
(`/test_framework/v1/results/<id>/`) is named `results` and the results list (`/test_framework/v1/results/`)
`results-list`. Some routes carry an id in the path: the v2 agent routes
(`/test_framework/v2/aiagents/<id>/...`), the v1 tools routes (`/test_framework/v1/aiagents/<id>/tools/...`) and
the result routes (`/test_framework/v1/results/<id>/...`); the others are fixed paths.
This module also gathers every kind's progress answers (`ANSWERS`) for the job store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import parse_qs

from simulator import evaluations, feedback, generation, metrics, renderers, results, tools
from simulator.jobs import JobStore
from simulator.model import (
    AUTO_FETCH,
    CLEAN_DESCRIPTION,
    EVALUATOR_RUN,
    METRIC_GENERATE,
    METRIC_IMPROVE,
    SCENARIO_AGENT,
    SCENARIO_FROM_TRANSCRIPT,
    SCENARIO_GENERATE,
    TOGGLE_MOCK_TOOLS,
    TOOLS_AUTO_FETCH,
    Answers,
)
from simulator.replies import Reply

AGENT_PREFIX = "/test_framework/v2/aiagents/"
TOOLS_PREFIX = "/test_framework/v1/aiagents/"
RESULTS_PREFIX = "/test_framework/v1/results/"

#: How a progress GET answers, for every kind of job.
ANSWERS: dict[str, Answers] = {
    **renderers.ANSWERS,
    **evaluations.ANSWERS,
    **generation.ANSWERS,
    **metrics.ANSWERS,
    **feedback.ANSWERS,
    **tools.ANSWERS,
}

#: An operation: (id from the path or None, query string, body, status word a fault substitutes or None).
Operation = Callable[[int | None, str, bytes, str | None], Reply]


class Route(NamedTuple):
    name: str
    method: bytes
    progress: bool
    operation: Operation


def progress_id(query: str) -> str | None:
    if query.startswith("progress_id=") and "&" not in query and "%" not in query and "+" not in query:
        return query[12:] or None
    values = parse_qs(query).get("progress_id")
    return values[0] if values else None


def _post(name: str, start: Callable[[bytes], Reply]) -> Route:
    """A POST route whose operation reads only the body."""
    return Route(name, b"POST", False, lambda path_id, query, body, unexpected: start(body))


def _post_with_id(name: str, start: Callable[[int, bytes], Reply]) -> Route:
    """A POST route whose operation reads the path's id and the body."""
    return Route(name, b"POST", False, lambda path_id, query, body, unexpected: start(cast(int, path_id), body))


class Router:
    """Maps a request path to its operation on one job store."""

    def __init__(self, store: JobStore) -> None:
        #: The server's own URL (`http://host:port`), for the absolute `next`/`previous` links of the results list.
        self.base_url = ""

        def progress(name: str, kind: str) -> Route:
            def op(path_id: int | None, query: str, body: bytes, unexpected: str | None) -> Reply:
                return store.progress(kind, path_id, progress_id(query), unexpected)

            return Route(name, b"GET", True, op)

        def result(path_id: int | None, query: str, body: bytes, unexpected: str | None) -> Reply:
            return store.progress(EVALUATOR_RUN, None, str(path_id), unexpected)

        def result_list(path_id: int | None, query: str, body: bytes, unexpected: str | None) -> Reply:
            return results.list_results(store, self.base_url + RESULTS_PREFIX, query)

        scenarios = "/test_framework/v1/scenarios/"
        metric_routes = "/test_framework/v1/metrics/"
        reviews = "/test_framework/metric-reviews/"
        #: Routes under a path with an id, by prefix, then by what follows the id.
        self._id_routes: dict[str, dict[str, Route]] = {
            AGENT_PREFIX: {
                "auto-fetch/": _post_with_id("auto-fetch", store.start_auto_fetch),
                "auto-fetch-progress/": progress("auto-fetch-progress", AUTO_FETCH),
                "toggle-mock-tools/": _post_with_id("toggle-mock-tools", store.start_toggle),
                "toggle-mock-tools-progress/": progress("toggle-mock-tools-progress", TOGGLE_MOCK_TOOLS),
            },
            TOOLS_PREFIX: {
                "tools/auto-fetch/": _post_with_id(
                    "tools/auto-fetch", lambda agent, body: tools.start_tools_auto_fetch(store, agent, body)
                ),
                "tools/auto-fetch-progress/": progress("tools/auto-fetch-progress", TOOLS_AUTO_FETCH),
            },
            RESULTS_PREFIX: {
                "": Route("results", b"GET", True, result),
                "end_calls/": _post_with_id("end_calls", lambda ident, body: evaluations.end_calls(store, ident)),
            },
        }
        self._static_routes: dict[str, Route] = {
            RESULTS_PREFIX: Route("results-list", b"GET", False, result_list),
            scenarios + "scenario-agent/": _post("scenario-agent", store.start_scenario_agent),
            scenarios + "scenario-agent-progress/": progress("scenario-agent-progress", SCENARIO_AGENT),
            scenarios + "cancel-agent/": _post("cancel-agent", store.cancel_scenario_agent),
            metric_routes + "generate_clean_description_bg/": _post(
                "generate_clean_description_bg", store.start_clean_description
            ),
            metric_routes + "generate_clean_description_progress/": progress(
                "generate_clean_description_progress", CLEAN_DESCRIPTION
            ),
            scenarios + "run_scenarios/": _post(
                "run_scenarios", lambda body: evaluations.start_run(store, body, as_text=False)
            ),
            scenarios + "run_scenarios_text/": _post(
                "run_scenarios_text", lambda body: evaluations.start_run(store, body, as_text=True)
            ),
            scenarios + "generate-bg/": _post("generate-bg", lambda body: generation.start_generate(store, body)),
            scenarios + "generate-progress/": progress("generate-progress", SCENARIO_GENERATE),
            scenarios + "generate-clarify-answer/": _post(
                "generate-clarify-answer", lambda body: generation.answer_clarification(store, body)
            ),
            scenarios + "create-from-transcript-bg/": _post(
                "create-from-transcript-bg", lambda body: generation.start_from_transcript(store, body)
            ),
            scenarios + "create-from-transcript-progress/": progress(
                "create-from-transcript-progress", SCENARIO_FROM_TRANSCRIPT
            ),
            metric_routes + "generate_metrics/": _post(
                "generate_metrics", lambda body: metrics.start_generate_metrics(store, body)
            ),
            metric_routes + "generate_metrics_progress/": progress("generate_metrics_progress", METRIC_GENERATE),
            reviews + "process_feedbacks/": _post(
                "process_feedbacks", lambda body: feedback.start_process_feedbacks(store, body)
            ),
            reviews + "process_feedbacks_progress/": progress("process_feedbacks_progress", METRIC_IMPROVE),
            reviews + "process_feedbacks_answer/": _post(
                "process_feedbacks_answer", lambda body: feedback.answer_questions(store, body)
            ),
            reviews + "process_feedbacks_cancel/": _post(
                "process_feedbacks_cancel", lambda body: feedback.cancel(store, body)
            ),
        }

    def match(self, path: str) -> tuple[Route | None, int | None]:
        route = self._static_routes.get(path)
        if route is not None:
            return route, None
        for prefix, routes in self._id_routes.items():
            if path.startswith(prefix):
                ident, sep, rest = path[len(prefix) :].partition("/")
                if sep and ident.isascii() and ident.isdigit():
                    route = routes.get(rest)
                    if route is not None:
                        return route, int(ident)
        return None, None
