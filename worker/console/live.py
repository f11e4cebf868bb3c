"""Live updates for open pages: one thread per console process tails the progress and result streams and hands
each event to every open page that wants it, which gets it as a server-sent event.

Why one thread rather than a read per page: Redis does the same work whether one page is open or fifty. What the
thread reads, while at least one page is open (and for `DEFAULT_IDLE_S` after the last one closed, then it stops):

- the entries added to both streams since its last read (`worker.console.feed`: only the fields an event shows,
  each cut, at most `feed.DEFAULT_COUNT` entries and `feed.DEFAULT_READ_BUDGET` bytes a stream), every
  `DEFAULT_POLL_S`, at once again while a read comes back full (a backlog);
- with an overview open, the `status` summary every `DEFAULT_SUMMARY_INTERVAL_S` (or 20 times as long as the
  last one took, if longer: a large backlog of active jobs makes it costly), shared with page loads: however many
  pages load at once, one of them computes it and the others wait for its answer;
- with a job's page open, that job's record (each field cut) when an event names it and every
  `DEFAULT_JOB_REFRESH_S` (so a change shows even with progress events off), at most `DEFAULT_MAX_WATCHED` jobs;
- once when it starts, the last hour of result events (at most `overview.DEFAULT_SCAN`) to count outcomes.

A failure never ends the thread: a Redis error is shown on the overview and the read tried again a second later;
anything else (data no writer of the service makes) is logged, and the feed goes on.

A page that can't keep up (its queue of `DEFAULT_QUEUE_SIZE` events is full) is told it lagged and reconnects.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog

from config.settings import Settings
from worker.console import feed, reads
from worker.console.detail import RECORD_FIELDS, record_fields
from worker.console.overview import Outcomes, shape, unavailable
from worker.ops.summary import summarize
from worker.redact import redact
from worker.runtime.connection import connect, server_ms

log = structlog.get_logger(__name__)

#: Seconds between two reads of the streams, unless the last one came back full.
DEFAULT_POLL_S = 0.25

#: Seconds a Redis command of the thread may take before it counts as failed.
DEFAULT_SOCKET_TIMEOUT_S = 10.0

#: How often open overviews get the service summary.
DEFAULT_SUMMARY_INTERVAL_S = 5.0

#: At most this many active jobs are read for the overview's in-flight figures (shown as "N+" past it), so one
#: overview costs the same whatever the backlog; `cekura-worker status` counts them all.
DEFAULT_OVERVIEW_JOBS = 2000

#: How often the records of jobs shown on open job pages are read again.
DEFAULT_JOB_REFRESH_S = 2.0

#: The most distinct jobs whose records one read refreshes.
DEFAULT_MAX_WATCHED = 100

#: Events a page may fall behind by before it is told to reconnect.
DEFAULT_QUEUE_SIZE = 1000

#: Feed lines sent to an overview per read at most (the outcome counts include every event).
DEFAULT_FEED_PER_READ = 20

#: Seconds the thread keeps going after the last page closed, so reloading a page doesn't restart it.
DEFAULT_IDLE_S = 30.0

#: Seconds between keep-alive comments on an idle event stream.
DEFAULT_KEEPALIVE_S = 15.0

#: Milliseconds a browser waits before reconnecting a dropped event stream.
DEFAULT_RETRY_MS = 2000

Event = tuple[str, dict[str, Any]]


@dataclass(eq=False)
class Subscription:
    """An open page: `job_id` for a job's page, None for an overview."""

    loop: asyncio.AbstractEventLoop
    job_id: str | None
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(DEFAULT_QUEUE_SIZE))
    lagged: bool = False


