"""One simulator instance: the request pipeline of the operation routes, the `/_sim/` control routes, statistics.

Control routes live under `/_sim/` and need no API key: `GET /_sim/stats`, `GET /_sim/polls`, `GET|POST
/_sim/faults`, `POST /_sim/config` (duration_s, polls_to_complete, rate_limit_rps, `durations`: per-kind
log-normal job durations, see `simulator/config.py`, and webhook_url, webhook_secret: result webhooks, see
`simulator/webhooks.py`), `POST /_sim/reset`, `GET /_sim/health`. Stats count operation
requests only, keyed `"<route name> <status>"` where the route name is the path's last segment (`auto-fetch`,
`auto-fetch-progress`, ..., `unknown` for unmatched paths; see `simulator/routes.py` for the exceptions) and a
dropped connection counts as status `dropped`; a lost answer (`lost_start_rate`) counts under what the client got
(`dropped`, 502, 504). `started_by_key` counts start calls per kind and request key (the
key `/_sim/polls` reports), so a test can see a start sent twice.
A request is checked in this order: route (404/405), API key (401), rate limit (429), injected fault, operation.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from simulator.config import SimConfig, check_durations, check_secret, check_timing, check_url
from simulator.faults import (
    DROP,
    ERROR,
    HANG,
    LOST_START,
    MALFORMED,
    NONE,
    RATE_429,
    RATE_LIMIT,
    UNEXPECTED_STATUS,
    UNKNOWN_STATUS,
    FaultInjector,
    Faults,
    RequestWindow,
)
from simulator.jobs import JobStore
from simulator.model import EVALUATOR_RUN
from simulator.protocol import Connection, Response, json_response
from simulator.replies import JsonObject
from simulator.routes import ANSWERS, Router
from simulator.webhooks import WebhookSender

_NOT_FOUND = b'{"detail":"Not found."}'
_UNAUTHORIZED = b'{"detail":"Invalid API key."}'


class Simulator:
    """Routing, statistics and control of one simulator instance; only ever touched from its event loop thread."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.api_key = cfg.api_key.encode()
        self.rate_limit_rps = cfg.rate_limit_rps
        self.store = JobStore(cfg.duration_s, cfg.polls_to_complete, cfg.seed, ANSWERS, cfg.durations)
        self.injector = FaultInjector(cfg.faults, cfg.seed)
        self.window = RequestWindow()
        self.connections: set[Connection] = set()
        self.connections_total = 0
        self.requests_total = 0
        self.by_route: dict[tuple[str, int | str], int] = {}
        self.started_at = time.time()
        self.router = Router(self.store)
        self.base_url = ""
        self.webhooks = WebhookSender(
            cfg.webhook_url, cfg.webhook_secret, cfg.seed, lambda: self.injector.faults, self.store.jobs
        )
        self.store.on_change = self.webhooks.watch

    def serving_at(self, base_url: str) -> None:
        """Tell the simulator its own URL: the results list's `next`/`previous` links are absolute, built from the
        request's Host header as Django does, else from this URL."""
        self.base_url = self.router.base_url = base_url

    def close(self) -> None:
        """Stop delivering webhooks and close every connection (the server is stopping)."""
        self.webhooks.close()
        self.close_connections()

    # -- request handling -------------------------------------------------------------------------------------

    def _count(self, name: str, status: int | str) -> None:
        key = (name, status)
        self.by_route[key] = self.by_route.get(key, 0) + 1

    def handle(
        self, method: bytes, target: str, api_key: bytes | None, body: bytes, host: bytes | None = None
    ) -> Response:
        path, _, query = target.partition("?")
        if path.startswith("/_sim/"):
            return self._control(method, path, body)
        now = time.monotonic()
        self.requests_total += 1
        self.window.arrive(now)
        route, agent_id = self.router.match(path)
        if route is None:
            self._count("unknown", 404)
            return Response(404, _NOT_FOUND)
        if method != route.method:
            self._count(route.name, 405)
            return Response(405, b'{"detail":"Method not allowed."}', headers=b"Allow: %s\r\n" % route.method)
        if api_key != self.api_key:
            self._count(route.name, 401)
            return Response(401, _UNAUTHORIZED)
        injector = self.injector
        if self.rate_limit_rps > 0 and not self.window.admit(now, self.rate_limit_rps):
            injector.counts[RATE_LIMIT] += 1
            self._count(route.name, 429)
            return self._throttled(injector.latency_s)
        delay = injector.latency_s
        fault = injector.decide(route.progress, route.method == b"POST") if injector.active else NONE
        unexpected: str | None = None
        if route.name == "results-list":
            scheme = "https" if self.cfg.ssl_context else "http"
            self.router.base_url = f"{scheme}://{host.decode('latin-1')}" if host else self.base_url
        if fault == LOST_START:
            route.operation(agent_id, query, body, None)
            return self._lost(route.name, delay)
        if fault != NONE:
            if fault == DROP:
                self._count(route.name, "dropped")
                return Response(0, b"", delay=delay, drop=True)
            if fault == HANG:
                delay += injector.faults.hang_s
            elif fault == ERROR:
                status, content_type, payload = injector.next_error()
                self._count(route.name, status)
                return Response(status, payload, content_type, delay=delay)
            elif fault == RATE_429:
                self._count(route.name, 429)
                return self._throttled(delay)
            elif fault == MALFORMED:
                self._count(route.name, 200)
                return Response(200, injector.next_malformed(), delay=delay)
            elif fault == UNKNOWN_STATUS:
                unexpected = UNEXPECTED_STATUS
        status, payload = route.operation(agent_id, query, body, unexpected)
        self._count(route.name, status)
        return Response(status, payload, delay=delay)

    def _lost(self, name: str, delay: float) -> Response:
        """The answer of a POST that was processed but whose answer is lost (see `simulator/faults.py`)."""
        way = self.injector.next_lost()
        if way == DROP:
            self._count(name, "dropped")
            return Response(0, b"", delay=delay, drop=True)
        if way == "502":
            self._count(name, 502)
            return Response(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", b"text/html", delay=delay)
        self._count(name, 504)
        body = b"<html><body><h1>504 Gateway Time-out</h1></body></html>"
        return Response(504, body, b"text/html", delay=delay + self.injector.faults.hang_s)

    def _throttled(self, delay: float) -> Response:
        retry_after = self.injector.next_retry_after()
        seconds = math.ceil(self.injector.faults.retry_after_s)
        return Response(
            429,
            b'{"detail":"Request was throttled. Expected available in %d seconds."}' % seconds,
            headers=b"Retry-After: %s\r\n" % retry_after.encode(),
            delay=delay,
        )

    # -- control routes ---------------------------------------------------------------------------------------

    def _control(self, method: bytes, path: str, body: bytes) -> Response:
        name = path.rstrip("/")
        try:
            if method == b"GET":
                if name == "/_sim/stats":
                    return json_response(200, self.stats())
                if name == "/_sim/polls":
                    return json_response(200, self.polls_report())
                if name == "/_sim/faults":
                    return json_response(200, self.faults_report())
                if name == "/_sim/health":
                    return json_response(200, {"ok": True})
            elif method == b"POST":
                if name == "/_sim/reset":
                    self.reset()
                    return json_response(200, {"ok": True})
                if name in ("/_sim/faults", "/_sim/config"):
                    changes = json.loads(body) if body.strip() else {}
                    if not isinstance(changes, dict):
                        raise ValueError("expected a JSON object")
                    if name == "/_sim/faults":
                        self.set_faults(**changes)
                        return json_response(200, self.faults_report())
                    self.configure(**changes)
                    return json_response(200, self.config_report())
        except (ValueError, TypeError) as exc:
            return json_response(400, {"detail": str(exc)})
        return Response(404, _NOT_FOUND)

    def stats(self) -> dict[str, Any]:
        store = self.store
        return {
            "requests_total": self.requests_total,
            "by_route": {f"{name} {status}": count for (name, status), count in sorted(self.by_route.items(), key=str)},
            "started_jobs": store.started_jobs,
            "started_by_kind": dict(store.started_by_kind),
            "started_by_key": {kind: dict(keys) for kind, keys in store.started_by_key.items()},
            "jobs": len(store.jobs),
            "terminal_jobs": store.count_terminal(),
            "polls_total": store.polls_total,
            "max_rps_1s": self.window.max_rps_1s,
            "faults_injected": dict(self.injector.counts),
            "webhooks": self.webhooks.stats(),
            "connections_total": self.connections_total,
            "connections_open": len(self.connections),
            "uptime_s": round(time.time() - self.started_at, 3),
            **self.config_report(),
            "faults": self.injector.faults.to_dict(),
        }

    def config_report(self) -> dict[str, Any]:
        return {
            "duration_s": self.store.duration_s,
            "polls_to_complete": self.store.polls_to_complete,
            "durations": {kind: list(pair) for kind, pair in (self.store.durations or {}).items()} or None,
            "rate_limit_rps": self.rate_limit_rps,
            "seed": self.cfg.seed,
            "webhook_url": self.webhooks.url,
            "webhook_secret_set": self.webhooks.secret is not None,
        }

    def polls_report(self) -> dict[str, JsonObject]:
        """`JobStore.polls_report`, each evaluator result also with `webhook_at` (see `simulator/webhooks.py`)."""
        report = self.store.polls_report()
        for ident, record in report.items():
            if record["kind"] == EVALUATOR_RUN:
                record["webhook_at"] = self.webhooks.sent_at(ident)
        return report

    def faults_report(self) -> dict[str, Any]:
        return {**self.injector.faults.to_dict(), "rate_limit_rps": self.rate_limit_rps}

    def set_faults(self, **changes: Any) -> Faults:
        rate_limit = changes.pop("rate_limit_rps", None)
        faults = self.injector.faults.updated(**changes)
        if rate_limit is not None:
            self.configure(rate_limit_rps=rate_limit)
        self.injector.set(faults)
        return faults

    def configure(self, **changes: Any) -> None:
        known = {"duration_s", "polls_to_complete", "rate_limit_rps", "durations", "webhook_url", "webhook_secret"}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        url = check_url(changes["webhook_url"]) if "webhook_url" in changes else self.webhooks.url
        secret = check_secret(changes["webhook_secret"]) if "webhook_secret" in changes else self.webhooks.secret
        duration_s = changes.get("duration_s", self.store.duration_s)
        polls = changes.get("polls_to_complete", self.store.polls_to_complete)
        rate_limit = changes.get("rate_limit_rps", self.rate_limit_rps)
        check_timing(duration_s, polls, rate_limit)
        durations = check_durations(changes["durations"]) if "durations" in changes else self.store.durations
        self.store.duration_s = duration_s
        self.store.polls_to_complete = polls
        self.store.durations = durations
        self.rate_limit_rps = rate_limit
        self.webhooks.url = url
        self.webhooks.secret = secret

    def reset(self) -> None:
        self.store.reset()
        self.injector.reset()
        self.webhooks.reset()
        self.window.reset()
        self.by_route.clear()
        self.requests_total = 0
        self.connections_total = len(self.connections)
        self.started_at = time.time()

    def close_connections(self) -> None:
        for conn in list(self.connections):
            conn.abort()
