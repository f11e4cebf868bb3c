"""The OpenTelemetry SDK as this process runs it: a tracer provider with the service's resource and sampler, the
OTLP/HTTP exporter behind a batch processor, and `record`, which hands the processor a span known whole.

The SDK does what it does well: sampling (`OTEL_TRACES_SAMPLER`, parent-based by default), resource attributes,
batching off the calling thread (`OTEL_BSP_*`), export with retries. The one part it does slowly for this
service's spans, turning a batch into OTLP protobuf, is `otlp.encode` (the SDK's bytes, a quarter of its CPU;
`SpanExporter`). This module chooses where spans go (`Settings`: endpoint, headers, service name) and how a span is
made. Every span of a job is known whole
when it is made: its start and end have passed (a call's), or come from the Redis clock (the job's), and the job
span's id was fixed at submission, long before. So a span is not started and ended through a `Tracer` (a live span,
its attributes checked one by one under a lock, then copied into a `ReadableSpan` for the processors at `end()`):
`record` makes the `ReadableSpan` that `end()` would have made and gives it to the batch processor, as `end()`
does. That is 5 us a span instead of 35 (`tests/tracing/test_provider.py` holds the two to the same OTLP output).
The sampler is still asked, once per job (`samples`), with the job span as the parent, as a child would be (the
default one, parent-based, is known to follow the job's flag without being asked).

The provider is this process's own, not the global one: the worker never installs itself as the application's
tracer provider, so a test (or an embedding application) can set tracing up, down and up again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.re import parse_env_headers

from config.settings import Settings
from worker.tracing import otlp
from worker.tracing.context import RANDOM_TRACE_ID, SAMPLED, TraceContext, new_span_id, new_trace_id

_logger = logging.getLogger(__name__)

#: The instrumentation scope every span of the service is made under.
SCOPE = "cekura-worker"

#: The path OTLP/HTTP appends to a base endpoint (OTEL_EXPORTER_OTLP_ENDPOINT), as the SDK does.
TRACES_PATH = "v1/traces"

#: How often the batch processor exports, where `OTEL_BSP_SCHEDULE_DELAY` doesn't say (the SDK's own is 5 s). Each
#: export request costs the same whatever it carries (requests reads the proxy, CA and netrc settings of the
#: environment each time): at saturation, every 100 ms made the request half of the export thread's time; every
#: second it is a sixth, and a 512-span batch (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, the SDK's, sent as soon as it fills)
#: is encoded in about 4 ms (`otlp.encode`). A span reaches the collector at most a second after its job's step.
DEFAULT_EXPORT_DELAY_MS = 1_000

#: How long a shutdown waits for what is buffered to be exported, in seconds: a worker's stop must stay within its
#: budget (CEKURA_SHUTDOWN_TIMEOUT_S + 3 s) even when the collector doesn't answer; spans still unsent then are lost.
DEFAULT_FLUSH_TIMEOUT_S = 2.0


#: A span's status when nothing set one.
UNSET = Status(StatusCode.UNSET)


class _Resource(Resource):
    """The SDK's `Resource`, hashed once: the OTLP encoder groups every span of a batch by its resource, and
    `Resource.__hash__` JSON-dumps the attributes each time it is asked (about 8 us a span)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class SpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter (its endpoint, headers, compression, timeout, proxies, retries with backoff and
    `Retry-After`), with the batch encoded by `otlp.encode` (the same bytes, a quarter of the CPU).

    `export` is the SDK's, less its encoder, and less its self-observability metrics (an opt-in preview, never
    turned on here). It reaches two of the exporter's own attributes, `_client` (the HTTP client with the retries)
    and `_max_request_size`; the pinned SDK version keeps them, and every test that reads spans from the OTLP
    receiver (`tests/tracing/`) goes through this method.
    """

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            data = otlp.encode(spans)
        except Exception as exc:  # as the SDK: a batch that can't be encoded is dropped, with a log line
            _logger.error("Failed to encode span batch: %s", exc)
            return SpanExportResult.FAILURE
        if 0 < self._max_request_size < len(data):  # (0 turns the limit off)
            _logger.warning("Dropping span batch: %d bytes exceed max_request_size", len(data))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if self._client.export(data).success else SpanExportResult.FAILURE


def endpoint(settings: Settings) -> str | None:
    """Where spans go: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else OTEL_EXPORTER_OTLP_ENDPOINT plus
    `/v1/traces`; None leaves the exporter's default (http://localhost:4318/v1/traces)."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/" + TRACES_PATH
    return None


