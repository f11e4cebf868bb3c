"""Tracing fixtures: a real OTLP/HTTP receiver process (`tests/tracing/receiver.py`), what it decoded, and the test
runtime with tracing on and pointed at it.

The receiver is a process of its own, as a collector would be: the worker's OTLP exporter sends it protobuf over
HTTP, and the tests read back what it decoded. A producer's spans come from a provider of the test's own (the
"producer application"), exporting to the same receiver.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from config.settings import Settings
from simulator import SimulatorHandle
from tests.conftest import make_settings
from tests.support import kill_group, wait_for, wait_for_line, without_service_env
from tests.system.fake_cekura import FakeCekura
from worker import tracing
from worker.client import Client
from worker.runtime.app import Runtime, bind_actors, setup

ROOT = Path(__file__).resolve().parents[2]

_LISTENING = re.compile(r"listening on (\d+)")


@dataclass
class Receiver:
    """The receiver process and an HTTP client for what it decoded."""

    popen: subprocess.Popen[bytes]
    url: str
    http: httpx.Client

    def spans(self) -> list[dict[str, Any]]:
        response = self.http.get("/spans")
        response.raise_for_status()
        spans: list[dict[str, Any]] = response.json()
        return spans

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [span for span in self.spans() if span["trace_id"] == trace_id]

    def clear(self) -> None:
        self.http.delete("/spans").raise_for_status()

    def stats(self) -> dict[str, float]:
        stats: dict[str, float] = self.http.get("/stats").json()
        return stats

    def wait_for_span(self, trace_id: str, name: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The trace's spans, once one named `name` arrived."""
        return wait_for(
            lambda: (spans := self.trace(trace_id)) and any(s["name"] == name for s in spans) and spans,
            timeout,
            f"span {name!r} of trace {trace_id}",
            interval=0.1,
        )


def start_receiver(log_path: Path, *, count_only: bool = False) -> Receiver:
    """`python -m tests.tracing.receiver` on a free port, once it serves."""
    argv = [sys.executable, "-m", "tests.tracing.receiver", "--port", "0", *(["--count-only"] if count_only else [])]
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT
        )
    match = wait_for_line(popen, log_path, _LISTENING, 30.0)
    if match is None:
        kill_group(popen)
        raise RuntimeError(f"the OTLP receiver did not start:\n{log_path.read_text(errors='replace')}")
    url = f"http://127.0.0.1:{match.group(1)}"
    return Receiver(popen, url, httpx.Client(base_url=url, timeout=10, trust_env=False))


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    handle = start_receiver(tmp_path_factory.mktemp("otlp") / "receiver.log")
    try:
        yield handle
    finally:
        handle.http.close()
        kill_group(handle.popen, grace_s=1.0)


@pytest.fixture
def traced_settings(sim: SimulatorHandle, receiver: Receiver, settings: Settings) -> Settings:
    """The test settings with traces on, exported to the receiver (an endpoint turns them on)."""
    receiver.clear()
    return make_settings(sim.url, otel_exporter_otlp_endpoint=receiver.url, otel_service_name="cekura-worker-test")


def traced_runtime(settings: Settings) -> Iterator[Runtime]:
    """This process's runtime set up from `settings` (which turn tracing on), and tracing stopped after."""
    runtime = setup(settings)
    bind_actors()
    assert tracing.enabled
    yield runtime
    tracing.shutdown()


@pytest.fixture
def traced_rt(traced_settings: Settings) -> Iterator[Runtime]:
    yield from traced_runtime(traced_settings)


@pytest.fixture
def traced_worker(traced_rt: Runtime) -> Iterator[dramatiq.Worker]:
    w = dramatiq.Worker(traced_rt.broker, worker_threads=4, worker_timeout=100)
    w.start()
    yield w
    w.stop(timeout=10_000)


@pytest.fixture
def traced_client(traced_settings: Settings, traced_rt: Runtime) -> Client:
    return Client(traced_settings, client=traced_rt.redis, broker=traced_rt.broker)


@dataclass
class Producer:
    """A producer application's own tracing: its provider exports to the receiver at once."""

    provider: TracerProvider

    def tracer(self) -> Any:
        return self.provider.get_tracer("producer-app")


@pytest.fixture
def producer(receiver: Receiver) -> Iterator[Producer]:
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "producer-app"}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces")))
    try:
        yield Producer(provider)
    finally:
        provider.shutdown()


def flush() -> None:
    """Export what this process's worker tracing holds, now."""
    tracing.active().provider.force_flush()


