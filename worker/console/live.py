"""Live updates for open pages: one thread per console process tails the progress and result streams and hands
each event to every open page that wants it, which gets it as a server-sent event.

Why one thread rather than a read per page: Redis does the same work whether one page is open or fifty. What the
thread reads, while at least one page is open (and for `DEFAULT_IDLE_S` after the last one closed, then it stops):

- one `XREAD BLOCK` on both streams, `COUNT` `DEFAULT_COUNT` each: about one a second when idle, and while events
  flow at most one per `DEFAULT_MIN_READ_INTERVAL_S`, more only while a read comes back full (a backlog);
- with an overview open, the `status` summary every `DEFAULT_SUMMARY_INTERVAL_S` (or 20 times as long as the
  last one took, if longer: a large backlog of active jobs makes it costly), shared with page loads;
- with a job's page open, that job's hash (`HGETALL`) when an event names it and every `DEFAULT_JOB_REFRESH_S`
  (so a change shows even with progress events off), at most `DEFAULT_MAX_WATCHED` jobs per read;
- once when it starts, the last hour of result events (at most `overview.DEFAULT_SCAN`) to count outcomes.

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
from worker.console.detail import record_fields
from worker.console.overview import Outcomes, shape
from worker.ops.summary import summarize
from worker.redact import redact
from worker.runtime.connection import connect, server_ms
from worker.store.jobs import as_text, iso_from_ms

log = structlog.get_logger(__name__)

#: How long one XREAD blocks, in ms; also how soon the thread notices it should stop.
DEFAULT_BLOCK_MS = 1000

#: Entries read per stream per XREAD.
DEFAULT_COUNT = 1000

#: The shortest time between two reads that found events, unless the last one came back full.
DEFAULT_MIN_READ_INTERVAL_S = 0.25

#: How often open overviews get the service summary.
DEFAULT_SUMMARY_INTERVAL_S = 5.0

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
        """The shaped `status` summary, read again only when the last one is older than `max_age_s`."""
        cached = self._summary
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        began = time.monotonic()
        shaped = shape(summarize(client, self.settings))
        self._summary_cost_s = time.monotonic() - began
        self._summary = (time.monotonic(), shaped)
        return shaped

    def stop(self, *, wait_s: float = 0.0) -> None:
        """End every open page's stream and stop the thread; it ends within `DEFAULT_BLOCK_MS` (waited for up to
        `wait_s` seconds)."""
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
        client = connect(self.settings, socket_timeout=DEFAULT_BLOCK_MS / 1000 + 10)
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
                    reply = client.xread(ids, count=DEFAULT_COUNT, block=DEFAULT_BLOCK_MS)
                    full = self._dispatch(client, reply or [], ids, subs)
                    self.problem = ""
                except redis.RedisError as exc:
                    self.problem = f"Redis at {self.settings.redis_url_redacted} failed: {redact(str(exc))}"
                    log.warning("console_live_failed", error=self.problem, error_type=type(exc).__name__)
                    self._stopping.wait(1.0)
                    continue
                if reply and not full:
                    self._stopping.wait(DEFAULT_MIN_READ_INTERVAL_S)
        finally:
            client.close()
            client.connection_pool.disconnect()

    def _start(self, client: redis.Redis) -> dict[str, str]:
        """Where the feed starts (the streams' last entries), after counting the last hour of outcomes up to it."""
        ids = {}
        for stream in (self.settings.cekura_results_stream, self.settings.cekura_progress_stream):
            last = client.xrevrange(stream, count=1)
            ids[stream] = as_text(last[0][0]) if last else "0-0"
        self.outcomes = Outcomes()
        self.outcomes.load(client, self.settings, ids[self.settings.cekura_results_stream], server_ms(client))
        self._counted.set()
        return ids

    def _send(self, subs: list[Subscription], event: Event) -> None:
        for sub in subs:
            self._offer(sub, event)

    def _send_records(self, client: redis.Redis, subs: list[Subscription], job_ids: set[str]) -> None:
        """Read the records of `job_ids` (at most `DEFAULT_MAX_WATCHED`) and send each to the pages showing it."""
        chosen = sorted(job_ids)[:DEFAULT_MAX_WATCHED]
        pipe = client.pipeline(transaction=False)
        for job_id in chosen:
            pipe.hgetall(self.settings.key("job", job_id))
        for job_id, raw in zip(chosen, pipe.execute(raise_on_error=False), strict=True):
            if not raw or isinstance(raw, Exception):
                continue
            fields = record_fields({as_text(k): as_text(v) for k, v in raw.items()})
            self._send([s for s in subs if s.job_id == job_id], ("job", fields))

    def _dispatch(self, client: redis.Redis, reply: list[Any], ids: dict[str, str], subs: list[Subscription]) -> bool:
        """Hand a read's events to the pages; True when a stream's batch was full (more is waiting)."""
        results = self.settings.cekura_results_stream
        events: list[tuple[tuple[int, int], str, Event]] = []
        full = any_result = False
        for stream, entries in reply:
            name = as_text(stream)
            full = full or len(entries) >= DEFAULT_COUNT
            for entry_id, raw in entries:
                entry = ids[name] = as_text(entry_id)
                ms, _, seq = entry.partition("-")
                order = (int(ms), int(seq or 0))
                f = {as_text(k): as_text(v) for k, v in raw.items()}
                if name == results:
                    any_result = True
                    self.outcomes.add(order[0], f.get("kind", ""), f.get("status", ""))
                    events.append((order, f.get("job_id", ""), ("result", _result_line(entry, f))))
                else:
                    events.append((order, f.get("job_id", ""), ("progress", _progress_line(entry, f))))
        events.sort(key=lambda item: item[0])
        overviews = [s for s in subs if s.job_id is None]
        for _, _, event in events[-DEFAULT_FEED_PER_READ:]:
            self._send(overviews, event)
        if any_result:
            self._send(overviews, ("outcomes", self._outcomes_event()))
        touched: set[str] = set()
        for sub in subs:
            for _, job_id, event in events:
                if sub.job_id is not None and job_id == sub.job_id:
                    self._offer(sub, event)
                    touched.add(job_id)
        if touched:
            self._send_records(client, subs, touched)
        return full


def _at(entry: str) -> str:
    return iso_from_ms(int(entry.partition("-")[0]))


def _result_line(entry: str, f: dict[str, str]) -> dict[str, Any]:
    rejected = f.get("status") == "rejected"
    return {
        "entry_id": entry,
        "at": _at(entry),
        "job_id": redact(f.get("job_id", "")),
        "requested_job_id": redact(f.get("requested_job_id", "")) if rejected else "",
        "kind": redact(f.get("kind", "")),
        "status": redact(f.get("status", "")),
        "error": redact(f.get("error", "")[:200]),
    }


def _progress_line(entry: str, f: dict[str, str]) -> dict[str, Any]:
    return {
        "entry_id": entry,
        "at": _at(entry),
        "job_id": redact(f.get("job_id", "")),
        "kind": redact(f.get("kind", "")),
        "cekura_status": redact(f.get("cekura_status", "")),
        "current_stage": redact(f.get("current_stage", "")),
        "polls": redact(f.get("polls", "")),
        "state": redact(f.get("state", "")),
        "question": redact(f.get("question", "")),
    }
