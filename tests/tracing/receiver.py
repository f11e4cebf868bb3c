"""An OTLP/HTTP trace receiver in a process of its own, for the tests and the benchmark: a stand-in for an
OpenTelemetry Collector that decodes what exporters actually send.

    python -m tests.tracing.receiver --port 4318 [--count-only]

`POST /v1/traces` takes an `ExportTraceServiceRequest` (protobuf, optionally gzip or deflate, as the OTLP/HTTP
exporter sends it), decodes it with opentelemetry-proto and keeps every span as a plain dict; `GET /spans` returns
them as JSON, `DELETE /spans` forgets them, `GET /stats` counts requests, spans and bytes, and the CPU seconds the
receiver has used since it began serving. With `--count-only` (the benchmark) it parses each request and counts its
spans, keeping nothing and making no dicts: it shares the benchmark's cores with the workers it measures, so it does
what a collector must (read the protobuf) and no more (making the dicts took 8 us a span, parsing takes 0.4). It
prints `listening on <port>` once it serves.

`tree()` draws the spans of one trace as indented text, the way the README shows an evaluator run.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

#: OTLP's span kinds by number.
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
#: OTLP's status codes by number.
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which) if which else None


def _parse(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def count(body: bytes) -> int:
    """How many spans an `ExportTraceServiceRequest` carries (parsed whole, as `decode` parses it)."""
    return sum(len(scope.spans) for resource in _parse(body).resource_spans for scope in resource.scope_spans)


def decode(body: bytes) -> list[dict[str, Any]]:
    """Every span of an `ExportTraceServiceRequest`, as a dict with hex ids."""
    request = _parse(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "trace_state": span.trace_state,
                        "flags": span.flags,
                        "name": span.name,
                        "kind": KINDS.get(span.kind, str(span.kind)),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attributes": {kv.key: _value(kv.value) for kv in span.attributes},
                        "status": STATUS.get(span.status.code, str(span.status.code)),
                        "status_message": span.status.message,
                        "links": [
                            {
                                "trace_id": link.trace_id.hex(),
                                "span_id": link.span_id.hex(),
                                "attributes": {kv.key: _value(kv.value) for kv in link.attributes},
                            }
                            for link in span.links
                        ],
                        "events": [event.name for event in span.events],
                        "scope": scope_spans.scope.name,
                        "resource": resource,
                    }
                )
    return spans


class _Store:
    def __init__(self, count_only: bool) -> None:
        self.count_only = count_only
        self.lock = threading.Lock()
        self.spans: list[dict[str, Any]] = []
        self.stats = {"requests": 0, "spans": 0, "bytes": 0}
        self.started_cpu_s = time.process_time()  # (what importing took is not receiving)

    def add(self, body: bytes) -> None:
        spans = [] if self.count_only else decode(body)
        counted = count(body) if self.count_only else len(spans)
        with self.lock:
            self.stats["requests"] += 1
            self.stats["spans"] += counted
            self.stats["bytes"] += len(body)
            self.spans.extend(spans)


def _handler(store: _Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: a benchmark's receiver takes thousands of requests

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v1/traces":
                self._send(404, b"", "text/plain")
                return
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            try:
                store.add(body)
            except Exception as exc:  # a body that isn't a request: what a collector answers
                self._send(400, str(exc).encode(), "text/plain")
                return
            self._send(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

        def do_GET(self) -> None:
            with store.lock:
                stats = {**store.stats, "cpu_s": time.process_time() - store.started_cpu_s}
                payload = store.spans if self.path == "/spans" else stats if self.path == "/stats" else None
                body = json.dumps(payload).encode() if payload is not None else b""
            self._send(200 if payload is not None else 404, body, "application/json")

        def do_DELETE(self) -> None:
            with store.lock:
                store.spans.clear()
            self._send(204, b"", "text/plain")

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tracing.receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--count-only", action="store_true", help="parse and count spans, keep none")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), _handler(_Store(args.count_only)))
    print(f"listening on {server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def tree(spans: Iterable[Mapping[str, Any]], trace_id: str, attributes: Iterable[str] = ()) -> str:
    """The spans of `trace_id` as an indented tree, parents first and siblings by start time; each line the span's
    name, kind, duration and the `attributes` asked for. A span whose parent is missing starts a tree of its own."""
    mine = sorted((s for s in spans if s["trace_id"] == trace_id), key=lambda s: s["start_ns"])
    ids = {s["span_id"] for s in mine}
    children: dict[str, list[Mapping[str, Any]]] = {}
    for span in mine:
        children.setdefault(span["parent_span_id"] if span["parent_span_id"] in ids else "", []).append(span)
    wanted = tuple(attributes)
    lines: list[str] = []

    def draw(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            took_ms = (span["end_ns"] - span["start_ns"]) / 1e6
            shown = " ".join(f"{key}={span['attributes'][key]}" for key in wanted if key in span["attributes"])
            status = f" {span['status']}" if span["status"] != "UNSET" else ""
            lines.append(f"{'  ' * depth}{span['name']} [{span['kind'].lower()}{status}] {took_ms:,.1f} ms {shown}")
            draw(span["span_id"], depth + 1)

    draw("", 0)
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":
    sys.exit(main())
