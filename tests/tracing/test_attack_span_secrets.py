"""Attacks on one guarantee of the service's tracing: no span, attribute, status description, span name, event,
link or resource attribute it exports carries a secret (the Cekura API key, a job's provider secrets, the OTLP
header credentials), in any spelling.

The simulator only ever echoes a secret verbatim (`simulator/tools.py`). The spellings a real Cekura, a proxy or an
error page may use instead (every byte percent-encoded, HTML numeric references, JSON escapes, base64, upper case)
come from `Echo`, a small real HTTP server standing in for Cekura's tools auto-fetch routes, whose answers each
test scripts. Everything else is real: Redis, the worker's actors and HTTP client, the OTLP exporter and receiver.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import dramatiq
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from tests.conftest import make_settings
from tests.support import wait_for
from tests.system.fake_cekura import FakeCekura
from tests.tracing.conftest import Producer, Receiver, Reply, find_leaks, flush, json_reply, traced_runtime, wait_job
from worker.client import Client
from worker.errors import InvalidRequest
from worker.runtime.app import Runtime
from worker.tracing import parse_traceparent

KIND = "agent.tools_auto_fetch"
API_KEY = "cekura-api-key-7Qz9"  # the deployment's key when Cekura is the `Echo` server
PROVIDER_KEY = "provider-key-4e1f-Xb"
HEADER_TOKEN = "hdr-token-9c2d-Wq"
OTLP_TEAM = "otlp-team-5e8a-Lm"
_PATH = re.compile(r"/test_framework/v1/aiagents/(\d+)/tools/auto-fetch(-progress)?/")


@dataclass
class Script:
    """How the `Echo` server answers one agent's start and polls (the last poll answer repeats)."""

    start: Reply = field(default_factory=lambda: json_reply(200, {"progress_id": "p-1"}))
    polls: list[Reply] = field(default_factory=lambda: [json_reply(200, {"status": "completed", "error": None})])


class Echo:
    """Cekura's tools auto-fetch routes, answered as each agent's `Script` says (a `FakeCekura` running that)."""

    def __init__(self) -> None:
        self.scripts: dict[int, Script] = {}
        self.polls: dict[int, int] = {}
        self.fake = FakeCekura()
        self.fake.script = self._answer
        self.url = self.fake.url

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        match = _PATH.fullmatch(urlsplit(path).path)
        if match is None:
            status, content_type, out = json_reply(404, {"detail": "Not found."})
        else:
            agent = int(match.group(1))
            script = self.scripts.get(agent, Script())
            if match.group(2) is None:
                status, content_type, out = script.start
            else:
                n = self.polls.get(agent, 0)
                self.polls[agent] = n + 1
                status, content_type, out = script.polls[min(n, len(script.polls) - 1)]
        return status, [("Content-Type", content_type)], out


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.fake.stop()


@pytest.fixture
def echo_rt(echo: Echo, receiver: Receiver, redis_client: Any) -> Iterator[Runtime]:
    receiver.clear()
    settings = make_settings(
        echo.url,
        cekura_api_key=API_KEY,
        otel_exporter_otlp_endpoint=receiver.url,
        otel_exporter_otlp_headers=f"x-honeycomb-team={OTLP_TEAM}",
        otel_service_name="attack-span-secrets",
    )
    yield from traced_runtime(settings)


@pytest.fixture
def echo_client(echo_rt: Runtime) -> Iterator[Client]:
    worker = dramatiq.Worker(echo_rt.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    yield Client(echo_rt.settings, client=echo_rt.redis, broker=echo_rt.broker)
    worker.stop(timeout=10_000)


def _params(agent: int) -> dict[str, Any]:
    return {
        "agent_id": agent,
        "provider": "vapi",
        "assistant_id": "asst-1",
        "api_key": PROVIDER_KEY,
        "mcp_server_headers": {"Authorization": f"Bearer {HEADER_TOKEN}"},
    }


def _all_pct(secret: str) -> str:
    return "".join(f"%{b:02X}" for b in secret.encode())


def _all_html(secret: str) -> str:
    return "".join(f"&#{ord(c)};" for c in secret)


def _run(
    client: Client, receiver: Receiver, producer: Producer, jobs: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, str]], list[dict[str, Any]]]:
    """Submit `jobs` (job id: params) under one producer span; their events and every span of the trace."""
    with producer.tracer().start_as_current_span("submit") as span:
        for job_id, params in jobs.items():
            client.submit(KIND, params, job_id=job_id)
        trace_id = f"{span.get_span_context().trace_id:032x}"
    events = {job_id: wait_job(client, job_id) for job_id in jobs}
    flush()
    wait_for(
        lambda: len([s for s in receiver.trace(trace_id) if s["name"] == "send cekura:results"]) == len(jobs),
        15,
        "every job's publish span",
    )
    return events, receiver.trace(trace_id)


