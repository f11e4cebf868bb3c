"""The Python client for producers: submit, check, cancel, retry and read results, with nothing but Redis.

    from worker.client import Client
    client = Client()                      # settings from the environment (REDIS_URL, ...)
    job_id = client.submit("agent.auto_fetch", {"agent_id": 42}, metadata={"ticket": "T-1"})
    client.status(job_id)                  # dict, readable while the job runs and for a day after
    event = client.wait(job_id, timeout=60)
    client.retry(job_id)                   # a finished job again, as a new job: "<job_id>-retry-1"
    client.retry(job_id, force=True)       # even one whose start's outcome is unknown (it may run twice)

It validates exactly as the request stream does and raises `InvalidRequest` with the same messages, for any input
it can't accept, before sending anything. Submissions and retries carry the caller's current OpenTelemetry trace
context (the API's global propagator, W3C trace context by default), so the job continues the caller's trace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import redis
import structlog

from config.settings import Settings, get_settings
from worker.broker.redis_broker import CekuraBroker
from worker.errors import InvalidRequest
from worker.intake import requests, submission
from worker.redact import redact
from worker.runtime.connection import connect
from worker.store.jobs import RESULT_FIELDS, TRACE_FIELDS, JobStore, iso_from_ms
from worker.tracing.context import current as current_trace

_JSON_FIELDS = ("params", "metadata", "result")
_MS_FIELDS = {
    "submitted_ms": "submitted_at",
    "deadline_ms": "deadline_at",
    "next_poll_ms": "next_poll_at",
    "started_ms": "started_at",
}
_INTERNAL = {"lease", "updated_ms", "seq", "trace_polls_ms"}


class Client:
    """Submits jobs and reads their state and results; safe to share between threads."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: redis.Redis | None = None,
        broker: CekuraBroker | None = None,
    ) -> None:
        if not structlog.is_configured():
            # Inside someone else's application: log through stdlib logging, which it configures (or not).
            structlog.configure(
                processors=[structlog.stdlib.filter_by_level, structlog.stdlib.render_to_log_kwargs],
                logger_factory=structlog.stdlib.LoggerFactory(),
                wrapper_class=structlog.stdlib.BoundLogger,
            )
        self.settings = settings or get_settings()
        self._owns_redis = client is None
        self.redis = client or connect(self.settings)
        self.store = JobStore(self.redis, self.settings)
        # A broker only to enqueue start messages; producers never import the actors.
        self.broker = broker or CekuraBroker(client=self.redis, middleware=[], namespace=self.settings.key("dramatiq"))

    def close(self) -> None:
        if self._owns_redis:
            self.redis.close()
            self.redis.connection_pool.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        kind: str,
        params: Mapping[str, Any],
        *,
        job_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        deadline_s: float | None = None,
    ) -> str:
        """Submit a job and return its id; the same `job_id` again returns the existing job."""
        traceparent, tracestate = current_trace()
        request = requests.build(
            kind,
            params,
            job_id=job_id,
            metadata=metadata,
            deadline_s=deadline_s,
            settings=self.settings,
            traceparent=traceparent,
            tracestate=tracestate,
        )
        return submission.submit(self.store, self.broker, request).job_id

    def submit_many(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """Submit several jobs (each a dict of `submit`'s arguments); all are validated before any is sent."""
        built = []
        traceparent, tracestate = current_trace()
        for item in items:
            if not isinstance(item, Mapping):
                raise InvalidRequest(f"each item must be a mapping of submit's arguments, got {type(item).__name__}")
            built.append(
                requests.build(
                    item.get("kind"),
                    item.get("params", {}),
                    job_id=item.get("job_id"),
                    metadata=item.get("metadata"),
                    deadline_s=item.get("deadline_s"),
                    settings=self.settings,
                    traceparent=traceparent,
                    tracestate=tracestate,
                )
            )
        return [submission.submit(self.store, self.broker, request).job_id for request in built]

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's current state, or None if unknown (never submitted, or expired after CEKURA_JOB_TTL_S)."""
        requests.check_job_id(job_id)
        raw = self.store.get(job_id)
        return None if raw is None else job_view(raw)

    def cancel(self, job_id: str) -> submission.Cancelled:
        """Cancel a job; the answer says whether it was cancelled, had already finished, or is unknown. Raises
        `InvalidRequest` for a job id whose key holds something other than a job, as `submit` does."""
        return submission.cancel(self.store, self.broker, job_id)

    def answer(self, job_id: str, text: str) -> None:
        """Answer the question a waiting job asked (`status(job_id)["question"]`); the worker sends it to Cekura and
        polls on. Raises `InvalidRequest`, saying why, when the job is unknown, not waiting, already answered or
        past its deadline, or the answer is empty or over 10,000 characters."""
        outcome = submission.answer(self.store, job_id, text)
        if outcome.result != "ok":
            raise InvalidRequest(outcome.message)

    def retry(self, job_id: str, new_job_id: str | None = None, *, force: bool = False) -> str:
        """Submit a finished job again as a new job (same kind, params and deadline; `retry_of` added to its
        metadata) and return the new id: `new_job_id`, else `<job_id>-retry-<n>`.

        Raises `InvalidRequest`, saying why, for a job that is unknown (or expired), still active, or of a kind
        with secret params (never stored: submit it again with the secret), or when `new_job_id` is another job's;
        and, unless `force`, for a job whose start must not repeat and may have reached Cekura (its outcome is
        unknown: Cekura may still be running the first operation, and a retry may start a second one).
        """
        traceparent, tracestate = current_trace()
        outcome = submission.retry(
            self.store, self.broker, job_id, new_job_id, force=force, traceparent=traceparent, tracestate=tracestate
        )
        if outcome.result != "submitted":
            raise InvalidRequest(outcome.message)
        return outcome.job_id

    def results(self, *, after: str = "0", follow: bool = False, block_ms: int = 1000) -> Iterator[dict[str, str]]:
        """Result events after stream id `after` ("0" from the start, "$" only new ones); `follow` keeps waiting.

        A `rejected` event answers a request, not a job: its `job_id` is empty, `requested_job_id` is the id the
        request asked for (when it could be read safely) and `request_id` its stream entry. For at-least-once
        processing downstream, read the stream with your own consumer group instead.
        """
        stream = self.settings.cekura_results_stream
        last = after
        if last == "$":
            info = self.redis.xrevrange(stream, count=1)
            last = info[0][0].decode() if info else "0"
        while True:
            reply = self.redis.xread({stream: last}, count=500, block=block_ms if follow else None)
            if not reply:
                if follow:
                    continue
                return
            for entry_id, fields in reply[0][1]:
                last = entry_id.decode()
                yield {"id": last, **{k.decode(): v.decode() for k, v in fields.items()}}

    def wait(self, job_id: str, *, timeout: float = 60.0) -> dict[str, str]:
        """Block until the job's result event exists and return it (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.store.get(job_id)
            if raw is None:
                raise KeyError(f"no job {job_id}")
            if raw.get("state") == "finished":
                return result_view(job_id, raw)
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} did not finish within {timeout:g}s")


def job_view(raw: Mapping[str, str]) -> dict[str, Any]:
    """A job hash as a readable dict: JSON fields parsed, times in ISO 8601, internals dropped."""
    view: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _INTERNAL:
            continue
        if key in _JSON_FIELDS and value:
            view[key] = json.loads(value)
        elif key in _MS_FIELDS:
            view[_MS_FIELDS[key]] = iso_from_ms(int(value)) if value and value != "0" else None
        elif key in ("polls", "errors", "session_id") and value.lstrip("-").isdigit():
            view[key] = int(value)
        else:
            view[key] = redact(value)
    return view


def result_view(job_id: str, raw: Mapping[str, str]) -> dict[str, str]:
    """The result-event fields of a finished job, read from its record (with its trace context, as the event)."""
    event = {name: job_id if name == "job_id" else raw.get(name, "") for name in RESULT_FIELDS}
    return event | {name: raw[name] for name in TRACE_FIELDS if raw.get(name)}
