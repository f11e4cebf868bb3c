"""`worker.tracing.otlp.encode` writes exactly the bytes the SDK's OTLP encoder writes: for every shape of span the
service records, for values of every type OTLP has, for hostile ones, and for batches that mix resources and
scopes; a span it can't write sends its batch through the SDK's encoder, with the SDK's result."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from config.settings import load_settings
from worker.tracing import otlp
from worker.tracing.provider import Tracing

PRODUCER = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
    trace_flags=TraceFlags(0x03), trace_state=TraceState([("vendor", "opaque"), ("b", "1")]),
)  # fmt: skip
JOB = SpanContext(PRODUCER.trace_id, 0x1111111111111111, False, TraceFlags(0x01))
RETRIED = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(0x01))
RESOURCE = Resource.create({"service.name": "cekura-worker", "service.version": "1.2"})
SCOPE = InstrumentationScope("cekura-worker", "1.2")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """The SDK's encoder logs what it leaves out, lone surrogates and all: text pytest-xdist can't carry between its
    processes (its reports include what a test logged)."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def _span(name: str = "GET /v1/{id}/", attributes: Any = None, **fields: Any) -> ReadableSpan:
    defaults: dict[str, Any] = {
        "context": SpanContext(PRODUCER.trace_id, 0x2222222222222222, False, TraceFlags(0x01)),
        "parent": JOB,
        "resource": RESOURCE,
        "kind": SpanKind.CLIENT,
        "status": Status(StatusCode.UNSET),
        "start_time": 1_765_000_000_000_000_000,
        "end_time": 1_765_000_000_250_000_000,
        "instrumentation_scope": SCOPE,
    }
    return ReadableSpan(name, attributes=attributes if attributes is not None else {"a": "b"}, **{**defaults, **fields})


def _assert_same(spans: list[ReadableSpan]) -> None:
    ours = otlp.encode(spans)
    theirs = encode_spans(spans).SerializePartialToString()
    assert ours == theirs, (ExportTraceServiceRequest.FromString(ours), encode_spans(spans))


CALL = {
    "http.request.method": "GET", "url.full": "http://127.0.0.1:8000/test_framework/v1/results/123/?a=1",
    "server.address": "127.0.0.1", "server.port": 8000, "http.response.status_code": 200,
    "cekura.poll.number": 3, "cekura.status": "running",
}  # fmt: skip
EVERY_TYPE = {
    "str": "", "true": True, "false": False, "zero": 0, "int": 16383, "big": 16384, "neg": -1,
    "min": -(1 << 63), "max": (1 << 63) - 1, "float": 1.5, "fzero": 0.0, "nan": math.nan, "inf": -math.inf,
    "bytes": b"\x00\xff", "list": ["a", 1, True, 2.5, None], "empty list": [], "tuple": (1, 2),
    "map": {"k": "v", 3: [1]}, "none": None, "": "an empty key",
}  # fmt: skip

SHAPES: dict[str, ReadableSpan] = {
    "a call, its parent the job": _span(attributes=CALL),
    "a failed call": _span(
        status=Status(StatusCode.ERROR, "503 from Cekura: ünïcødé ✓ 🚀"), attributes={"error.type": "503"}
    ),
    "the job span, a remote parent with trace state, a link": _span(
        "job evaluator.run",
        context=SpanContext(PRODUCER.trace_id, JOB.span_id, False, PRODUCER.trace_flags, PRODUCER.trace_state),
        parent=PRODUCER,
        kind=SpanKind.CONSUMER,
        status=Status(StatusCode.OK),
        links=[Link(RETRIED, {"cekura.link": "retry_of"}), Link(JOB)],
        attributes={"cekura.job.id": "j-1", "cekura.poll.count": 12},
    ),
    "a job that began its trace": _span("job x", parent=None, kind=SpanKind.CONSUMER),
    "a summary of no time": _span("polls", kind=SpanKind.INTERNAL, end_time=1_765_000_000_000_000_000),
    "the publish": _span("send cekura:results", kind=SpanKind.PRODUCER, attributes={"messaging.message.id": "1-0"}),
    "a server span, no status, no times": _span("s", kind=SpanKind.SERVER, status=None, start_time=None, end_time=None),
    "an empty name and no attributes": _span("", attributes={}),
    "values of every type": _span(attributes=EVERY_TYPE),
    "long text": _span("n" * 20_000, attributes={"k" * 17_000: "v" * 70_000, "url.full": "é" * 300}),
    "a scope without a version": _span(instrumentation_scope=InstrumentationScope("bare")),
    "a scope with attributes and a schema": _span(
        instrumentation_scope=InstrumentationScope("s", "1", "https://opentelemetry.io/schemas/1.21.0", {"x": 1})
    ),
    "no scope": _span(instrumentation_scope=None),
    "a resource with a schema": _span(resource=Resource({"service.name": "x"}, "https://example.com/schema")),
}


@pytest.mark.parametrize("span", SHAPES.values(), ids=SHAPES.keys())
def test_each_shape_is_written_as_the_sdk_writes_it(span: ReadableSpan) -> None:
    _assert_same([span])
    if span is not SHAPES["values of every type"]:  # (it holds nested values: the SDK writes those)
        assert otlp._encode([span]) == encode_spans([span]).SerializePartialToString()


def test_a_batch_of_every_shape_groups_resources_and_scopes_as_the_sdk_does() -> None:
    spans = list(SHAPES.values())
    _assert_same(spans)
    _assert_same(spans[::-1])
    _assert_same([_span(resource=Resource({"service.name": str(i % 3)})) for i in range(9)])