def test_an_error_page_quoting_the_secrets_in_everyday_spellings_is_masked_in_every_span(
    echo: Echo, echo_client: Client, receiver: Receiver, producer: Producer
) -> None:
    """Guarantee: no span carries a secret. HELD: a start refused with HTTP 400 whose JSON body quotes the provider
    key, the header token and the API key JSON-escaped (`\\u002d`), upper-cased, percent-encoded (letters kept),
    base64'd after a `user:` prefix and HTML-escaped; a 403 page quoting the secrets in `repr()` of bytes; a poll
    whose status word is the provider key, then a 5xx page, then a `failed` whose error, 300 characters in,
    straddles the 256-character cut of a status description with the key; and an answer whose `status` is the
    API key upper-cased and percent-encoded. Every one ends in a span's status, `cekura.status` or `url.full`."""
    everyday = {
        "json": lambda s: json.dumps(s).strip('"').replace("-", "\\u002d"),
        "upper": str.upper,
        "pct": lambda s: quote(s, safe=""),
        "b64": lambda s: base64.b64encode(b"user:" + s.encode()).decode(),
        "html": lambda s: s.replace("-", "&#45;"),
    }
    secrets = {"provider": PROVIDER_KEY, "header": HEADER_TOKEN, "api": API_KEY, "otlp": OTLP_TEAM}
    quoted = " ".join(f(s) for f in everyday.values() for s in secrets.values())
    echo.scripts[400] = Script(start=(400, "application/json", json.dumps({"detail": quoted}).encode()))
    echo.scripts[403] = Script(start=(403, "text/plain", repr(quoted.encode()).encode()))
    padding = "x" * 240
    echo.scripts[500] = Script(
        polls=[
            json_reply(200, {"status": PROVIDER_KEY}),
            (502, "text/html", f"<h1>502</h1>{quoted}".encode()),
            json_reply(200, {"status": "failed", "error": f"{padding} {PROVIDER_KEY} {quoted}"}),
        ]
    )
    echo.scripts[600] = Script(
        polls=[json_reply(200, {"status": quote(API_KEY.upper())}), json_reply(200, {"status": "completed"})]
    )
    jobs = {f"everyday-{agent}": _params(agent) for agent in (400, 403, 500, 600)}
    events, spans = _run(echo_client, receiver, producer, jobs)
    assert {job_id: e["status"] for job_id, e in events.items()} == {
        "everyday-400": "failed",
        "everyday-403": "failed",
        "everyday-500": "failed",
        "everyday-600": "completed",
    }, events
    assert len([s for s in spans if s["name"] == f"job {KIND}"]) == 4
    spellings = {f"{name}:{s}": f(value) for name, f in everyday.items() for s, value in secrets.items()}
    spellings |= {f"plain:{s}": value for s, value in secrets.items()}
    spellings |= {"straddling": PROVIDER_KEY[:6]}  # the start of the key is not left by the cut
    assert find_leaks(spans, spellings) == []
    assert "***" in json.dumps(spans)


@pytest.mark.parametrize(
    ("spelling", "encode"),
    [("every byte percent-encoded", _all_pct), ("every character an HTML numeric reference", _all_html)],
)
def test_an_error_page_quoting_the_secrets_with_every_character_escaped_is_masked(
    echo: Echo, echo_client: Client, receiver: Receiver, producer: Producer, spelling: str, encode: Any
) -> None:
    """Guarantee: no span carries a secret, "each of its characters in any of those spellings, in any mix"
    (`worker/redact.py`). HELD since `_mask` also looks in the decoded text; was BREAK: a start refused with HTTP 400
    whose body quotes the provider key, the header
    token and the API key with every character escaped (`%63%65%6B...`, as a proxy that encodes every byte does;
    `&#99;&#101;...`, as an HTML encoder that encodes every character does) is exported unmasked in the `POST`
    span's and the job span's status descriptions: `redact()` only runs a secret's pattern on a text holding one
    of its anchors (a run of its letters, or `\\u00XX`), and such a text holds none, although the pattern itself
    matches it."""
    secrets = {"api": API_KEY, "provider": PROVIDER_KEY, "header": HEADER_TOKEN}  # within the 256-character cut
    body = json.dumps({"detail": "rejected credentials: " + " ".join(encode(s) for s in secrets.values())})
    echo.scripts[400] = Script(start=(400, "application/json", body.encode()))
    events, spans = _run(echo_client, receiver, producer, {"escaped-400": _params(400)})
    assert events["escaped-400"]["status"] == "failed", events
    leaks = find_leaks(spans, {name: encode(s) for name, s in secrets.items()})
    assert leaks == [], f"{spelling}: {leaks}\n" + "\n".join(
        f"{s['name']}: {s['status_message']}" for s in spans if s["status_message"]
    )


