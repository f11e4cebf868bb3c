"""Attacks on one guarantee of the service's tracing since spans are recorded whole (`Tracing.record` hands the batch
processor a `ReadableSpan` built from a plain dict, so none of the SDK's attribute checks or limits apply): every span
the service exports is bounded and clean. No attribute value, span name, status description or link attribute is
longer than 256 characters whatever a hostile or broken Cekura answer, progress id, job id, kind, URL or error text
says; every value is one OTLP encodes (no "Failed to encode", no dropped batch); no span carries the API key, an OTLP
header credential or a job's provider secrets in any spelling.

Cekura is a `FakeCekura` over real HTTP whose answers each test scripts by path (`Cekura`); Redis, the worker's
actors and HTTP client, the OTLP exporter and the OTLP receiver process are real.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import make_settings
from tests.support import free_port, wait_for
from tests.tracing.conftest import (
    API_KEY,
    OTLP_TEAM,
    PROVIDER_KEY,
    Cekura,
    Reply,
    Service,
    find_leaks,
    flush,
    json_reply,
    wait_job,
)
from worker.errors import ConfigError
from worker.tracing import parse_traceparent

#: Every string a span exports stays within this (the brief's "256 characters or so").
BOUND = 256

TOOLS = "agent.tools_auto_fetch"
EVALUATOR = "evaluator.run"
GENERATE = "scenario.generate"


def _tools(agent: int, **extra: Any) -> dict[str, Any]:
    return {"agent_id": agent, "provider": "vapi", "assistant_id": "asst-1", "api_key": PROVIDER_KEY, **extra}


def _trace_id(event: dict[str, str]) -> str:
    context = parse_traceparent(event["traceparent"])
    assert context is not None, event
    return context.trace_id


def _spans_of(service: Service, event: dict[str, str], *names: str) -> list[dict[str, Any]]:
    """Every span of the job's trace, once its publish span and each of `names` arrived."""
    flush()
    trace_id = _trace_id(event)
    wanted = {"send cekura:results", *names}
    return wait_for(
        lambda: (spans := service.receiver.trace(trace_id)) and wanted <= {s["name"] for s in spans} and spans,
        15,
        f"spans {sorted(wanted)} of trace {trace_id}",
        interval=0.05,
    )


def _violations(spans: list[dict[str, Any]]) -> list[str]:
    """What in `spans` is over `BOUND` characters, or of a type the service never means to export."""
    found = []

    def check(span: str, where: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, str | int):
            found.append(f"{span[:80]!r}: {where} is a {type(value).__name__}")
        elif isinstance(value, str) and len(value) > BOUND:
            found.append(f"{span[:80]!r}: {where} has {len(value)} characters: {value[:100]!r}...")

    for span in spans:
        check(span["name"], "the name", span["name"])
        check(span["name"], "the status description", span["status_message"])
        for key, value in span["attributes"].items():
            check(span["name"], f"attribute {key}", value)
        for link in span["links"]:
            for key, value in link["attributes"].items():
                check(span["name"], f"link attribute {key}", value)
    return found


def _exporter_trouble(service: Service) -> list[str]:
    return [record.getMessage()[:200] for record in service.otel_logs.records]


# -- HELD ---------------------------------------------------------------------------------------------------------


