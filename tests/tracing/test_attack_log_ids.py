"""An attack on: every log line of a traced job's step carries the job span's trace_id and span_id, and no line of
the same thread's next message carries the previous job's ids (the ids come from `worker.tracing.state.scope`, read
by `worker.runtime.logging._add_trace_ids`, cleared after every message by `JobContext` through `tracing.leave()`).
Its two breaks (tracing shut down while a message ran left that job's scope on the thread) and one older gap (an
unsampled job ended before any step logged without ids) are fixed; what held is kept too."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
import structlog

from tests.tracing.conftest import traced_runtime, wait_job
from worker import tracing
from worker.client import Client
from worker.runtime.app import Runtime
from worker.tracing import parse_traceparent

KIND = "metric.clean_description"
PARAMS = {"agent": 42, "metric_description": "did the agent greet the caller", "eval_type": "boolean"}


class Lines(logging.Handler):
    """Every record as the service's own formatter renders it (stdlib records, e.g. Dramatiq's, included: they go
    through the real `foreign_pre_chain`, where `_add_trace_ids` runs), as dicts."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        real = next(
            h.formatter
            for h in logging.getLogger().handlers
            if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
        )
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=real.foreign_pre_chain,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(default=str),
                ],
            )
        )
        self.lines: list[dict[str, Any]] = []
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(self.format(record))
        line["_thread"] = record.threadName
        with self.guard:
            self.lines.append(line)


@pytest.fixture
def lines(traced_rt: Runtime) -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _worker(rt: Runtime) -> dramatiq.Worker:
    w = dramatiq.Worker(rt.broker, worker_threads=1, worker_timeout=100)  # one thread: every message on it
    w.start()
    return w


def _ids(client: Client, job_id: str) -> tuple[str, str]:
    event = wait_job(client, job_id)
    carried = parse_traceparent(event["traceparent"])
    assert carried is not None, event
    return carried.trace_id, carried.span_id