def test_a_job_id_that_is_the_api_key_or_the_jobs_own_provider_key_is_refused(
    echo: Echo, echo_client: Client, receiver: Receiver, producer: Producer
) -> None:
    """Guarantee: no span attribute carries a secret. HELD since the intake refuses such an id: was BREAK: a request
    whose `job_id` is the deployment's API key, or the job's own provider key, was accepted, and the job span's
    `cekura.job.id` attribute exported it as it is (the progress id was refused when it quoted a secret,
    `CekuraClient.start`; the job id was not checked). It would have been in every log line and event too."""
    for job_id, params in {API_KEY: _params(42), PROVIDER_KEY: _params(43)}.items():
        with pytest.raises(InvalidRequest, match="job_id quotes a secret"):
            echo_client.submit(KIND, params, job_id=job_id)
        assert echo_client.status(job_id) is None
    jobs = {"after-the-refusals": _params(44)}  # and the service goes on: a job with an ordinary id runs
    _, spans = _run(echo_client, receiver, producer, jobs)
    assert find_leaks(spans, {"api": API_KEY, "provider": PROVIDER_KEY}) == []


def test_a_tracestate_carrying_the_api_key_stays_out_of_spans(
    echo: Echo, echo_client: Client, receiver: Receiver, producer: Producer
) -> None:
    """Guarantee: no span (its `trace_state` included) carries a secret. HELD since `without_secrets`; was BREAK: a
    request whose `tracestate` holds
    the deployment's API key (`vendor=<key>`) is accepted, and every span of the job (the job span, its calls, the
    publish span) exports it in `trace_state`, unmasked."""
    trace_state = TraceState([("vendor", API_KEY), ("other", PROVIDER_KEY)])
    with producer.tracer().start_as_current_span("parent") as parent:
        ids = parent.get_span_context()
    remote = SpanContext(ids.trace_id, ids.span_id, True, TraceFlags(1), trace_state)
    token = otel_context.attach(trace_api.set_span_in_context(NonRecordingSpan(remote)))
    try:
        job_id = echo_client.submit(KIND, _params(44), job_id="tracestate-job")
    finally:
        otel_context.detach(token)
    event = wait_job(echo_client, job_id)
    assert event["status"] == "completed", event
    flush()
    trace_id = parse_traceparent(event["traceparent"]).trace_id  # type: ignore[union-attr]
    spans = receiver.wait_for_span(trace_id, "send cekura:results")
    leaks = find_leaks(spans, {"api": API_KEY, "provider": PROVIDER_KEY})
    assert leaks == [], leaks


def test_metadata_holding_the_secrets_stays_out_of_spans(
    echo: Echo, echo_client: Client, receiver: Receiver, producer: Producer
) -> None:
    """Guarantee: no span carries a secret. HELD: a job whose `metadata` holds the API key, the OTLP header
    credential and the job's own provider key: no span records metadata."""
    metadata = {"key": API_KEY, "otlp": OTLP_TEAM, "provider": PROVIDER_KEY}
    jobs = {"metadata-job": _params(45)}
    with producer.tracer().start_as_current_span("submit") as span:
        echo_client.submit(KIND, jobs["metadata-job"], job_id="metadata-job", metadata=metadata)
        trace_id = f"{span.get_span_context().trace_id:032x}"
    assert wait_job(echo_client, "metadata-job")["status"] == "completed"
    flush()
    spans = receiver.wait_for_span(trace_id, "send cekura:results")
    assert find_leaks(spans, {"api": API_KEY, "otlp": OTLP_TEAM, "provider": PROVIDER_KEY}) == []


def test_a_status_word_of_100_kb_is_cut_in_every_span(
    echo: Echo, echo_client: Client, receiver: Receiver, producer: Producer
) -> None:
    """Spans are recorded whole (`Tracing.record`), without the SDK's attribute checks: the service bounds what it
    records itself. A first answer whose `status` is 100 KB (the service then waits for a word it knows) and a
    `failed` whose error is as long: every attribute and status description of every span stays within 256
    characters; the event keeps the error whole."""
    huge = "w" * 100_000
    echo.scripts[700] = Script(
        polls=[json_reply(200, {"status": huge}), json_reply(200, {"status": "failed", "error": huge})]
    )
    events, spans = _run(echo_client, receiver, producer, {"huge-700": _params(700)})
    assert events["huge-700"]["status"] == "failed" and huge in events["huge-700"]["error"], events
    texts = [s["status_message"] for s in spans] + [
        v for s in spans for v in s["attributes"].values() if isinstance(v, str)
    ]
    assert "w" * 256 in json.dumps(spans) and max(len(t) for t in texts) <= 256
