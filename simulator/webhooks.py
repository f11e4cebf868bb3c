"""Result webhooks: when an evaluator result ends, the simulator POSTs Cekura's `result.completed` to a URL.

Set the URL and secret with `SimConfig(webhook_url=..., webhook_secret=...)`, `--webhook-url`/`--webhook-secret`,
`SimulatorHandle.configure(webhook_url=..., webhook_secret=...)` or `POST /_sim/config`; no URL (the default): no
webhooks. A result "ends" when it is terminal at Cekura, whether or not anyone polls it: at its start plus its
duration (a timer on the event loop), on the GET that sees it terminal when `polls_to_complete` is set, at
`end_calls` for a cancelled one; a ``[hang]`` result that is never cancelled never ends. Every result that ends
while a URL is set is announced once, whatever its status (``completed``, ``failed``, ``timeout``, ``cancelled``):

    POST <webhook_url>   Content-Type: application/json   X-CEKURA-SECRET: <webhook_secret> (when one is set)
    {"event_type": "result.completed", "data": {"id", "name", "agent", "status", "success_rate",
     "met_expected_outcome_count", "total_expected_outcome_count", "run_as_text", "is_cronjob",
     "runs": {"<run id>": {"id", "scenario": {"id", "name"}, "status", "success", "evaluation", "transcript_object",
     "error_message"}}, "created_at"}}

The data is what `results/{id}/` says once terminal, in the webhook's own run shape. Delivery never blocks the API:
the POST runs on a small thread pool (`http.client`, `TIMEOUT_S`, no proxy); a 5xx, a timeout or a connection error
is retried `RETRIES` times after `BACKOFF_S`, then twice that; a 2xx is `sent`, anything else, or the last retry
failing, is `failed`. Faults (`Faults`, seeded with the simulator's seed, replayed after a reset): per ended result,
one draw decides `webhook_loss_rate` (never sent: `lost`), one `webhook_duplicate_rate` (two independent deliveries:
`duplicated`), then per delivery its delay: `webhook_delay_s`, or a uniform draw up to `webhook_delay_max_s` when
that is larger. A reset forgets pending deliveries (one already on the wire still completes, uncounted).

`stats()["webhooks"]`: `ended` (results that ended while a URL was set), `lost`, `duplicated`, `sent`, `failed`,
`retried` (retry attempts), `pending` (deliveries scheduled or in flight). `/_sim/polls` gives each evaluator result
`webhook_at` (wall times at which deliveries that got a 2xx were sent) next to `finishes_at` (when it ended at
Cekura), so a benchmark can measure how long after the end a client noticed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from simulator.config import check_secret, check_url
from simulator.evaluations import current_view
from simulator.faults import Faults
from simulator.model import EVALUATOR_RUN, Job
from simulator.replies import JsonObject, dumps

EVENT_TYPE = "result.completed"
TIMEOUT_S = 2.0
RETRIES = 2
BACKOFF_S = 0.25
WORKERS = 4
_COUNTERS = ("ended", "lost", "duplicated", "sent", "failed", "retried")


def payload(view: JsonObject) -> JsonObject:
    """The `result.completed` event for a terminal result (its `results/{id}/` answer)."""
    runs = sorted(view["runs"].values(), key=lambda run: run["id"])
    return {
        "event_type": EVENT_TYPE,
        "data": {
            "id": view["id"],
            "name": view["name"],
            "agent": view["agent"],
            "status": view["status"],
            "success_rate": view["success_rate"],
            "met_expected_outcome_count": view["success_runs_count"],
            "total_expected_outcome_count": view["total_runs_count"],
            "run_as_text": view["run_as_text"],
            "is_cronjob": view["is_cronjob"],
            "runs": {
                str(run["id"]): {
                    "id": run["id"],
                    "scenario": {"id": run["scenario"], "name": run["scenario_name"]},
                    "status": run["status"],
                    "success": run["success"],
                    "evaluation": {"expected_outcome": {"met": run["success"]}},
                    "transcript_object": [],
                    "error_message": run["error_message"],
                }
                for run in runs
            },
            "created_at": view["created_at"],
        },
    }


def post(url: str, secret: str | None, body: bytes) -> int:
    """POST one webhook; the HTTP status, or 0 for a connection error or timeout. `http.client` keeps the header
    names' spelling (`X-CEKURA-SECRET`), which urllib would rewrite."""
    parts = urlsplit(url)
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    headers = {"Content-Type": "application/json", "User-Agent": "cekura-simulator-webhooks"}
    if secret is not None:
        headers["X-CEKURA-SECRET"] = secret
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection = connection_type(parts.netloc, timeout=TIMEOUT_S)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return int(response.status)
        finally:
            connection.close()
    except (OSError, http.client.HTTPException, ValueError):  # timeouts, refused or reset connections, bad answers
        return 0


