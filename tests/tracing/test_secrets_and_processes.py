"""What a trace must never hold, and what it must hold across processes: no secret in any span or attribute; a
worker killed mid-job still leaves exactly one job span, made by the worker that finished the job, with every log
line about the job naming the trace; and with tracing off, a worker process loads nothing of tracing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from config.settings import Settings
from tests.support import service_env, wait_for
from tests.system.conftest import System
from tests.tracing.conftest import Producer, Receiver, flush, run_clean, wait_job
from tests.tracing.receiver import tree
from worker.client import Client
from worker.tracing import parse_traceparent

PROVIDER_KEY = "provider-key-[echo]-4e1f"
HEADER_SECRET = "Bearer hdr-[echo]-9c2d"


def test_no_span_or_attribute_carries_a_secret(
    receiver: Receiver, producer: Producer, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    params = {
        "agent_id": 42,
        "provider": "vapi",
        "assistant_id": "asst-1",
        "api_key": PROVIDER_KEY,  # the simulator quotes `[echo]` secrets back in its final answer and error
        "mcp_server_headers": {"Authorization": HEADER_SECRET},
    }
    failing = {**params, "agent_id": 950}  # ends `failed`: the error, echoing the secrets, is a span's status
    with producer.tracer().start_as_current_span("submit"):
        job_ids = [traced_client.submit("agent.tools_auto_fetch", p) for p in (params, failing)]
    events = [wait_job(traced_client, job_id) for job_id in job_ids]
    assert [e["status"] for e in events] == ["completed", "failed"], events
    flush()
    trace_id = parse_traceparent(events[0]["traceparent"]).trace_id  # type: ignore[union-attr]
    spans = receiver.wait_for_span(trace_id, "send cekura:results")
    wait_for(lambda: len([s for s in receiver.trace(trace_id) if s["name"] == "send cekura:results"]) == 2, 10)
    spans = receiver.trace(trace_id)
    assert len([s for s in spans if s["name"].startswith("job ")]) == 2
    text = json.dumps(spans)
    secrets = [traced_client.settings.cekura_api_key.get_secret_value(), PROVIDER_KEY, HEADER_SECRET, "hdr-[echo]"]  # type: ignore[union-attr]
    for secret in secrets:
        assert secret not in text
    assert "***" in text  # the echoed secrets were there, masked


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    system = System(tmp_path)
    try:
        yield system
    finally:
        system.close()


def _job_lines(log_path: Path, job_id: str) -> list[dict[str, Any]]:
    """The log lines written while a worker handled one of the job's messages (the middleware binds `message_id`)."""
    lines = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            value = json.loads(line)
            if value.get("job_id") == job_id and "message_id" in value:
                lines.append(value)
    return lines


@pytest.mark.slow
def test_a_worker_killed_mid_job_still_leaves_one_job_span_made_by_the_worker_that_finished_it(
    system: System, receiver: Receiver, producer: Producer
) -> None:
    server = system.redis()
    sim = system.simulator("--duration", "15")  # long enough that the first worker can't finish it before the kill
    env = system.worker_env(
        server, sim, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="100", OTEL_SERVICE_NAME="killed"
    )
    first = system.worker(env, processes=1, threads=2)
    client = system.client(server)
    with producer.tracer().start_as_current_span("submit") as span:
        job_id = client.submit("agent.auto_fetch", {"agent_id": 42}, job_id="killed-mid-job")
        trace_id = f"{span.get_span_context().trace_id:032x}"
    wait_for(lambda: int((client.status(job_id) or {}).get("polls", 0)) >= 3, 30, "the job to have polled a few times")
    # the first polls' spans (only the first DEFAULT_TRACED_POLLS polls get one until the poll that ends the job)
    wait_for(lambda: len([s for s in receiver.trace(trace_id) if s["name"].startswith("GET ")]) >= 2, 30)
    assert (client.status(job_id) or {}).get("state") != "finished", "the job ended before the kill: nothing tested"
    os.killpg(first.pid, signal.SIGKILL)  # no flush, no finish: the job is mid-poll
    first.popen.wait(timeout=10)
    second = system.worker({**env, "OTEL_SERVICE_NAME": "finisher"}, processes=1, threads=2)
    event = client.wait(job_id, timeout=60)
    assert event["status"] == "completed"
    second.stop()  # SIGTERM: the worker exports what it holds as it exits

    carried = parse_traceparent(event["traceparent"])
    assert carried is not None and carried.trace_id == trace_id
    spans = receiver.wait_for_span(trace_id, "send cekura:results")
    jobs = [s for s in spans if s["name"] == "job agent.auto_fetch"]
    assert len(jobs) == 1, tree(spans, trace_id)
    job = jobs[0]
    assert job["span_id"] == carried.span_id and job["resource"]["service.name"] == "finisher"
    assert job["parent_span_id"] == next(s["span_id"] for s in spans if s["name"] == "submit")
    calls = [s for s in spans if s["kind"] == "CLIENT"]
    assert {s["resource"]["service.name"] for s in calls} == {"killed", "finisher"}  # both workers' calls
    assert all(s["parent_span_id"] == job["span_id"] for s in calls)
    print(tree(spans, trace_id, ("cekura.poll.number", "cekura.status")))
    for run in (first, second):  # every log line about the job, in either worker, names the job span
        lines = _job_lines(run.log_path, job_id)
        assert lines
        assert all(line.get("trace_id") == trace_id and line.get("span_id") == carried.span_id for line in lines), [
            line for line in lines if line.get("trace_id") != trace_id
        ][:3]