def _hold_start(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The next start call blocks (inside the step, its scope set) until released."""
    cekura = rt.cekura
    original = cekura.start
    entered, release = threading.Event(), threading.Event()
    held = []

    def start(*args: Any, **kwargs: Any) -> Any:
        if not held:
            held.append(1)
            entered.set()
            assert release.wait(20)
        return original(*args, **kwargs)

    monkeypatch.setattr(cekura, "start", start)
    return entered, release


# -- tracing shut down while a worker thread is mid-message (a break, fixed) -------------------------------------


def _shut_down_mid_message(
    rt: Runtime, client: Client, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[dramatiq.Worker, threading.Event, tuple[str, str]]:
    """A one-thread worker whose message for job `job_id` is inside its start call (its scope set) when this
    process's tracing is shut down; then the job is let go and ends. The worker, the job's release, and its ids."""
    entered, release = _hold_start(rt, monkeypatch)
    w = _worker(rt)
    try:
        job = client.submit(KIND, PARAMS, job_id=job_id)
        assert entered.wait(20)
        tracing.shutdown()
        release.set()
        return w, release, _ids(client, job)
    except BaseException:
        release.set()
        w.stop(timeout=10_000)
        raise


def test_tracing_shut_down_mid_message_leaves_no_ids_on_the_thread_s_later_lines(
    traced_rt: Runtime, traced_client: Client, lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job A's start step is in its Cekura call (scope set) when this process's tracing is shut down
    (`tracing.shutdown()`, also the first thing `tracing.setup()` / `runtime.app.setup()` does), so A's message ends
    with `tracing.enabled` False. The same thread then runs job B (tracing off, no trace context): none of B's lines
    may carry A's ids (they all did while `JobContext` cleared the scope only with tracing on)."""
    w, release, (a_trace, a_span) = _shut_down_mid_message(traced_rt, traced_client, "shut-a", monkeypatch)
    try:
        b = traced_client.submit(KIND, PARAMS, job_id="shut-b")  # tracing off now: no trace context at all
        event_b = wait_job(traced_client, b)
        assert "traceparent" not in event_b
    finally:
        release.set()
        w.stop(timeout=10_000)
    about_b = [line for line in lines.lines if line.get("job_id") == b and line["_thread"] != "MainThread"]
    assert about_b, "no line of B's messages"
    leaked = [line for line in about_b if "trace_id" in line or "span_id" in line]
    assert leaked == [], f"{len(leaked)} of B's {len(about_b)} lines carry ids (A's: {a_trace}/{a_span}): {leaked[:3]}"


def test_tracing_set_up_again_after_a_shutdown_mid_message_leaves_no_stale_ids_before_a_step(
    traced_rt: Runtime, traced_settings: Any, traced_client: Client, lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, then tracing is set up again (on). The thread's next message is about a job id whose key holds
    something else (`job_record_unreadable`, no step, no `enter`): its error line must not name job A's trace."""
    w, release, (a_trace, _) = _shut_down_mid_message(traced_rt, traced_client, "again-a", monkeypatch)
    try:
        tracing.setup(traced_settings)
        assert tracing.enabled
        traced_rt.redis.set(traced_rt.store.job_key("again-x"), "not a job")
        from actors import jobs

        jobs.start.send("again-x")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            line_.get("event") == "job_record_unreadable" for line_ in lines.lines
        ):
            time.sleep(0.05)
    finally:
        release.set()
        w.stop(timeout=10_000)
    [line] = [line for line in lines.lines if line.get("event") == "job_record_unreadable"]
    assert line.get("trace_id") is None, f"a line about 'again-x' carries job A's trace ({a_trace}): {line}"


# -- what held: a failing/retried step, Dramatiq's own lines, the next (untraced-at-submit) job ------------------


def test_dramatiqs_failure_and_retry_lines_carry_the_ids_and_the_next_job_never_does(
    traced_rt: Runtime, traced_client: Client, lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    cekura = traced_rt.cekura
    original = cekura.start
    failed: list[int] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(1)
            raise redis.ConnectionError("injected")  # `_run` re-raises: Dramatiq logs it and Retries retries
        return original(*args, **kwargs)

    monkeypatch.setattr(cekura, "start", start)
    w = _worker(traced_rt)
    try:
        a = traced_client.submit(KIND, PARAMS, job_id="raise-a")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("Retrying" in str(line_.get("event")) for line_ in lines.lines):
            time.sleep(0.05)
        tp = traced_rt.redis.hget(traced_rt.store.job_key(a), "traceparent").decode()
        a_ctx = parse_traceparent(tp)
        a_ids = (a_ctx.trace_id, a_ctx.span_id)
        b = traced_client.submit(KIND, PARAMS, job_id="raise-b")
        b_ids = _ids(traced_client, b)
    finally:
        w.stop(timeout=10_000)
    mine = [line_ for line_ in lines.lines if line_["_thread"] != "MainThread"]
    dramatiq_a = [
        line_ for line_ in mine if line_.get("logger", "").startswith("dramatiq") and line_.get("job_id") == a
    ]
    assert any("Failed to process" in line_["event"] for line_ in dramatiq_a), dramatiq_a
    assert any("Retrying" in line_["event"] for line_ in dramatiq_a), dramatiq_a
    for line in mine:
        if line.get("job_id") == a:
            assert (line.get("trace_id"), line.get("span_id")) == a_ids, line
        elif line.get("job_id") == b:
            assert (line.get("trace_id"), line.get("span_id")) == b_ids, line
        else:
            assert "trace_id" not in line, line


@pytest.fixture
def unsampled(receiver: Any, sim: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Runtime, Client, Lines]]:
    """A traced runtime whose sampler records nothing (`always_off`), its client, and its log lines."""
    from tests.conftest import make_settings

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    settings = make_settings(sim.url, otel_exporter_otlp_endpoint=receiver.url)
    gen = traced_runtime(settings)
    rt = next(gen)
    handler = Lines()
    logging.getLogger().addHandler(handler)
    try:
        yield rt, Client(settings, client=rt.redis, broker=rt.broker), handler
    finally:
        logging.getLogger().removeHandler(handler)
        next(gen, None)


def test_an_unsampled_jobs_step_lines_still_carry_the_ids(unsampled: tuple[Runtime, Client, Lines]) -> None:
    rt, client, handler = unsampled
    w = _worker(rt)
    try:
        a = client.submit(KIND, PARAMS, job_id="off-a")
        ids = _ids(client, a)
    finally:
        w.stop(timeout=10_000)
    about = [line_ for line_ in handler.lines if line_.get("job_id") == a and line_["_thread"] != "MainThread"]
    assert {"job_started", "job_finished"} <= {line_["event"] for line_ in about}
    for line in about:
        assert (line.get("trace_id"), line.get("span_id")) == ids, line


# -- an older gap, fixed: a traced job that times out before its step, unsampled --------------------------------


def test_an_unsampled_job_that_times_out_before_its_step_logs_its_ids(unsampled: tuple[Runtime, Client, Lines]) -> None:
    """Its start message arrives past the deadline: `_proceed` -> `time_out` -> `publish` -> `tracing.ended`,
    and no `enter` ran: `spans.ended` makes the ids current for its `job_finished` line, sampled or not (it
    returned before doing so for an unsampled job)."""
    rt, client, handler = unsampled
    a = client.submit(KIND, PARAMS, job_id="late-a", deadline_s=1.0)
    time.sleep(1.5)  # past the job's deadline before any worker takes its start message
    w = _worker(rt)
    try:
        event = wait_job(client, a)
    finally:
        w.stop(timeout=10_000)
    assert event["status"] == "timed_out" and event.get("traceparent"), event
    [finished] = [line_ for line_ in handler.lines if line_.get("event") == "job_finished" and line_.get("job_id") == a]
    carried = parse_traceparent(event["traceparent"])
    assert finished.get("trace_id") == carried.trace_id, finished
