"""`worker.tracing.provider.Tracing`: a span `record`ed whole is exported exactly as the SDK's tracer would have
exported the same span started and ended live, and the sampler still decides which jobs are recorded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from config.settings import load_settings
from worker.tracing.provider import SCOPE, Tracing, _Resource

PRODUCER = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
    trace_flags=TraceFlags(0x03), trace_state=TraceState([("vendor", "opaque")]),
)  # fmt: skip
RETRIED = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(0x01))


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    made = Tracing(load_settings(otel_exporter_otlp_endpoint="http://127.0.0.1:9"))  # nothing reaches it
    memory = InMemorySpanExporter()
    made.processor.shutdown()
    made.processor = SimpleSpanProcessor(memory)  # type: ignore[assignment]
    made.memory = memory  # type: ignore[attr-defined]
    yield made
    made.provider.shutdown()


def _live(tracing: Tracing, spec: dict[str, Any]) -> ReadableSpan:
    """The span as the SDK's tracer makes it: started, its status set, ended."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=tracing.resource, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer(SCOPE, tracing.scope.version)
    parent = trace_api.set_span_in_context(NonRecordingSpan(spec["parent"])) if spec["parent"] else None
    span = tracer.start_span(
        spec["name"], context=parent, kind=spec["kind"], attributes=spec["attributes"], links=spec["links"],
        start_time=spec["start_ns"],
    )  # fmt: skip
    if spec["status"] is not None:
        span.set_status(spec["status"])
    span.end(end_time=spec["end_ns"])
    (made,) = memory.get_finished_spans()
    return made


SPECS = {
    "a call": {
        "name": "GET /test_framework/v1/results/{id}/",
        "parent": PRODUCER,
        "kind": SpanKind.CLIENT,
        "attributes": {"http.request.method": "GET", "server.port": 8000, "cekura.status": "running"},
        "links": (),
        "status": Status(StatusCode.ERROR, "503 from Cekura"),
        "start_ns": 1_765_000_000_000_000_000,
        "end_ns": 1_765_000_000_250_000_000,
    },
    "a job that began its trace, retrying another": {
        "name": "job evaluator.run",
        "parent": None,
        "kind": SpanKind.CONSUMER,
        "attributes": {"cekura.job.id": "j-1", "cekura.poll.count": 12},
        "links": [Link(RETRIED, {"cekura.link": "retry_of"})],
        "status": Status(StatusCode.OK),
        "start_ns": 1_765_000_000_000_000_000,
        "end_ns": 1_765_000_090_000_000_000,
    },
    "a summary": {
        "name": "polls",
        "parent": PRODUCER,
        "kind": SpanKind.INTERNAL,
        "attributes": {"cekura.poll.first": 3, "cekura.poll.last": 9},
        "links": (),
        "status": None,
        "start_ns": 1_765_000_000_000_000_000,
        "end_ns": 1_765_000_000_000_000_000,
    },
}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_a_recorded_span_is_exported_as_the_sdk_s_tracer_would_export_it(
    tracing: Tracing, spec: dict[str, Any]
) -> None:
    live = _live(tracing, spec)
    tracing.record(
        spec["name"], live.context, spec["parent"], kind=spec["kind"], attributes=spec["attributes"],
        start_ns=spec["start_ns"], end_ns=spec["end_ns"], links=spec["links"],
        **({"status": spec["status"]} if spec["status"] is not None else {}),
    )  # fmt: skip
    (recorded,) = tracing.memory.get_finished_spans()  # type: ignore[attr-defined]
    assert encode_spans([recorded]) == encode_spans([live])
    assert encode_spans([recorded]).SerializeToString() == encode_spans([live]).SerializeToString()


def test_a_child_continues_its_parent_s_trace_flags_and_state(tracing: Tracing) -> None:
    children = [tracing.child(PRODUCER) for _ in range(100)]
    assert {(c.trace_id, c.trace_flags, c.trace_state.to_header(), c.is_remote) for c in children} == {
        (PRODUCER.trace_id, PRODUCER.trace_flags, "vendor=opaque", False)
    }
    assert len({c.span_id for c in children}) == 100 and all(c.is_valid for c in children)


def test_the_sampler_decides_which_jobs_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    unsampled = SpanContext(PRODUCER.trace_id, PRODUCER.span_id, True, TraceFlags(0x02))
    default = Tracing(load_settings(otel_exporter_otlp_endpoint="http://127.0.0.1:9"))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    off = Tracing(load_settings(otel_exporter_otlp_endpoint="http://127.0.0.1:9"))
    try:
        assert default.samples(PRODUCER, "job agent.auto_fetch")  # parent-based: the job's flag
        assert not default.samples(unsampled, "job agent.auto_fetch")
        assert not off.samples(PRODUCER, "job agent.auto_fetch")
    finally:
        default.provider.shutdown()
        off.provider.shutdown()


def test_the_resource_hashed_once_is_the_same_resource() -> None:
    created = Resource.create({"service.name": "cekura-worker", "service.version": "1.2"})
    cached = _Resource(created)
    assert cached == created and created == cached and hash(cached) == hash(created)
    assert {created: 1}[cached] == 1 and dict(cached.attributes) == dict(created.attributes)
    assert cached != Resource.create({"service.name": "other"})