class Tracing:
    """One process's tracing: the provider (sampler, resource), the batch processor, and `record`, which feeds it."""

    def __init__(self, settings: Settings) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            service_version = version("cekura-worker")
        except PackageNotFoundError:  # a checkout that was never installed
            service_version = "0"
        headers = settings.otel_exporter_otlp_traces_headers or settings.otel_exporter_otlp_headers
        exporter = SpanExporter(
            endpoint=endpoint(settings),
            headers=parse_env_headers(headers.get_secret_value(), liberal=True) if headers else None,
        )
        created = Resource.create({SERVICE_NAME: settings.otel_service_name, SERVICE_VERSION: service_version})
        self.resource = _Resource(created)
        self.scope = InstrumentationScope(SCOPE, service_version)
        self.provider = TracerProvider(resource=self.resource, shutdown_on_exit=False)
        # OTEL_BSP_SCHEDULE_DELAY wins, as the SDK reads it (None leaves the period to the SDK).
        delay = None if "OTEL_BSP_SCHEDULE_DELAY" in os.environ else DEFAULT_EXPORT_DELAY_MS
        self.processor = BatchSpanProcessor(exporter, schedule_delay_millis=delay)
        self.provider.add_span_processor(self.processor)  # the provider's shutdown flushes and stops it
        self._ids = RandomIdGenerator()
        self.settings = settings
        # The default sampler (parent-based, always on) records a job whose context says sampled: no need to ask it.
        described = self.provider.sampler.get_description()
        self._follows_flag = described == DEFAULT_ON.get_description()  # type: ignore[no-untyped-call]

    def samples(self, job: SpanContext, name: str) -> bool:
        """Whether a job's spans are recorded: its context says sampled, and so does the sampler, asked as it would
        be for a child of the job span (a parent-based sampler, the default, follows the job's flag)."""
        if not job.trace_flags.sampled:
            return False
        if self._follows_flag:
            return True
        parent = trace_api.set_span_in_context(NonRecordingSpan(job))
        decision = self.provider.sampler.should_sample(parent, job.trace_id, name, SpanKind.CONSUMER).decision
        return decision is Decision.RECORD_AND_SAMPLE

    def child(self, parent: SpanContext) -> SpanContext:
        """A new span's context under `parent`: its trace, flags and trace state, a random span id."""
        span_id = self._ids.generate_span_id()
        return SpanContext(parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state)

    def record(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        *,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_ns: int,
        end_ns: int,
        status: Status = UNSET,
        links: Sequence[Link] = (),
    ) -> None:
        """Hand the batch processor a span that has ended (only sampled ones are ever made: see `samples`). Its
        attributes are the service's own, str and int, few and bounded, so they are not checked one by one."""
        span = ReadableSpan(
            name,
            context,
            parent,
            self.resource,
            attributes,
            links=links,
            kind=kind,
            status=status,
            start_time=start_ns,
            end_time=max(start_ns, end_ns),  # two reads of a wall clock that stepped back: never a negative duration
            instrumentation_scope=self.scope,
        )
        self.processor.on_end(span)

    def new_root(self, kind_name: str) -> TraceContext:
        """A new trace for a job submitted without trace context, sampled as the SDK's sampler decides for a root
        span (the flag every step's `samples` then follows)."""
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