class WebhookSender:
    """Watches evaluator results and delivers their webhooks; touched only from the event loop thread, except
    `post`, which runs on the pool."""

    def __init__(
        self,
        url: str | None,
        secret: str | None,
        seed: int,
        faults: Callable[[], Faults],
        jobs: Mapping[str, Job],
    ) -> None:
        self.url = check_url(url)
        self.secret = check_secret(secret)
        self.seed = seed
        self._faults = faults
        self._jobs = jobs
        self._rng = random.Random(seed ^ 0x3EB400C5)
        self._generation = 0
        self._ended: dict[str, list[float]] = {}  # result id -> wall times of its delivered webhooks
        self.counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.pending = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def reset(self) -> None:
        self._generation += 1
        self._rng = random.Random(self.seed ^ 0x3EB400C5)
        self._ended.clear()
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self.pending = 0

    def close(self) -> None:
        self._generation += 1
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def stats(self) -> dict[str, int]:
        return {**self.counts, "pending": self.pending}

    def sent_at(self, result_id: str) -> list[float]:
        return list(self._ended.get(result_id, ()))

    # -- noticing that a result ended --------------------------------------------------------------------------

    def watch(self, job: Job) -> None:
        """`JobStore.on_change`: a job started, was cancelled or was first answered terminal."""
        if job.kind != EVALUATOR_RUN or job.progress_id in self._ended:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving (a Simulator driven directly): nothing can be scheduled
            return
        if job.is_running(time.monotonic()):
            ends = job.finishes_at()
            if ends is None:  # never ends on its own, or ends on a poll: a later change says when
                return
            delay = max(0.0, ends - time.time())
        else:
            delay = 0.0
        self._loop.call_later(delay, self._check, job, self._generation)

    def _check(self, job: Job, generation: int) -> None:
        ident = job.progress_id
        if generation != self._generation or ident in self._ended or self._jobs.get(ident) is not job:
            return
        if job.is_running(time.monotonic()):  # the wall and monotonic clocks disagree by a hair: look again soon
            if job.finishes_at() is not None:
                self._call_later(0.005, self._check, job, generation)
            return
        self._ended[job.progress_id] = []
        if self.url is not None:
            self._announce(job)

    def _announce(self, job: Job) -> None:
        self.counts["ended"] += 1
        faults = self._faults()
        rng = self._rng
        lost = rng.random() < faults.webhook_loss_rate
        twice = rng.random() < faults.webhook_duplicate_rate
        if lost:
            self.counts["lost"] += 1
            return
        if twice:
            self.counts["duplicated"] += 1
        body = dumps(payload(current_view(job, time.monotonic())))
        for _ in range(2 if twice else 1):
            low, high = faults.webhook_delay_s, faults.webhook_delay_max_s
            delay = rng.uniform(low, high) if high > low else low
            self.pending += 1
            self._call_later(delay, self._submit, job.progress_id, body, 0, self._generation)

    # -- delivering ---------------------------------------------------------------------------------------------

    def _call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            self._loop.call_later(delay, callback, *args)

    def _submit(self, result_id: str, body: bytes, attempt: int, generation: int) -> None:
        if generation != self._generation:
            return
        url, secret, loop = self.url, self.secret, self._loop
        if url is None or loop is None:  # switched off meanwhile
            self.pending -= 1
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="sim-webhook")
        sent_at = time.time()
        future = self._pool.submit(post, url, secret, body)

        def done(finished: concurrent.futures.Future[int]) -> None:
            status = 0 if finished.cancelled() or finished.exception() else finished.result()
            with contextlib.suppress(RuntimeError):  # a closed loop: the simulator stopped
                loop.call_soon_threadsafe(self._delivered, result_id, body, attempt, generation, status, sent_at)

        future.add_done_callback(done)

    def _delivered(
        self, result_id: str, body: bytes, attempt: int, generation: int, status: int, sent_at: float
    ) -> None:
        if generation != self._generation:
            return
        if 200 <= status < 300:
            self.counts["sent"] += 1
            self._ended.setdefault(result_id, []).append(sent_at)
        elif (status == 0 or status >= 500) and attempt < RETRIES:
            self.counts["retried"] += 1
            self._call_later(BACKOFF_S * 2**attempt, self._submit, result_id, body, attempt + 1, generation)
            return
        else:
            self.counts["failed"] += 1
        self.pending -= 1
