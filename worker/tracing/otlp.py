"""Spans as the bytes of an OTLP `ExportTraceServiceRequest`, the same bytes the SDK's encoder makes, three times
faster.

The OTLP exporter turns every batch into protobuf by building a message object for each span, attribute and value
(`opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`), about 24 us a span; at saturation that
was a third of all the CPU tracing costs (`python -m bench --mode tracing`, sampled with the GIL held). The spans
this service makes are small and alike: a few str and int attributes, at most one link, no events. Writing their
wire format directly takes about 7 us a span, and the constant part of a batch (the resource and the scope) is
written once per process.

`encode` gives exactly the SDK's bytes for every span it can write (`tests/tracing/test_otlp.py` holds the two
equal over every shape the service records and a range of hostile values). A span it can't (an event, a nested
value, a value of a type OTLP has no field for, text that isn't a str or isn't valid UTF-8, a number out of its
field's range), or any failure at all, makes the whole batch go through the SDK's encoder instead, so what is
exported, dropped or logged is then the SDK's doing, as before.

Wire format: https://protobuf.dev/programming-guides/encoding/ and the OTLP `trace.proto`, `common.proto`,
`resource.proto`; field numbers are named where they are written.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack

#: `Span.SpanKind`.
_KINDS = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}

#: `SpanFlags`: whether the parent is remote is known (always, here), and whether it is.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT32_END = 1 << 32

#: The resources and scopes whose part of a request is written (`_scope_head`), by identity: equal ones may still be
#: written differently (`{"x": 1} == {"x": True}`, key order), and each must be written as it is.
_HEADS: dict[tuple[int, int], tuple[Resource, InstrumentationScope | None, tuple[bytes, bytes, bytes, bytes]]] = {}
_MAX_HEADS = 64


class Unencodable(ValueError):
    """A span this module doesn't write (the batch goes through the SDK's encoder)."""


def _varint_slow(n: int) -> bytes:
    if n < 0:  # int64: two's complement, ten bytes
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: Varints of the lengths and small numbers nearly every field has.
_SMALL = tuple(_varint_slow(n) for n in range(1 << 14))


def _varint(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 16384 else _varint_slow(n)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _utf8(text: str) -> bytes:
    if not isinstance(text, str):
        raise Unencodable(f"a {type(text).__name__} where text belongs")
    try:
        return str.encode(text, "utf-8")  # (str's own: a subclass may override `encode`)
    except UnicodeEncodeError as exc:  # a lone surrogate: protobuf refuses it
        raise Unencodable("text that is not valid UTF-8") from exc


def _count(n: int) -> bytes:
    """A uint32 field's varint (the dropped counts)."""
    if not 0 <= n < _UINT32_END:
        raise Unencodable("a count beyond uint32")
    return _varint(n)


def _time(tag: bytes, ns: int | None) -> bytes:
    """A fixed64 time field, left out when 0 or None."""
    if not ns:
        return b""
    if isinstance(ns, bool) or not isinstance(ns, int):
        raise Unencodable("a time that is not an integer")
    return tag + _FIXED64(ns)


def _string(tag: bytes, text: str | None) -> bytes:
    """A proto3 string field: left out when empty."""
    if not text:
        return b""
    return _delimited(tag, _utf8(text))


def _value(value: Any) -> bytes:
    """An `AnyValue` (a oneof: written even when it holds its type's default), in `_encode_value`'s order."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"  # bool_value = 2
    if isinstance(value, str):
        return _delimited(b"\x0a", _utf8(value))  # string_value = 1
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise Unencodable("an integer beyond int64")
        return b"\x18" + _varint(value)  # int_value = 3
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)  # double_value = 4
    if isinstance(value, bytes):
        return _delimited(b"\x3a", value)  # bytes_value = 7
    # array_value = 5 and kvlist_value = 6: the service never records one, and the SDK's handling of deep nesting
    # (a batch refused, or a key left out, by depth) is the SDK's to keep.
    raise Unencodable(f"a value of type {type(value).__name__}")


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated `KeyValue { string key = 1; AnyValue value = 2; }` under `tag` (str and small int values, nearly
    all of them, written inline: this is most of a span's bytes and time)."""
    if not attributes:
        return b""
    out = []
    small = _SMALL
    for key, value in attributes.items():
        name = _utf8(key)
        size = len(name)
        head = (b"\x0a" + (small[size] if size < 16384 else _varint_slow(size)) + name) if size else b""
        kind = type(value)
        if kind is str:
            text = _utf8(value)
            size = len(text)
            encoded = b"\x0a" + (small[size] if size < 16384 else _varint_slow(size)) + text
        elif kind is int and 0 <= value < 16384:
            encoded = b"\x18" + small[value]
        else:
            encoded = _value(value)
        size = len(encoded)
        pair = head + b"\x12" + (small[size] if size < 16384 else _varint_slow(size)) + encoded
        size = len(pair)
        out.append(tag + (small[size] if size < 16384 else _varint_slow(size)) + pair)
    return b"".join(out)


def _flags(parent: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)


