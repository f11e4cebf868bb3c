"""The OTLP receiver the benchmark exports to (`--count-only`): it counts what an exporter sends, as `decode` would
read it, and keeps nothing."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from tests.support import kill_group
from tests.tracing.conftest import start_receiver
from tests.tracing.receiver import count, decode
from worker.tracing import otlp

SCOPE = InstrumentationScope("cekura-worker", "1")


def _batch(spans: int, resources: int = 1) -> bytes:
    """An export request of `spans` spans spread over `resources` resources (so over as many `ResourceSpans`)."""
    made = [Resource.create({"service.name": f"svc-{index}"}) for index in range(resources)]
    return otlp.encode(
        [
            ReadableSpan(
                f"GET /v1/{index}/",
                SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, index + 1, False, TraceFlags(0x01)),
                resource=made[index % resources],
                attributes={"n": index},
                kind=SpanKind.CLIENT,
                start_time=1,
                end_time=2,
                instrumentation_scope=SCOPE,
            )
            for index in range(spans)
        ]
    )


def test_count_reads_as_many_spans_as_decode_over_several_resources() -> None:
    body = _batch(7, resources=3)
    assert count(body) == len(decode(body)) == 7
    assert count(b"") == 0


def test_a_count_only_receiver_counts_what_is_exported_and_keeps_nothing(tmp_path: Path) -> None:
    receiver = start_receiver(tmp_path / "receiver.log", count_only=True)
    try:
        for spans in (5, 12):
            answer = receiver.http.post(
                "/v1/traces", content=_batch(spans, resources=2), headers={"Content-Type": "application/x-protobuf"}
            )
            assert answer.status_code == 200
        assert receiver.http.post("/v1/traces", content=b"\xff\xff").status_code == 400  # not a request
        stats = receiver.stats()
        assert (stats["requests"], stats["spans"]) == (2, 17)
        assert isinstance(stats["cpu_s"], float) and stats["cpu_s"] > 0
        assert receiver.spans() == []
    finally:
        receiver.http.close()
        kill_group(receiver.popen, grace_s=1.0)
