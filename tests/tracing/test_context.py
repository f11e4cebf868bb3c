"""The pure parts of tracing: W3C trace context as a request carries it, the record's trace fields, when settings turn
tracing on, and the two methods of `CekuraClient` the traced client relies on."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from structlog.testing import capture_logs

from config.settings import Settings, load_settings
from worker.cekura.client import CekuraClient
from worker.errors import ConfigError
from worker.intake import requests
from worker.tracing.context import TraceContext, from_request, job_fields, log_ids, parse_traceparent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _settings(**values: Any) -> Settings:
    return load_settings(redis_url="redis://127.0.0.1:6379/15", **values)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        f"{VALID}-extra",  # version 00 has nothing after the flags
        " " + VALID,
    ],
)
def test_a_malformed_traceparent_is_none(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_traceparent_is_parsed_and_a_later_version_keeps_its_first_four_fields() -> None:
    context = parse_traceparent(VALID)
    assert context == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert context.sampled and context.traceparent == VALID
    later = parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-whatever")
    assert later is not None and not later.sampled and later.traceparent.startswith("00-")


@pytest.mark.parametrize(
    ("traceparent", "tracestate", "kept", "reason"),
    [
        (VALID, "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", None),
        (VALID, "tenant@vendor=x", "tenant@vendor=x", None),
        (VALID, "a=1,a=2", "", "malformed tracestate"),  # a key twice
        (VALID, "Upper=1", "", "malformed tracestate"),
        (VALID, "k=" + "v" * 600, "", "malformed tracestate"),
        (VALID, 42, "", "malformed tracestate"),
        ("nonsense", "k=v", None, "malformed traceparent"),
        (["not", "text"], None, None, "malformed traceparent"),
        (None, "k=v", None, "tracestate without traceparent"),
    ],
)
def test_a_request_s_trace_context_is_kept_or_dropped_with_a_log_line(
    traceparent: Any, tracestate: Any, kept: str | None, reason: str | None
) -> None:
    with capture_logs() as logs:
        context = from_request(traceparent, tracestate)
    if kept is None:
        assert context is None
    else:
        assert context is not None and context.tracestate == kept
    assert [entry["reason"] for entry in logs if entry["event"] == "trace_context_ignored"] == (
        [reason] if reason else []
    )


def test_the_record_gets_a_span_of_the_job_s_own_under_the_producer_s() -> None:
    producer = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01", "k=v")
    fields = job_fields(producer, link=VALID)
    own = parse_traceparent(fields["traceparent"])
    assert own is not None and own.trace_id == producer.trace_id and own.span_id != producer.span_id
    assert own.flags == "01" and fields["trace_parent"] == producer.span_id and fields["tracestate"] == "k=v"
    assert fields["trace_link"] == VALID
    assert job_fields(None) == {} and job_fields(None, link="garbage") == {}
    assert log_ids(fields["traceparent"]) == {"trace_id": own.trace_id, "span_id": own.span_id}


def test_a_request_refuses_no_trace_context_however_odd() -> None:
    settings = _settings()
    odd = '{"kind": "agent.auto_fetch", "params": {"agent_id": 1}, "traceparent": "\\u0000bad", "tracestate": [1]}'
    request = requests.parse(odd, settings)
    assert isinstance(request, requests.JobRequest) and request.trace is None
    cancel = requests.parse(f'{{"action": "cancel", "job_id": "j", "traceparent": "{VALID}"}}', settings)
    assert isinstance(cancel, requests.CancelRequest)
    built = requests.build("agent.auto_fetch", {"agent_id": 1}, settings=settings, traceparent=VALID)
    assert built.trace == parse_traceparent(VALID)


@pytest.mark.parametrize(
    ("values", "on"),
    [
        ({}, False),
        ({"otel_exporter_otlp_endpoint": "http://collector:4318"}, True),
        ({"otel_exporter_otlp_traces_endpoint": "https://collector/v1/traces"}, True),
        ({"otel_traces_exporter": "otlp"}, True),
        ({"otel_traces_exporter": "none", "otel_exporter_otlp_endpoint": "http://collector:4318"}, False),
        ({"otel_sdk_disabled": True, "otel_exporter_otlp_endpoint": "http://collector:4318"}, False),
        ({"otel_exporter_otlp_endpoint": "  "}, False),
    ],
)
def test_tracing_is_on_only_when_configured(values: dict[str, Any], on: bool) -> None:
    assert _settings(**values).tracing_on is on


def test_tracing_is_on_from_the_usual_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-workers")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=secret-key")
    settings = _settings()
    assert settings.tracing_on and settings.otel_service_name == "billing-workers"
    assert "secret-key" not in repr(settings)
    from worker.tracing.provider import endpoint

    assert endpoint(settings) == "http://collector:4318/v1/traces"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"otel_exporter_otlp_protocol": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"otel_traces_exporter": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"otel_exporter_otlp_endpoint": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"cekura_trace_url_template": "http://jaeger:16686/trace/"}, "CEKURA_TRACE_URL_TEMPLATE"),
        ({"cekura_trace_url_template": "javascript:alert({trace_id})"}, "CEKURA_TRACE_URL_TEMPLATE"),
    ],
)
def test_a_tracing_setting_that_can_t_work_stops_start_up_naming_it(values: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _settings(**values)


def test_the_cekura_client_methods_the_traced_client_relies_on_are_still_there() -> None:
    """`worker.tracing.calls.TracedCekuraClient` overrides `_call` and `progress` and makes each call with these
    halves of the client's own: a change of any must fail here first."""
    call = inspect.signature(CekuraClient._call)
    assert list(call.parameters) == [
        "self",
        "method",
        "path",
        "json_body",
        "query",
        "secrets",
        "time_left_s",
        "allow_empty",
    ]
    assert all(call.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in list(call.parameters)[3:])
    exchange = ["self", "method", "path", "json_body", "query", "time_left_s", "answered"]
    assert list(inspect.signature(CekuraClient._exchange).parameters) == exchange
    answer = ["self", "method", "path", "response", "body", "secrets", "allow_empty"]
    assert list(inspect.signature(CekuraClient._answer).parameters) == answer
    assert list(inspect.signature(CekuraClient._progress_target).parameters) == ["kind", "params", "progress_id"]
    # The plain client's calls are the same two halves, and its polls the same target and status word.
    source = inspect.getsource(CekuraClient._call)
    assert "self._exchange(method, path, json_body, query, time_left_s)" in source
    assert "self._answer(method, path, response, body, secrets, allow_empty)" in source
    progress = inspect.getsource(CekuraClient.progress)
    assert (
        "self._progress_target(kind, params, progress_id)" in progress and "status_word(kind, path, data)" in progress
    )