def sse(name: str, data: dict[str, Any]) -> str:
    """One server-sent event (JSON never holds a raw newline, so `data` is one line)."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


class Hub:
    """The live-feed thread and the pages it serves (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.outcomes = Outcomes()
        #: The last Redis failure the feed met, for pages to show (empty when reads succeed).
        self.problem = ""
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._counted = threading.Event()
        self._summary: tuple[float, dict[str, Any]] | None = None
        self._summary_cost_s = 0.0
        self._summary_lock = threading.Lock()
        #: Why the last summary could not be made (empty when it could), for the overview to show.
        self.summary_problem = ""

    # -- pages --------------------------------------------------------------------------------------------------

    def subscribe(self, job_id: str | None) -> Subscription:
        """Register an open page (call from its event loop) and start the thread if it isn't running."""
        sub = Subscription(asyncio.get_running_loop(), job_id)
        with self._lock:
            self._subs.add(sub)
        if job_id is None and self._summary is not None:
            sub.queue.put_nowait(("summary", self._summary[1]))
            sub.queue.put_nowait(("outcomes", self._outcomes_event()))
        self.ensure_running()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    async def stream(self, job_id: str | None) -> AsyncIterator[str]:
        """The event stream of one open page, until it closes or the console stops."""
        sub = self.subscribe(job_id)
        try:
            yield f"retry: {DEFAULT_RETRY_MS}\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), timeout=DEFAULT_KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event is None:
                    return
                if sub.lagged:
                    yield sse("lagged", {})
                    return
                yield sse(*event)
        finally:
            self.unsubscribe(sub)

    def ensure_running(self) -> None:
        with self._lock:
            if self._stopping.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._counted.clear()
            self._thread = threading.Thread(target=self._run, name="cekura-console-live", daemon=True)
            self._thread.start()

    def outcomes_table(self, wait_s: float = 5.0) -> dict[str, Any] | None:
        """The outcome counts, once the thread has counted the last hour (None if it hasn't within `wait_s`)."""
        self.ensure_running()
        return self._outcomes_event() if self._counted.wait(wait_s) else None

    def summary(self, client: redis.Redis, *, max_age_s: float = DEFAULT_SUMMARY_INTERVAL_S) -> dict[str, Any]:
        """The shaped `status` summary, read again only when the last one is older than `max_age_s`, by one caller
        at a time (the others wait for its answer: a summary reads every active job). A Redis error propagates;
        anything else is logged, and the last summary (or one of "?") is shown with `summary_problem` set."""
        cached = self._summary
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        with self._summary_lock:
            cached = self._summary
            if cached is not None and time.monotonic() - cached[0] < max_age_s:
                return cached[1]
            began = time.monotonic()
            try:
                shaped = shape(summarize(client, self.settings, limit=DEFAULT_OVERVIEW_JOBS))
                self.summary_problem = ""
            except redis.RedisError:
                raise
            except Exception as exc:  # data no writer of the service makes: the rest of the overview still shows
                log.error("console_summary_failed", error_type=type(exc).__name__, exc_info=exc)
                self.summary_problem = "The service summary could not be made from what Redis holds: see the log."
                shaped = cached[1] if cached is not None else unavailable()
            self._summary_cost_s = time.monotonic() - began
            self._summary = (time.monotonic(), shaped)
            return shaped

    def stop(self, *, wait_s: float = 0.0) -> None:
        """End every open page's stream and stop the thread; it ends once its Redis command in flight returns
        (waited for up to `wait_s` seconds)."""
        self._stopping.set()
        with self._lock:
            subs, thread = list(self._subs), self._thread
        for sub in subs:
            self._offer(sub, None)
        if thread is not None and wait_s > 0:
            thread.join(wait_s)

    # -- the thread ---------------------------------------------------------------------------------------------

    def _outcomes_event(self) -> dict[str, Any]:
        return {"table": self.outcomes.table(), "partial": self.outcomes.partial}

    def _offer(self, sub: Subscription, event: Event | None) -> None:
        def put() -> None:
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.lagged = True

        try:
            sub.loop.call_soon_threadsafe(put)
        except RuntimeError:  # its loop has closed: the page is gone
            self.unsubscribe(sub)

    def _run(self) -> None:
        client = connect(self.settings, socket_timeout=DEFAULT_SOCKET_TIMEOUT_S)
        ids: dict[str, str] | None = None
        next_summary = next_refresh = idle_since = 0.0
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                with self._lock:
                    subs = list(self._subs)
                    idle_since = 0.0 if subs else (idle_since or now)
                    if not subs and now - idle_since > DEFAULT_IDLE_S:
                        self._thread = None
                        return
                more = False
                try:
                    if ids is None:
                        ids = self._start(client)
                    overviews = [s for s in subs if s.job_id is None]
                    watched = {s.job_id for s in subs if s.job_id is not None}
                    if overviews and now >= next_summary:
                        self.outcomes.advance(server_ms(client))
                        self._send(overviews, ("summary", self.summary(client, max_age_s=1.0)))
                        self._send(overviews, ("outcomes", self._outcomes_event()))
                        next_summary = now + max(DEFAULT_SUMMARY_INTERVAL_S, 20 * self._summary_cost_s)
                    if watched and now >= next_refresh:
                        self._send_records(client, subs, watched)
                        next_refresh = now + DEFAULT_JOB_REFRESH_S
                    entries, more = feed.read(client, self.settings, ids)
                    self._dispatch(client, entries, subs)
                    self.problem = ""
                except redis.RedisError as exc:
                    self.problem = f"Redis at {self.settings.redis_url_redacted} failed: {redact(str(exc))}"
                    log.warning("console_live_failed", error=self.problem, error_type=type(exc).__name__)
                    self._stopping.wait(1.0)
                    continue
                except Exception as exc:  # data no writer of the service makes: logged, and the feed goes on
                    log.error("console_live_error", error_type=type(exc).__name__, exc_info=exc)
                    self._stopping.wait(1.0)
                    continue
                if not more:
                    self._stopping.wait(DEFAULT_POLL_S)
        finally:
            client.close()
            client.connection_pool.disconnect()

    def _start(self, client: redis.Redis) -> dict[str, str]:
        """Where the feed starts (the streams' last entries), after counting the last hour of outcomes up to it."""
        results = self.settings.cekura_results_stream
        ids = {stream: feed.last_id(client, stream) for stream in (results, self.settings.cekura_progress_stream)}
        self.outcomes = Outcomes()
        try:
            self.outcomes.load(client, self.settings, ids[results], server_ms(client))
        except redis.RedisError:
            raise
        except Exception as exc:  # counted from the feed on, not stalling every overview
            log.error("console_outcomes_failed", error_type=type(exc).__name__, exc_info=exc)
            self.outcomes.partial = True
        self._counted.set()
        return ids

    def _send(self, subs: list[Subscription], event: Event) -> None:
        for sub in subs:
            self._offer(sub, event)

    def _send_records(self, client: redis.Redis, subs: list[Subscription], job_ids: set[str]) -> None:
        """Read the records of `job_ids` (at most `DEFAULT_MAX_WATCHED`) and send each to the pages showing it."""
        chosen = sorted(job_ids)[:DEFAULT_MAX_WATCHED]
        for job_id, job in zip(chosen, reads.jobs(client, self.settings, chosen, RECORD_FIELDS), strict=True):
            if not job.found:
                continue
            try:
                fields = record_fields(job.fields, job.secrets)
            except Exception as exc:  # one odd record never holds up the others, nor the feed
                log.warning("console_live_record_skipped", job_id=job_id, error_type=type(exc).__name__)
                continue
            self._send([s for s in subs if s.job_id == job_id], ("job", fields))

    def _dispatch(self, client: redis.Redis, entries: list[feed.Entry], subs: list[Subscription]) -> None:
        """Count a read's result events and hand its events to the pages that want them."""
        for entry in entries:
            if entry.result:
                self.outcomes.add(entry.order[0], entry.fields.get("kind", ""), entry.fields.get("status", ""))
        entries = sorted(entries, key=lambda e: e.order)
        overviews = [s for s in subs if s.job_id is None]
        watched = {s.job_id for s in subs if s.job_id is not None}
        shown = entries[-DEFAULT_FEED_PER_READ:] if overviews else []
        for_jobs = [e for e in entries if e.job_id in watched]
        if not shown and not for_jobs:
            return
        chosen = list({id(e): e for e in [*shown, *for_jobs]}.values())
        made = feed.events(chosen, feed.secrets_of(client, self.settings, chosen))
        by_entry = {id(entry): event for entry, event in made}
        for entry in shown:
            if id(entry) in by_entry:
                self._send(overviews, by_entry[id(entry)])
        if any(e.result for e in entries):
            self._send(overviews, ("outcomes", self._outcomes_event()))
        touched: set[str] = set()
        for sub in subs:
            for entry in for_jobs:
                if sub.job_id == entry.job_id and id(entry) in by_entry:
                    self._offer(sub, by_entry[id(entry)])
                    touched.add(entry.job_id)
        if touched:
            self._send_records(client, subs, touched)