def test_hostile_answers_of_every_shape_leave_every_span_bounded_and_encodable(
    cekura: Cekura, start: Callable[..., Service]
) -> None:
    """HELD. Ten jobs, each against a hostile or broken answer: a status word that is a number, a list, an object or
    null; a 2xx answer of invalid UTF-8; one whose status is a lone UTF-16 surrogate (`"\\udc80"`); a status word of
    5,000 emoji; an error page of invalid UTF-8; an error page of 900 KB quoting the secrets; a 2xx answer over
    the 1 MiB answer limit; plus a 128-character job id with 100 KB of metadata. Every job ends, every span
    arrives at the receiver (one job span and one publish span per job), no attribute, name or status description
    is over 256 characters or of another type than str or int, the exporter logs nothing, and no secret shows."""
    quoted = f"{API_KEY} {PROVIDER_KEY} {OTLP_TEAM} " * 15_000  # ~ 900 KB, under the 1 MiB limit
    answers: dict[int, list[Reply]] = {
        1: [json_reply(200, {"status": 12345})],
        2: [json_reply(200, {"status": ["completed", API_KEY]})],
        3: [json_reply(200, {"status": {"word": "completed"}})],
        4: [json_reply(200, {"status": None})],
        5: [(200, "application/json", b'{"status": "comp\xffleted\xc3"}')],
        6: [(200, "application/json", b'{"status": "\\udc80"}')],
        7: [json_reply(200, {"status": "\U0001f600" * 5000}), json_reply(200, {"status": "completed"})],
        8: [(502, "text/html", b"\xff\xfe<h1>" + b"\xed\xa0\x80" * 1000), (418, "text/plain", b"\xc3\x28" * 5000)],
        9: [(400, "text/plain", quoted.encode())],
        10: [(200, "application/json", b'{"status": "' + b"x" * 1_100_000 + b'"}')],
        11: [json_reply(200, {"status": "completed"})],
    }
    cekura.on(r"/auto-fetch/$", json_reply(200, {"progress_id": "p-1"}))
    for agent, replies in answers.items():
        cekura.on(rf"/aiagents/{agent}/tools/auto-fetch-progress/$", *replies)
    service = start()
    jobs = {f"shape-{agent}": _tools(agent) for agent in answers if agent != 11}
    long_id = "L" * 128
    for job_id, params in jobs.items():
        service.client.submit(TOOLS, params, job_id=job_id)
    service.client.submit(TOOLS, _tools(11), job_id=long_id, metadata={"blob": "m" * 100_000, "key": API_KEY})
    jobs[long_id] = _tools(11)
    events = {job_id: wait_job(service.client, job_id) for job_id in jobs}
    assert events[long_id]["status"] == "completed" and events["shape-7"]["status"] == "completed", events
    assert {e["status"] for j, e in events.items() if j not in (long_id, "shape-7")} == {"failed"}, events
    reasons = {1: "no status", 2: "no status", 3: "no status", 4: "no status", 5: "not UTF-8", 6: "surrogate"}
    reasons |= {8: "HTTP 418", 9: "HTTP 400: ***", 10: "over the 1048576-byte limit"}
    for agent, reason in reasons.items():
        assert reason in events[f"shape-{agent}"]["error"], (agent, events[f"shape-{agent}"]["error"][:300])
    spans = [span for event in events.values() for span in _spans_of(service, event)]
    assert "\U0001f600" * BOUND in [s["attributes"].get("cekura.status") for s in spans]  # cut, not dropped
    assert sum(s["name"] == f"job {TOOLS}" for s in spans) == len(jobs)
    assert sum(s["name"] == "send cekura:results" for s in spans) == len(jobs)
    assert _violations(spans) == []
    assert _exporter_trouble(service) == []
    assert find_leaks(spans, {"api": API_KEY, "provider": PROVIDER_KEY, "otlp": OTLP_TEAM}) == []