def clean_env() -> dict[str, str]:
    """This environment without any setting of the service or of OpenTelemetry."""
    return {k: v for k, v in without_service_env("TEST_REDIS_URL").items() if not k.startswith("OTEL_")}


def run_clean(program: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -c program` in `cwd`, in `clean_env()` with this checkout importable; its output captured."""
    return subprocess.run(
        [sys.executable, "-c", program], cwd=cwd, env={**clean_env(), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def wait_job(client: Client, job_id: str, timeout: float = 30.0) -> dict[str, str]:
    """The job's result event, from the results stream (not the record: the event is what consumers read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.results():
            if event.get("job_id") == job_id:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no result event for {job_id} within {timeout:g}s")


#: A scripted HTTP answer of a fake Cekura: status, content type, body.
Reply = tuple[int, str, bytes]


def json_reply(status: int, value: Any) -> Reply:
    return status, "application/json", json.dumps(value).encode()


def find_leaks(spans: list[dict[str, Any]], spellings: dict[str, str]) -> list[tuple[str, str, str]]:
    """(spelling's name, span name, where) for each spelling of a secret found in a span: its name, status, trace
    state, attribute and link attribute values as they are, and its attributes, events, links and resource as JSON."""
    found = []
    for span in spans:
        texts = [
            ("name", span["name"]),
            ("status_message", span["status_message"]),
            ("trace_state", span["trace_state"]),
        ]
        texts += [(where, json.dumps(span.get(where, []))) for where in ("attributes", "events", "links", "resource")]
        texts += [(key, str(value)) for key, value in span["attributes"].items()]
        texts += [(f"link {key}", str(value)) for link in span["links"] for key, value in link["attributes"].items()]
        for where, value in texts:
            for name, spelling in spellings.items():
                if spelling.lower() in value.lower():
                    found.append((name, span["name"][:80], where))
    return found


# -- a scripted Cekura and a traced worker against it (the attacks on what spans carry) --------------------------

#: The secrets the attacks look for in every span: the Cekura API key, a job's provider key, an OTLP credential.
API_KEY = "cekura-api-key-7Qz9"
PROVIDER_KEY = "provider-key-4e1f-Xb"
OTLP_TEAM = "otlp-team-5e8a-Lm"


@dataclass
class Route:
    """Answers to the requests whose path matches `pattern` (the last answer repeats)."""

    pattern: str
    replies: list[Reply]
    seen: int = 0


@dataclass
class Cekura:
    """A `FakeCekura` answering each path by the first route whose pattern matches it (404 when none does)."""

    fake: FakeCekura = field(default_factory=FakeCekura)
    routes: list[Route] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.fake.script = self._answer

    @property
    def url(self) -> str:
        return self.fake.url

    def on(self, pattern: str, *replies: Reply) -> None:
        self.routes.append(Route(pattern, list(replies)))

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        with self.lock:
            for route in self.routes:
                if re.search(route.pattern, urlsplit(path).path):
                    status, content_type, out = route.replies[min(route.seen, len(route.replies) - 1)]
                    route.seen += 1
                    return status, [("Content-Type", content_type)], out
        return 404, [("Content-Type", "application/json")], b'{"detail": "Not found."}'


class _Records(logging.Handler):
    """Warnings and errors of the OpenTelemetry SDK and exporter (an attribute it can't encode, a failed export)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Service:
    client: Client
    receiver: Receiver
    otel_logs: _Records


@pytest.fixture
def cekura() -> Iterator[Cekura]:
    server = Cekura()
    yield server
    server.fake.stop()


@pytest.fixture
def start(cekura: Cekura, receiver: Receiver, redis_client: Any) -> Iterator[Callable[..., Service]]:
    """Start the traced worker against `cekura` and the receiver; keyword arguments override settings."""
    stops: list[Callable[[], None]] = []
    records = _Records()
    otel = logging.getLogger("opentelemetry")
    otel.addHandler(records)

    def run(**overrides: Any) -> Service:
        receiver.clear()
        settings = make_settings(
            cekura.url,
            cekura_api_key=API_KEY,
            otel_exporter_otlp_endpoint=receiver.url,
            otel_service_name="attack-record-bounds",
            **({"otel_exporter_otlp_headers": f"x-honeycomb-team={OTLP_TEAM}"} | overrides),
        )
        runtime = traced_runtime(settings)
        rt = next(runtime)
        worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
        worker.start()

        def stop() -> None:
            worker.stop(timeout=10_000)
            next(runtime, None)

        stops.append(stop)
        return Service(Client(settings, client=rt.redis, broker=rt.broker), receiver, records)

    yield run
    for stop in stops:
        stop()
    otel.removeHandler(records)
