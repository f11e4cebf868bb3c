"""The OpenTelemetry SDK as this process runs it: a tracer provider with the service's resource, the OTLP/HTTP
exporter behind a batch processor, and an id generator that can hand out a span id fixed earlier.

The SDK does what it does well: sampling (`OTEL_TRACES_SAMPLER`, parent-based by default), resource attributes,
batching off the calling thread (`OTEL_BSP_*`), OTLP encoding and export with retries. This module only chooses
where spans go (`Settings`: endpoint, headers, service name) and adds `PresetIds`: a job span's id is chosen when
the job is submitted (its children are made meanwhile, by other processes), so the span recorded at its end must
carry that id. `IdGenerator` is the SDK's documented seam for ids; `PresetIds` returns random ids, as the SDK's
own generator does, except for the one span started inside `preset()` on this thread.

The provider is this process's own, not the global one: the worker never installs itself as the application's
tracer provider, so a test (or an embedding application) can set tracing up, down and up again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.util.re import parse_env_headers

from config.settings import Settings
from worker.tracing.context import RANDOM_TRACE_ID, SAMPLED, TraceContext, new_span_id, new_trace_id

#: The instrumentation scope every span of the service is made under.
SCOPE = "cekura-worker"

#: The path OTLP/HTTP appends to a base endpoint (OTEL_EXPORTER_OTLP_ENDPOINT), as the SDK does.
TRACES_PATH = "v1/traces"

#: How often the batch processor exports, where `OTEL_BSP_SCHEDULE_DELAY` doesn't say (the SDK's own is 5 s). An
#: export encodes its batch in one go, on its own thread but under the GIL, and the step threads, which mostly wait
#: on I/O and then need the GIL for a moment, queue behind it: at saturation a 5 s period fills 512-span batches
#: that hold the GIL about 25 ms each, and cost the step threads more than the encoding itself. Every 100 ms the
#: batches stay near 70 spans (`python -m bench --mode tracing` measured the periods and sizes tried; the README
#: has the figures). `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` stays the SDK's (512), for bursts.
DEFAULT_EXPORT_DELAY_MS = 100

#: How long a shutdown waits for what is buffered to be exported, in seconds: a worker's stop must stay within its
#: budget (CEKURA_SHUTDOWN_TIMEOUT_S + 3 s) even when the collector doesn't answer; spans still unsent then are lost.
DEFAULT_FLUSH_TIMEOUT_S = 2.0


class PresetIds(IdGenerator):
    """Random ids, as `RandomIdGenerator` makes them, except inside `preset()`: the next span started on this
    thread takes the ids given there (a root span its trace id too)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._local = threading.local()

    @contextmanager
    def preset(self, trace_id: int, span_id: int) -> Iterator[None]:
        self._local.trace_id, self._local.span_id = trace_id, span_id
        try:
            yield
        finally:
            self._local.trace_id = self._local.span_id = 0

    def generate_span_id(self) -> int:
        preset: int = getattr(self._local, "span_id", 0)
        if preset:
            self._local.span_id = 0
            return preset
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        preset: int = getattr(self._local, "trace_id", 0)
        if preset:
            self._local.trace_id = 0
            return preset
        return self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return True  # new trace ids are random, whether made here or by `context.new_trace_id`


def endpoint(settings: Settings) -> str | None:
    """Where spans go: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else OTEL_EXPORTER_OTLP_ENDPOINT plus
    `/v1/traces`; None leaves the exporter's default (http://localhost:4318/v1/traces)."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/" + TRACES_PATH
    return None


class Tracing:
    """One process's tracing: the provider, its tracer, the preset ids, and what every span of the service shares."""

    def __init__(self, settings: Settings) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            service_version = version("cekura-worker")
        except PackageNotFoundError:  # a checkout that was never installed
            service_version = "0"
        headers = settings.otel_exporter_otlp_traces_headers or settings.otel_exporter_otlp_headers
        exporter = OTLPSpanExporter(
            endpoint=endpoint(settings),
            headers=parse_env_headers(headers.get_secret_value(), liberal=True) if headers else None,
        )
        self.ids = PresetIds()
        resource = Resource.create({SERVICE_NAME: settings.otel_service_name, SERVICE_VERSION: service_version})
        self.provider = TracerProvider(resource=resource, id_generator=self.ids, shutdown_on_exit=False)
        # OTEL_BSP_SCHEDULE_DELAY wins, as the SDK reads it (None leaves the period to the SDK).
        delay = None if "OTEL_BSP_SCHEDULE_DELAY" in os.environ else DEFAULT_EXPORT_DELAY_MS
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay))
        tracer = self.provider.get_tracer(SCOPE, service_version)
        assert isinstance(tracer, Tracer)
        self.tracer = tracer
        self.settings = settings

    def new_root(self, kind_name: str) -> TraceContext:
        """A new trace for a job submitted without trace context, sampled as the SDK's sampler decides for a root
        span (the same decision the job span's own start will reach: a root's depends on its trace id alone)."""
        trace_id = new_trace_id()
        decision = self.provider.sampler.should_sample(
            None, int(trace_id, 16), f"job {kind_name}", trace_api.SpanKind.CONSUMER
        ).decision
        flags = RANDOM_TRACE_ID | (SAMPLED if decision is Decision.RECORD_AND_SAMPLE else 0)
        return TraceContext(trace_id, new_span_id(), f"{flags:02x}")

    def shutdown(self) -> None:
        """Export what the batch holds and stop, waiting at most `DEFAULT_FLUSH_TIMEOUT_S` (the SDK's own flush
        waits for its exporter's timeout and retries, 10 s and more against a collector that is down)."""
        stopping = threading.Thread(target=self.provider.shutdown, name="cekura-trace-flush", daemon=True)
        stopping.start()
        stopping.join(DEFAULT_FLUSH_TIMEOUT_S)