def test_with_tracing_off_a_worker_process_imports_nothing_of_tracing(tmp_path: Path) -> None:
    """Neither the SDK's tracing, nor the exporter, nor the span code (redis-py 8 imports the SDK's metrics module,
    and with it the API's trace module, by itself once the SDK is installed, for metrics of its own that stay off
    unless an application turns them on)."""
    program = (
        "import sys\n"
        "from config.settings import load_settings\n"
        "from worker.runtime.app import setup, bind_actors, runtime\n"
        "rt = setup(load_settings(redis_url='redis://127.0.0.1:9/0', cekura_api_key='test-key'))\n"
        "bind_actors()\n"
        "from worker import tracing\n"
        "assert not tracing.enabled\n"
        "LIGHT = ('context', 'state')  # the W3C parsing the intake uses, and the switch\n"
        "assert type(rt.cekura).__name__ == 'CekuraClient', type(rt.cekura)\n"
        "parts = ('opentelemetry.sdk.trace', 'opentelemetry.exporter', 'opentelemetry.propagate', 'worker.tracing.')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(parts) and m.rpartition('.')[2] not in LIGHT)\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    done = run_clean(program, tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_worker_logs_a_slow_collector_but_never_waits_on_it(receiver: Receiver) -> None:
    """A span export runs on the SDK's batch thread: a collector that is down costs the job nothing."""
    from config.settings import load_settings
    from worker import tracing

    started = time.monotonic()
    tracing.setup(load_settings(otel_exporter_otlp_endpoint="http://127.0.0.1:9"))
    try:
        assert tracing.enabled
        active = tracing.active()
        now = time.time_ns()
        context = active.child(SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(1)))
        active.record("lost", context, None, kind=SpanKind.INTERNAL, attributes={}, start_ns=now, end_ns=now)
    finally:
        tracing.shutdown()  # bounded: it gives up on the unreachable collector
    assert time.monotonic() - started < 5
    assert not tracing.enabled


def test_a_job_cancelled_by_the_cli_gets_its_job_span_from_the_cli(
    traced_settings: Settings, receiver: Receiver, producer: Producer, redis_client: Any
) -> None:
    client = Client(traced_settings, client=redis_client)  # no worker: the job waits for its start
    with producer.tracer().start_as_current_span("submit") as span:
        job_id = client.submit("agent.auto_fetch", {"agent_id": 42}, job_id="cancelled-by-the-cli")
        trace_id = f"{span.get_span_context().trace_id:032x}"
    env = service_env(traced_settings, OTEL_SERVICE_NAME="cli")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cekura-worker")), "cancel", job_id],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert client.status(job_id)["state"] == "finished"
    spans = receiver.wait_for_span(trace_id, "job agent.auto_fetch")
    job = next(s for s in spans if s["name"] == "job agent.auto_fetch")
    assert job["resource"]["service.name"] == "cli"
    assert job["attributes"]["cekura.job.status"] == "cancelled" and job["attributes"]["cekura.job.id"] == job_id
    assert job["parent_span_id"] == next(s["span_id"] for s in spans if s["name"] == "submit")
