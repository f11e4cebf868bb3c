"""The OpenTelemetry SDK as this process runs it: a tracer provider with the service's resource and sampler, the
OTLP/HTTP exporter behind a batch processor, and `record`, which hands the processor a span known whole.

The SDK does what it does well: sampling (`OTEL_TRACES_SAMPLER`, parent-based by default), resource attributes,
batching off the calling thread (`OTEL_BSP_*`), OTLP encoding and export with retries. This module chooses where
spans go (`Settings`: endpoint, headers, service name) and how a span is made. Every span of a job is known whole
when it is made: its start and end have passed (a call's), or come from the Redis clock (the job's), and the job
span's id was fixed at submission, long before. So a span is not started and ended through a `Tracer` (a live span,
its attributes checked one by one under a lock, then copied into a `ReadableSpan` for the processors at `end()`):
`record` makes the `ReadableSpan` that `end()` would have made and gives it to the batch processor, as `end()`
does. That is 5 us a span instead of 35 (`tests/tracing/test_provider.py` holds the two to the same OTLP output).
The sampler is still asked, once per job (`samples`), with the job span as the parent, as a child would be.

The provider is this process's own, not the global one: the worker never installs itself as the application's
tracer provider, so a test (or an embedding application) can set tracing up, down and up again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
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
        exporter = OTLPSpanExporter(
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

    def samples(self, job: SpanContext, name: str) -> bool:
        """Whether a job's spans are recorded: its context says sampled, and so does the sampler, asked as it would
        be for a child of the job span (a parent-based sampler, the default, follows the job's flag)."""
        if not job.trace_flags.sampled:
            return False
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