def _span(span: ReadableSpan) -> bytes:
    """A `Span` message's fields (not its tag and length)."""
    if span.events:
        raise Unencodable("a span with events")
    context = span.context
    assert context is not None  # (a ReadableSpan always has one; the SDK's type says Optional)
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),  # trace_id = 1
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),  # span_id = 2
    ]
    if context.trace_state:  # trace_state = 3
        parts.append(_string(b"\x1a", ",".join(f"{key}={value}" for key, value in context.trace_state.items())))
    parent = span.parent
    if parent:  # parent_span_id = 4
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    parts.append(_string(b"\x2a", span.name))  # name = 5
    parts.append(b"\x30" + _varint(_KINDS[span.kind]))  # kind = 6 (never UNSPECIFIED: always written)
    parts.append(_time(b"\x39", span.start_time))  # start_time_unix_nano = 7 (fixed64)
    parts.append(_time(b"\x41", span.end_time))  # end_time_unix_nano = 8
    parts.append(_attributes(b"\x4a", span.attributes))  # attributes = 9
    if span.dropped_attributes:
        parts.append(b"\x50" + _count(span.dropped_attributes))  # dropped_attributes_count = 10
    if span.dropped_events:
        parts.append(b"\x60" + _count(span.dropped_events))  # dropped_events_count = 12
    for link in span.links:  # links = 13: Link { trace_id = 1; span_id = 2; attributes = 4; dropped = 5; flags = 6 }
        linked = link.context
        body = b"\x0a\x10" + linked.trace_id.to_bytes(16, "big") + b"\x12\x08" + linked.span_id.to_bytes(8, "big")
        body += _attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _count(link.dropped_attributes)
        parts.append(_delimited(b"\x6a", body + b"\x35" + _FIXED32(_flags(linked))))
    if span.dropped_links:
        parts.append(b"\x70" + _count(span.dropped_links))  # dropped_links_count = 14
    status = span.status
    if status is not None:  # status = 15: Status { string message = 2; StatusCode code = 3; }
        code = status.status_code.value
        message = _string(b"\x12", status.description) + (b"\x18" + _varint(code) if code else b"")
        parts.append(_delimited(b"\x7a", message))
    parts.append(b"\x85\x01" + _FIXED32(_flags(parent)))  # flags = 16 (fixed32)
    return b"".join(parts)


def _scope_head(resource: Resource, scope: InstrumentationScope | None) -> tuple[bytes, bytes, bytes, bytes]:
    """What a batch's `ResourceSpans` holds before its spans and after them: the resource, the scope, the schema
    URLs (the same for every batch a process exports)."""
    known = _HEADS.get((id(resource), id(scope)))
    if known is not None and known[0] is resource and known[1] is scope:
        return known[2]
    if len(_HEADS) >= _MAX_HEADS:
        _HEADS.clear()
    head = _write_head(resource, scope)
    _HEADS[(id(resource), id(scope))] = (resource, scope, head)  # (holding both: their ids stay theirs)
    return head


def _write_head(resource: Resource, scope: InstrumentationScope | None) -> tuple[bytes, bytes, bytes, bytes]:
    resource_message = _attributes(b"\x0a", resource.attributes)  # Resource { attributes = 1 }
    if scope is None:
        scope_message = b""
        scope_schema = b""
    else:  # InstrumentationScope { name = 1; version = 2; attributes = 3; }
        scope_message = _string(b"\x0a", scope.name) + _string(b"\x12", scope.version)
        scope_message += _attributes(b"\x1a", scope.attributes)
        scope_schema = _string(b"\x1a", scope.schema_url)
    # ResourceSpans { resource = 1; scope_spans = 2; schema_url = 3 } / ScopeSpans { scope = 1; spans = 2; ... = 3 }
    return (
        _delimited(b"\x0a", resource_message),
        _delimited(b"\x0a", scope_message),
        scope_schema,
        _string(b"\x1a", resource.schema_url),
    )


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized `ExportTraceServiceRequest` of `spans`, grouped by resource and scope as the SDK groups
    them."""
    try:
        return _encode(spans)
    except Exception:  # Unencodable, or anything else (a RecursionError, an odd object): the SDK's way, whatever it is
        encoded: bytes = encode_spans(spans).SerializePartialToString()
        return encoded


def _encode(spans: Sequence[ReadableSpan]) -> bytes:
    groups: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    last: tuple[Any, Any, list[bytes]] | None = None
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        if last is None or last[0] is not resource or last[1] is not scope:  # (every span of a process shares them)
            last = (resource, scope, groups.setdefault(resource, {}).setdefault(scope, []))
        last[2].append(_delimited(b"\x12", _span(span)))
    out = []
    for resource, by_scope in groups.items():
        scope_spans = []
        resource_head = b""
        resource_tail = b""
        for scope, encoded in by_scope.items():
            resource_head, scope_message, scope_schema, resource_tail = _scope_head(resource, scope)
            scope_spans.append(_delimited(b"\x12", scope_message + b"".join(encoded) + scope_schema))
        out.append(_delimited(b"\x0a", resource_head + b"".join(scope_spans) + resource_tail))
    return b"".join(out)