def test_the_spans_the_service_records_are_written_as_the_sdk_writes_them() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tracing = Tracing(load_settings(otel_exporter_otlp_endpoint="http://127.0.0.1:9"))
    memory = InMemorySpanExporter()
    tracing.processor.shutdown()
    tracing.processor = SimpleSpanProcessor(memory)  # type: ignore[assignment]
    try:
        for index in range(50):
            tracing.record(
                f"GET /v1/results/{{id}}/ {index}", tracing.child(JOB), JOB, kind=SpanKind.CLIENT,
                attributes={"http.request.method": "GET", "server.port": 8000 + index, "cekura.poll.number": index},
                start_ns=1_765_000_000_000_000_000 + index, end_ns=1_765_000_000_000_000_000 + 2 * index,
                status=Status(StatusCode.ERROR, "x" * index) if index % 2 else Status(StatusCode.UNSET),
            )  # fmt: skip
        recorded = list(memory.get_finished_spans())
        assert (
            otlp._encode(recorded) == encode_spans(recorded).SerializePartialToString()
        )  # written here, not by the SDK
    finally:
        tracing.provider.shutdown()


UNWRITABLE: dict[str, dict[str, Any]] = {
    "a lone surrogate in a value": {"attributes": {"cekura.status": "run\ud800ning", "ok": "kept"}},
    "a lone surrogate in a key": {"attributes": {"k\udfff": 1, "ok": "kept"}},
    "an integer beyond int64": {"attributes": {"huge": 1 << 64, "ok": "kept"}},
    "an integer below int64": {"attributes": {"tiny": -(1 << 63) - 1}},
    "a value OTLP has no field for": {"attributes": {"object": object(), "ok": "kept"}},
    "a nested value": {"attributes": {"list": ["a"]}},
    "events": {"events": [Event("retry", {"n": 1}, timestamp=1)]},
}


@pytest.mark.parametrize("fields", UNWRITABLE.values(), ids=UNWRITABLE.keys())
def test_a_span_it_cannot_write_sends_the_batch_through_the_sdk_encoder(fields: dict[str, Any]) -> None:
    spans = [_span(), _span(**fields), _span("after")]
    with pytest.raises(otlp.Unencodable):
        otlp._encode(spans)
    assert otlp.encode(spans) == encode_spans(spans).SerializePartialToString()


def _outcome(encoder: Any, spans: list[ReadableSpan]) -> bytes | str:
    """What an encoder gives: its bytes, or the kind of exception it raised."""
    try:
        encoded: bytes = encoder(spans)
    except Exception as exc:
        return type(exc).__name__
    return encoded


def _sdk(spans: list[ReadableSpan]) -> bytes:
    encoded: bytes = encode_spans(spans).SerializePartialToString()
    return encoded


def _nested(depth: int, container: type = list) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value] if container is list else {"k": value}
    return value


class _LoudStr(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return b"XX"


def _dropping(count: int) -> Any:
    from opentelemetry.attributes import BoundedAttributes

    attributes = BoundedAttributes(maxlen=1, attributes={"a": 1, "b": 2}, immutable=False)
    attributes.dropped = count
    return attributes


#: The reproductions of an attack on the encoder (each gave other bytes than the SDK's, or failed where it didn't):
#: nesting past the SDK's own limits, objects where text belongs, a str that encodes itself, a bool for a time,
#: counts beyond uint32.
ATTACKS: dict[str, dict[str, Any]] = {
    "a list 49 deep (the SDK refuses the batch)": {"attributes": {"deep": _nested(49)}},
    "a list 51 deep (the SDK leaves the key out)": {"attributes": {"deep": _nested(51), "ok": 1}},
    "a list 400 deep (a RecursionError here, once)": {"attributes": {"deep": _nested(400)}},
    "a map 34 deep": {"attributes": {"deep": _nested(34, dict)}},
    "an int key": {"attributes": {1: "a", "ok": "kept"}},
    "a None key": {"attributes": {None: "a"}},
    "a bytes key": {"attributes": {b"k": "a"}},
    "a bytes name": {"name": b"n"},
    "a str that encodes itself otherwise, as a value": {"attributes": {"k": _LoudStr("abc")}},
    "a str that encodes itself otherwise, as a key": {"attributes": {_LoudStr("abc"): 1}},
    "a bool for a start time": {"start_time": True},
    "attributes dropped beyond uint32": {"attributes": _dropping(1 << 32)},
    "attributes dropped, negative": {"attributes": _dropping(-1)},
    "attributes dropped, one": {"attributes": _dropping(1)},
}


@pytest.mark.parametrize("fields", ATTACKS.values(), ids=ATTACKS.keys())
def test_an_attack_gets_what_the_sdk_gives(fields: dict[str, Any]) -> None:
    spans = [_span(), _span(**fields), _span("after")]
    assert _outcome(otlp.encode, spans) == _outcome(_sdk, spans)


def test_a_bytes_status_description_gets_what_the_sdk_gives() -> None:
    status = Status(StatusCode.ERROR)
    status._description = b"x"  # type: ignore[assignment]
    spans = [_span(status=status)]
    assert _outcome(otlp.encode, spans) == _outcome(_sdk, spans)


def test_equal_resources_and_scopes_are_each_written_as_they_are_batch_after_batch() -> None:
    """Equal is not the same bytes: `{"x": 1} == {"x": True}`, and key order is not part of equality."""
    resource = Resource({"service.name": "w"})
    for scope_attributes in ({"x": 1}, {"x": True}, {"x": 1.0}, {"x": 1}):
        _assert_same(
            [_span(resource=resource, instrumentation_scope=InstrumentationScope("s", "1", None, scope_attributes))]
        )
    for attributes in ({"a": "1", "b": "2"}, {"b": "2", "a": "1"}):
        _assert_same([_span(resource=Resource(attributes))])