def test_a_progress_id_quoting_a_secret_is_refused_before_any_url_carries_it(
    cekura: Cekura, start: Callable[..., Service]
) -> None:
    """HELD. Start answers whose `progress_id` is the API key, the OTLP header credential or the job's provider key,
    as it is, upper-cased, percent-encoded, JSON-escaped and HTML-escaped: `CekuraClient.start` refuses each
    (`redact` check), so no poll is made and no `url.full` carries it; the spans stay clean and bounded."""
    spellings = {
        "plain": lambda s: s,
        "upper": str.upper,
        "pct": lambda s: "".join(f"%{b:02X}" for b in s.encode()),
        "json": lambda s: "".join(f"\\u{ord(c):04x}" for c in s),
        "html": lambda s: "".join(f"&#{ord(c)};" for c in s),
    }
    secrets = {"api": API_KEY, "otlp": OTLP_TEAM, "provider": PROVIDER_KEY}
    jobs = {}
    for n, (form, spell) in enumerate(spellings.items()):
        for m, (name, secret) in enumerate(secrets.items()):
            agent = 100 + 10 * n + m
            cekura.on(rf"/aiagents/{agent}/tools/auto-fetch/$", json_reply(200, {"progress_id": spell(secret)}))
            jobs[f"pid-{form}-{name}"] = _tools(agent)
    cekura.on(r"/auto-fetch-progress/$", json_reply(200, {"status": "completed"}))
    service = start()
    for job_id, params in jobs.items():
        service.client.submit(TOOLS, params, job_id=job_id)
    events = {job_id: wait_job(service.client, job_id) for job_id in jobs}
    assert {e["status"] for e in events.values()} == {"failed"}, events
    assert all("quotes a secret" in e["error"] for e in events.values()), events
    spans = [span for event in events.values() for span in _spans_of(service, event)]
    assert not [s for s in spans if s["name"].startswith("GET ")]  # no poll was made
    all_forms = {f"{f}:{n}": spell(s) for f, spell in spellings.items() for n, s in secrets.items()}
    assert find_leaks(spans, all_forms) == []
    assert _violations(spans) == [] and _exporter_trouble(service) == []


def test_cancel_and_answer_calls_answered_with_hostile_pages_stay_bounded_and_clean(
    cekura: Cekura, start: Callable[..., Service]
) -> None:
    """HELD. The spans of other calls than polls: an evaluator run cancelled while it polls, whose cancel call
    (`cancel_remote`, made without the job's secrets) Cekura answers with a 100 KB 400 page quoting the API key and
    the OTLP credential; and a scenario generation that asks a question, whose answer call Cekura refuses with a
    100 KB page quoting the secrets in several spellings. Both spans arrive, bounded and masked."""
    quoted = " ".join([API_KEY, API_KEY.upper(), quote(API_KEY, safe=""), OTLP_TEAM, OTLP_TEAM.upper()])
    page = (quoted + " ") * 1500
    cekura.on(r"/run_scenarios/$", json_reply(200, {"id": 77}))
    cekura.on(r"/results/77/$", json_reply(200, {"status": "running"}))
    cekura.on(r"/results/77/end_calls/$", (400, "text/plain", page.encode()))
    cekura.on(r"/generate-bg/$", json_reply(200, {"progress_id": "g-1"}))
    cekura.on(r"/generate-progress/$", json_reply(200, {"status": "pending_clarification", "question": "Which one?"}))
    cekura.on(r"/generate-clarify-answer/$", (400, "application/json", json.dumps({"detail": page}).encode()))
    service = start()
    run = service.client.submit(EVALUATOR, {"agent_id": 5, "name": "gate"}, job_id="cancel-me")
    gen = service.client.submit(GENERATE, {"num_scenarios": 1}, job_id="answer-me")
    wait_for(lambda: (service.client.status(run) or {}).get("polls", 0) >= 2, 15, "the run's polls")
    service.client.cancel(run)
    wait_for(lambda: (service.client.status(gen) or {}).get("state") == "waiting", 15, "the question")
    service.client.answer(gen, "the first one")
    cancel_name = "POST /test_framework/v1/results/{id}/end_calls/"
    answer_name = "POST /test_framework/v1/scenarios/generate-clarify-answer/"
    run_spans = _spans_of(service, wait_job(service.client, run), cancel_name)
    gen_event = wait_job(service.client, gen)
    assert gen_event["status"] == "failed", gen_event
    gen_spans = _spans_of(service, gen_event, answer_name)
    spans = run_spans + gen_spans
    cancel = next(s for s in spans if s["name"] == cancel_name)
    answer = next(s for s in spans if s["name"] == answer_name)
    assert cancel["status"] == "ERROR" and "bytes not quoted" in cancel["status_message"], cancel
    assert answer["status"] == "ERROR" and "***" in answer["status_message"], answer
    assert _violations(spans) == [] and _exporter_trouble(service) == []
    spellings = {"api": API_KEY, "api-pct": quote(API_KEY, safe=""), "otlp": OTLP_TEAM}
    assert find_leaks(spans, spellings) == []


