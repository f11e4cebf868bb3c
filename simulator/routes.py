"""The route table of the nine Cekura API operations (the paths of `cekura-openapi.json`, each ending in `/`).

A route's name is its path's last segment (`auto-fetch`, `auto-fetch-progress`, ...): it keys the statistics.
Agent routes carry the agent id in the path (`/test_framework/v2/aiagents/<id>/...`); the others are fixed paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import parse_qs

from simulator.jobs import JobStore
from simulator.model import AUTO_FETCH, CLEAN_DESCRIPTION, SCENARIO_AGENT, TOGGLE_MOCK_TOOLS
from simulator.replies import Reply

AGENT_PREFIX = "/test_framework/v2/aiagents/"

#: An operation: (agent id from the path or None, query string, body, status word a fault substitutes or None).
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


class Router:
    """Maps a request path to its operation on one job store."""

    def __init__(self, store: JobStore) -> None:
        def progress(kind: str) -> Operation:
            def op(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> Reply:
                return store.progress(kind, agent_id, progress_id(query), unexpected)

            return op

        def auto_fetch(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> Reply:
            return store.start_auto_fetch(cast(int, agent_id), body)

        def toggle(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> Reply:
            return store.start_toggle(cast(int, agent_id), body)

        def scenario(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> Reply:
            return store.start_scenario_agent(body)

        def cancel(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> Reply:
            return store.cancel_scenario_agent(body)

        def clean(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> Reply:
            return store.start_clean_description(body)

        self._agent_routes: dict[str, Route] = {
            "auto-fetch/": Route("auto-fetch", b"POST", False, auto_fetch),
            "auto-fetch-progress/": Route("auto-fetch-progress", b"GET", True, progress(AUTO_FETCH)),
            "toggle-mock-tools/": Route("toggle-mock-tools", b"POST", False, toggle),
            "toggle-mock-tools-progress/": Route(
                "toggle-mock-tools-progress", b"GET", True, progress(TOGGLE_MOCK_TOOLS)
            ),
        }
        scenarios = "/test_framework/v1/scenarios/"
        metrics = "/test_framework/v1/metrics/"
        self._static_routes: dict[str, Route] = {
            scenarios + "scenario-agent/": Route("scenario-agent", b"POST", False, scenario),
            scenarios + "scenario-agent-progress/": Route(
                "scenario-agent-progress", b"GET", True, progress(SCENARIO_AGENT)
            ),
            scenarios + "cancel-agent/": Route("cancel-agent", b"POST", False, cancel),
            metrics + "generate_clean_description_bg/": Route("generate_clean_description_bg", b"POST", False, clean),
            metrics + "generate_clean_description_progress/": Route(
                "generate_clean_description_progress", b"GET", True, progress(CLEAN_DESCRIPTION)
            ),
        }

    def match(self, path: str) -> tuple[Route | None, int | None]:
        route = self._static_routes.get(path)
        if route is not None:
            return route, None
        if path.startswith(AGENT_PREFIX):
            ident, sep, rest = path[len(AGENT_PREFIX) :].partition("/")
            if sep and ident.isascii() and ident.isdigit():
                route = self._agent_routes.get(rest)
                if route is not None:
                    return route, int(ident)
        return None, None