def test_a_cekura_url_with_credentials_or_a_query_is_refused_by_the_settings() -> None:
    """HELD. `CEKURA_API_URL=https://user:password@host` (which would put the password in every span's `url.full`)
    and one with a `?token=` query are refused when the settings load (`Settings._check_api_url`)."""
    for url in ("https://user:s3cret-pass-word@api.cekura.ai", "https://api.cekura.ai/?token=s3cret-pass-word"):
        with pytest.raises(ConfigError, match="must not carry a query, fragment or credentials") as caught:
            make_settings(url, cekura_api_key=API_KEY)
        assert "s3cret" not in str(caught.value)


# -- BROKE (each failed before the fix that came with it; they pass now) --------------------------------------


def test_a_long_progress_id_is_cut_in_url_full(cekura: Cekura, start: Callable[..., Service]) -> None:
    """BROKE. A start answer whose `progress_id` is 512 non-ASCII characters (the client's own limit is 512
    characters): it travels percent-encoded in every poll's query, and the poll spans' `url.full` exports all of
    it, 6 KB for 512 emoji (12 characters each once encoded). `TracedCekuraClient._emit` never cuts `url.full`
    (worker/tracing/calls.py, the `URL_FULL: redact(url, ...)` line) and `Tracing.record` bounds nothing."""
    cekura.on(r"/auto-fetch/$", json_reply(200, {"progress_id": "\U0001f600" * 512}))
    cekura.on(
        r"/auto-fetch-progress/$", json_reply(200, {"status": "in_progress"}), json_reply(200, {"status": "completed"})
    )
    service = start()
    event = wait_job(service.client, service.client.submit(TOOLS, _tools(7), job_id="long-progress-id"))
    assert event["status"] == "completed", event
    spans = _spans_of(service, event)
    assert len([s for s in spans if s["name"].startswith("GET ")]) == 2
    assert _exporter_trouble(service) == []
    violations = _violations(spans)
    assert violations == [], "\n".join(violations)


def test_a_long_numeric_progress_id_is_cut_in_poll_and_cancel_spans(
    cekura: Cekura, start: Callable[..., Service]
) -> None:
    """BROKE. An evaluator run whose start answer's `id` is 512 digits (polled and cancelled at `/results/{id}/`):
    the span names hold `{id}`, but the polls' and the cancel call's `url.full` export the 512 digits (about 590
    characters). Same cause: `url.full` is never cut (worker/tracing/calls.py, `_emit`)."""
    digits = "9" * 512
    cekura.on(r"/run_scenarios/$", json_reply(200, {"id": digits}))
    cekura.on(r"/end_calls/$", json_reply(200, {"success": True}))
    cekura.on(r"/results/\d+/$", json_reply(200, {"status": "running"}))
    service = start()
    job_id = service.client.submit(EVALUATOR, {"agent_id": 5, "name": "gate"}, job_id="long-numeric-id")
    wait_for(lambda: (service.client.status(job_id) or {}).get("polls", 0) >= 2, 15, "two polls")
    service.client.cancel(job_id)
    cancel_name = "POST /test_framework/v1/results/{id}/end_calls/"
    spans = _spans_of(service, wait_job(service.client, job_id), cancel_name)
    assert _exporter_trouble(service) == []
    violations = _violations(spans)
    assert violations == [], "\n".join(violations)


def test_a_huge_negative_agent_id_is_cut_in_span_names_and_url_full(
    cekura: Cekura, start: Callable[..., Service]
) -> None:
    """BROKE. A producer's `agent_id` of -10**300 (a strict int; the intake accepts integers up to 4,300 digits) is
    formatted into the start and poll paths: `_template` (worker/tracing/calls.py, `_ID_SEGMENT = /[0-9]+`) does
    not see `-<digits>` as an id, so the start and poll span *names* are over 300 characters, and `url.full` too
    (never cut). A positive id of 4,000 digits would do the same to `url.full` alone."""
    cekura.on(r"/auto-fetch/$", json_reply(200, {"progress_id": "p-1"}))
    cekura.on(r"/auto-fetch-progress/$", json_reply(200, {"status": "completed"}))
    service = start()
    event = wait_job(service.client, service.client.submit(TOOLS, _tools(-(10**300)), job_id="negative-agent"))
    assert event["status"] == "completed", event
    spans = _spans_of(service, event)
    assert _exporter_trouble(service) == []
    violations = _violations(spans)
    assert violations == [], "\n".join(violations)


def test_secrets_with_every_character_hex_escaped_are_masked(cekura: Cekura, start: Callable[..., Service]) -> None:
    """BROKE. `redact`'s pattern for a secret matches each character written `\\xNN` (`_spellings`), but the
    pre-filter `_mask` runs first (worker/redact.py, `_mask`) only looks for a plain run of the secret's letters,
    `\\u00XX`, or a `%`/`&#` to decode: a text that writes the secret's characters as `\\x63\\x65...` (every byte
    escaped, as C/JS escapers and hexdumps do), or escapes just one letter of its longest run (`\\x63ekura-...`),
    holds none of those, so the pattern never runs. An error page quoting the API key and the job's provider key so
    reaches the `POST` span's and the job span's status descriptions, and a status word so spelled reaches
    `cekura.status`, unmasked."""

    def every(s: str) -> str:
        return "".join(f"\\x{b:02x}" for b in s.encode())

    def first(s: str) -> str:
        return f"\\x{ord(s[0]):02x}{s[1:]}"

    body = f"bad keys: {every(API_KEY)} {first(PROVIDER_KEY)}"
    cekura.on(r"/aiagents/1/tools/auto-fetch/$", (400, "text/plain", body.encode()))
    cekura.on(r"/aiagents/2/tools/auto-fetch/$", json_reply(200, {"progress_id": "p-2"}))
    cekura.on(
        r"/auto-fetch-progress/$",
        json_reply(200, {"status": every(PROVIDER_KEY)}),
        json_reply(200, {"status": "completed"}),
    )
    service = start()
    events = {
        job_id: wait_job(service.client, service.client.submit(TOOLS, _tools(agent), job_id=job_id))
        for job_id, agent in (("hex-page", 1), ("hex-status", 2))
    }
    assert events["hex-page"]["status"] == "failed" and events["hex-status"]["status"] == "completed", events
    spans = [span for event in events.values() for span in _spans_of(service, event)]
    spellings = {"api-every": every(API_KEY), "provider-first": first(PROVIDER_KEY), "provider": every(PROVIDER_KEY)}
    leaks = find_leaks(spans, spellings)
    assert leaks == [], "\n".join(map(str, leaks))


def test_an_otlp_basic_credential_is_masked_decoded(cekura: Cekura, start: Callable[..., Service]) -> None:
    """BROKE. `OTEL_EXPORTER_OTLP_HEADERS=Authorization=Basic%20<base64 of instance:token>` (Grafana Cloud's, Last9's,
    OpenObserve's OTLP credential): `header_values` (worker/redact.py) registers the header value, decoded from
    percent-encoding, and the base64 blob, but never base64-decodes a `Basic` credential as `credentials()` does for
    a job's own headers (actors/kinds/base.py). So the token itself, or `instance:token`, in a Cekura status word
    or error is exported in `cekura.status` and in the job span's status description."""
    token = "glc_eyJvIjoiOTg3NjU0IiwibiI6InN0YWNrIn0"
    basic = base64.b64encode(f"987654:{token}".encode()).decode()
    cekura.on(r"/auto-fetch/$", json_reply(200, {"progress_id": "p-1"}))
    cekura.on(
        r"/auto-fetch-progress/$",
        json_reply(200, {"status": token}),
        json_reply(200, {"status": "failed", "error": f"refused 987654:{token}"}),
    )
    service = start(otel_exporter_otlp_headers=f"Authorization=Basic%20{basic}")
    event = wait_job(service.client, service.client.submit(TOOLS, _tools(1), job_id="otlp-basic"))
    assert event["status"] == "failed", event
    spans = _spans_of(service, event)
    leaks = find_leaks(spans, {"token": token})
    assert leaks == [], "\n".join(map(str, leaks))


def test_an_uptrace_dsn_header_is_masked(cekura: Cekura, start: Callable[..., Service]) -> None:
    """BROKE. `OTEL_EXPORTER_OTLP_HEADERS=uptrace-dsn=https://<token>@api.uptrace.dev` (Uptrace's documented OTLP
    credential header): its name holds none of the words `_CREDENTIAL_HEADER` looks for (worker/redact.py:
    auth|key|token|secret|team|pass|credential|signature), so `header_values` registers nothing, and a Cekura
    status word quoting the DSN's token is exported as it is in `cekura.status`."""
    token = "uptr-project-token-3f9Q"
    cekura.on(r"/auto-fetch/$", json_reply(200, {"progress_id": "p-1"}))
    cekura.on(r"/auto-fetch-progress/$", json_reply(200, {"status": token}), json_reply(200, {"status": "completed"}))
    service = start(otel_exporter_otlp_headers=f"uptrace-dsn=https://{token}@api.uptrace.dev")
    event = wait_job(service.client, service.client.submit(TOOLS, _tools(1), job_id="otlp-dsn"))
    assert event["status"] == "completed", event
    leaks = find_leaks(_spans_of(service, event), {"token": token})
    assert leaks == [], "\n".join(map(str, leaks))


def test_an_answer_too_big_to_read_names_its_status_and_an_unanswered_call_names_none(
    cekura: Cekura, start: Callable[..., Service]
) -> None:
    """A call's span carries `http.response.status_code` whenever an answer came: an answer over
    `CEKURA_MAX_RESPONSE_BYTES` came (its status line was read, its body refused), so its poll span says 200 beside
    the failure; a start whose connection is refused got no answer, and its span names no status."""
    cekura.on(r"/auto-fetch/$", json_reply(200, {"progress_id": "p-big"}))
    cekura.on(r"/auto-fetch-progress/$", json_reply(200, {"status": "in_progress", "pad": "x" * 4096}))
    service = start(cekura_max_response_bytes=1024)
    event = wait_job(service.client, service.client.submit(TOOLS, _tools(8), job_id="answer-too-big"))
    assert event["status"] == "failed" and "over the 1024-byte limit" in event["error"], event
    (poll,) = [s for s in _spans_of(service, event) if s["name"].startswith("GET ")]
    assert poll["status"] == "ERROR", poll
    assert poll["attributes"]["http.response.status_code"] == 200
    assert poll["attributes"]["error.type"] == "PermanentError"

    closed = make_settings(f"http://127.0.0.1:{free_port()}", cekura_api_key=API_KEY)  # nothing listens there
    refused = start(cekura_api_url=closed.cekura_api_url, cekura_max_consecutive_errors=1)
    event = wait_job(refused.client, refused.client.submit(TOOLS, _tools(9), job_id="start-refused"), timeout=60)
    (start_span,) = [s for s in _spans_of(refused, event) if s["name"].startswith("POST ")]
    assert start_span["status"] == "ERROR", start_span
    assert "http.response.status_code" not in start_span["attributes"]
    assert start_span["attributes"]["error.type"] == "TransientError"
