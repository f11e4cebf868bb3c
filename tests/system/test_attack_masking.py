"""Attacks on "every Cekura call made for a job masks that job's secrets and the deployment's, wherever text leaves
the process, masked before any cut" (f913b81: worker/cekura/client.py, worker/redact.py, actors/jobs.py,
actors/step.py).

Each test asserts the guarantee; one that fails reproduces a break (its docstring names the cause). A fake Cekura
of our own (the pattern of tests/system/test_attack_secrets.py, copied here) echoes secrets the ways a hostile or
merely odd API, proxy or MCP server might. Tests that pass are attacks the code held against.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import dramatiq
import httpx
import pytest
import redis

from config.settings import Settings, load_settings
from tests.conftest import FAST
from tests.system.fake_cekura import FakeCekura, json_reply
from worker.cekura.decode import DEFAULT_ERROR_EXCERPT
from worker.client import Client
from worker.runtime.app import Runtime, bind_actors, setup

TOGGLE = "agent.toggle_mock_tools"
TOOLS = "agent.tools_auto_fetch"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return " ".join(f"{_text(k)}={_text(v)}" for k, v in value.items())
    if isinstance(value, list | set | tuple):
        return " ".join(_text(v) for v in value)
    return str(value)


class Run:
    def __init__(self, rt: Runtime, worker: dramatiq.Worker | None, client: Client, raw: redis.Redis) -> None:
        self.rt, self.worker, self.client, self.raw = rt, worker, client, raw

    def start_worker(self) -> None:
        self.worker = dramatiq.Worker(self.rt.broker, worker_threads=4, worker_timeout=100)
        self.worker.start()

    def progress_events(self) -> str:
        return " ".join(_text(f) for _, f in self.raw.xrange(self.rt.settings.cekura_progress_stream))

    def result_events(self) -> str:
        return " ".join(_text(f) for _, f in self.raw.xrange(self.rt.settings.cekura_results_stream))


@pytest.fixture
def start_run(capsys: Any) -> Iterator[Callable[..., Run]]:
    # capsys first: its stream (where the runtime logs) outlives the workers, which are stopped here
    started: list[Run] = []

    def start(settings: Settings, *, worker: bool = True) -> Run:
        rt = setup(settings)  # logging goes to the sys.stdout of this moment: capsys's
        bind_actors()
        rt.redis.flushdb()
        run = Run(rt, None, Client(settings, client=rt.redis, broker=rt.broker), rt.redis)
        if worker:
            run.start_worker()
        started.append(run)
        return run

    yield start
    logging.getLogger().handlers[:] = [logging.NullHandler()]  # capsys's stream is closed by now
    for run in started:
        if run.worker is not None:
            run.worker.stop(timeout=10_000)
        run.raw.flushdb()


def _test_redis_url() -> str:
    from tests.conftest import TEST_REDIS_URL  # this pytest worker's database

    assert not TEST_REDIS_URL.endswith("/0"), "never db 0"
    return TEST_REDIS_URL


def _settings(api_url: str, api_key: str | None = None, **overrides: Any) -> Settings:
    key = api_key or f"ck-{secrets.token_hex(16)}"
    values = {"redis_url": _test_redis_url(), "cekura_api_url": api_url, "cekura_api_key": key, **FAST}
    return load_settings(**{**values, **overrides})


def _pieces(secret: str, size: int = 12) -> list[str]:
    """Every run of `size` characters of `secret`: none of them may be written anywhere."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def _leaks(secret: str, writings: dict[str, str]) -> list[str]:
    return sorted({where for where, text in writings.items() for piece in _pieces(secret) if piece in text})


# == 1. a provider key (or the API key) Cekura hands back as the progress id ===========================================


def test_provider_key_returned_as_the_progress_id_reaches_event_logs_console_and_cli(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BREAK. The start answer's `progress_id` is Cekura's text like any other, but nothing masks it: `_start`
    stores and logs `started.progress_id` as it came (`job_started`, and the `progress_id` bound into every later log
    line's context), advance.lua copies it into every progress event and finish.lua into the result event, and the
    job's secrets, deleted when it finishes, are no longer there for the console or the CLI to mask it with."""
    provider_key = f"prov-{secrets.token_hex(16)}"
    polls = {"n": 0}

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":  # e.g. an API that names the operation after the key it was started with
            return json_reply(200, {"progress_id": json.loads(body)["api_key"]})
        polls["n"] += 1
        return json_reply(200, {"status": "in_progress" if polls["n"] == 1 else "completed"})

    fake.script = script
    settings = _settings(fake.url, cekura_progress_events=True)
    run = start_run(settings)
    job_id = run.client.submit(TOGGLE, {"agent_id": 6, "enabled": True, "api_key": provider_key}, job_id="pid-echo")
    event = run.client.wait(job_id, timeout=20)
    # Fixed: `CekuraClient.start` refuses an id that quotes a secret, as an unusable answer.
    assert event["status"] == "failed" and "progress_id quotes a secret" in event["error"], event
    logs = capsys.readouterr().out

    from worker.console import serve_in_thread

    console = serve_in_thread(load_settings(redis_url=_test_redis_url()))
    try:
        page = httpx.get(f"{console.url}/jobs/{job_id}", timeout=10, trust_env=False).text
    finally:
        console.stop()
    monkeypatch.setenv("REDIS_URL", _test_redis_url())
    from worker.cli import main

    assert main(["status", job_id]) == 0
    cli = capsys.readouterr().out
    writings = {
        "result event": json.dumps(event),
        "progress events": run.progress_events(),
        "logs": logs,
        "console job page": page,
        "cli status": cli,
    }
    leaks = _leaks(provider_key, writings)
    assert not leaks, f"the provider api_key (returned as the progress id) is in: {leaks}"


def test_api_key_returned_as_the_progress_id_reaches_the_result_event(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """BREAK. The deployment's CEKURA_API_KEY, echoed as the progress id, is masked in the logs (the logging
    processor masks registered secrets) but not in the result and progress events: finish.lua and advance.lua copy
    the record's `progress_id` into them, and nothing on that path calls `redact`."""
    api_key = f"ck-{secrets.token_hex(16)}"

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            return json_reply(200, {"progress_id": f"op-for-{headers['x-cekura-api-key']}"})
        return json_reply(200, {"status": "completed"})

    fake.script = script
    run = start_run(_settings(fake.url, api_key, cekura_progress_events=True))
    job_id = run.client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="pid-api-key")
    event = run.client.wait(job_id, timeout=20)
    # Fixed: `CekuraClient.start` refuses an id that quotes a secret, as an unusable answer.
    assert event["status"] == "failed" and "progress_id quotes a secret" in event["error"], event
    logs = capsys.readouterr().out
    writings = {"result event": json.dumps(event), "results stream": run.result_events(), "logs": logs}
    leaks = _leaks(api_key, writings)
    assert not leaks, f"CEKURA_API_KEY (returned as the progress id) is in: {leaks}"


# == 2. an MCP server header's token, quoted without its scheme ========================================================


def test_mcp_bearer_token_quoted_without_its_scheme_is_not_masked(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """BREAK. `mcp_server_headers` values are masked as whole header values (`JobKind.secret_values`): for
    `Authorization: Bearer <token>` that is "Bearer <token>". Cekura (relaying the MCP server's 401) quoting the token
    alone, as servers do ("invalid token <token>"), is not masked: the token reaches the job's error, its result
    event and the `job_finished` log line."""
    token = f"mcp-{secrets.token_hex(16)}"

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            return json_reply(200, {"progress_id": "p-mcp"})
        return json_reply(200, {"status": "failed", "error": f"MCP server answered 401: invalid token {token}"})

    fake.script = script
    run = start_run(_settings(fake.url))
    params = {
        "agent_id": 6,
        "provider": "custom",
        "mcp_server_url": "https://mcp.example.com/sse",
        "mcp_server_headers": {"Authorization": f"Bearer {token}"},
    }
    job_id = run.client.submit(TOOLS, params, job_id="mcp-bearer")
    event = run.client.wait(job_id, timeout=20)
    assert event["status"] == "failed"
    logs = capsys.readouterr().out
    writings = {"result event": json.dumps(event), "logs": logs}
    leaks = _leaks(token, writings)
    assert not leaks, f"the MCP bearer token is in: {leaks}: {event['error']!r}"


# == 3. escaped forms redact.variants() does not know ==================================================================

#: A provider key shaped like real ones (base64 alphabet: '/' and '+'), long runs of plain characters between them.
_HEX_A, _HEX_B = secrets.token_hex(8), secrets.token_hex(8)
FORMED_KEY = f"pk/{_HEX_A}+{_HEX_B}/Zz"


def _percent_lower(text: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(text, safe=""))


def _numeric_entities(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else f"&#{ord(c)};" for c in text)


def _json_u_escaped(text: str) -> str:
    return "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in text)


ESCAPED_FORMS: dict[str, Callable[[str], str]] = {
    # PHP's json_encode (and others) write '/' as '\/': a JSON error body quoting the key
    "json_escaped_slash": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    # a JSON encoder that \u-escapes every non-alphanumeric character (Go escapes <>&, some escape all punctuation)
    "json_u_escapes": _json_u_escaped,
    # percent-encoding with lower-case hex digits (RFC 3986 says they are equivalent)
    "percent_lowercase_hex": _percent_lower,
    # HTML numeric character references (OWASP-style encoders write '/' as &#47; or &#x2F;)
    "html_numeric_entities": _numeric_entities,
    # the key upper-cased (an error page that shouts), or with its case swapped
    "upper_case": str.upper,
    "swapped_case": str.swapcase,
    # the key base64-encoded (a proxy quoting a Basic credential or a blob it could not parse)
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
}


@pytest.mark.parametrize("form", sorted(ESCAPED_FORMS))
def test_provider_key_quoted_in_an_escaped_form_is_masked(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any, form: str
) -> None:
    """BREAK for each form here: `redact.variants()` knows the key as itself, repr'd, JSON-escaped as Python's json
    writes it, percent-encoded as Python's quote writes it (upper-case hex) and html.escape'd; any other spelling of
    the same key passes unmasked into the job's error (the start's 400 excerpt), its result event and the log."""
    encoded = ESCAPED_FORMS[form](FORMED_KEY)
    assert encoded != FORMED_KEY

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        text = '{"detail": "the provider refused api_key ' + encoded + '"}'
        return 400, [("Content-Type", "application/json")], text.encode()

    fake.script = script
    run = start_run(_settings(fake.url))
    job_id = run.client.submit(TOGGLE, {"agent_id": 6, "enabled": True, "api_key": FORMED_KEY}, job_id=f"form-{form}")
    event = run.client.wait(job_id, timeout=20)
    assert event["status"] == "failed" and "HTTP 400" in event["error"]
    logs = capsys.readouterr().out
    writings = {"result event": json.dumps(event), "job error": event["error"], "logs": logs}
    leaks = [where for where, text in writings.items() if encoded in text or encoded.replace("\\", "\\\\") in text]
    assert not leaks, f"the provider key ({form}: {encoded!r}) is in: {leaks}: {event['error']!r}"


KNOWN_KEY = f"pk&<'\"{secrets.token_hex(12)}/\u00e9+x"
KNOWN_FORMS: dict[str, Callable[[str], str]] = {
    "html_escape": html.escape,
    "json_ascii": lambda s: json.dumps(s)[1:-1],
    "quote": lambda s: quote(s, safe=""),
    "repr": lambda s: repr(s)[1:-1],
}


# A key quoted in two fields, half of it in each ("starts with" / "ends with"), was a test here; it is deleted as
# inherent to whole-value masking: no form of the whole key is in such a text, and no matcher of a whole value can
# catch halves of it without refusing every long run of any secret's characters.


@pytest.mark.parametrize("form", sorted(KNOWN_FORMS))
def test_provider_key_quoted_in_a_form_redact_knows_is_masked_across_the_cut(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any, form: str
) -> None:
    """HELD. The forms `variants()` lists (html.escape, Python's JSON escapes, quote, repr), each placed so that the
    300-character excerpt cut of a progress error falls inside it: masked before the cut."""
    encoded = KNOWN_FORMS[form](KNOWN_KEY)

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            return json_reply(200, {"progress_id": "p-forms"})
        text = "x" * (DEFAULT_ERROR_EXCERPT - len(encoded) // 2) + encoded + " refused"
        return 400, [("Content-Type", "text/plain")], text.encode()

    fake.script = script
    run = start_run(_settings(fake.url))
    params = {"agent_id": 6, "provider": "vapi", "api_key": KNOWN_KEY}
    job_id = run.client.submit(TOOLS, params, job_id=f"known-{form}")
    event = run.client.wait(job_id, timeout=20)
    assert event["status"] == "failed" and "HTTP 400" in event["error"] and "***" in event["error"], event
    logs = capsys.readouterr().out
    plain = re.findall(r"[A-Za-z0-9]{12,}", KNOWN_KEY)
    writings = {"result event": json.dumps(event), "logs": logs}
    leaks = sorted({where for where, text in writings.items() for piece in plain if piece[:12] in text})
    assert not leaks, f"part of the key is in: {leaks}: {event['error'][-80:]!r}"


# == 4. the deployment's secrets where the code cuts before it masks ===================================================


def test_webhook_event_type_cut_before_it_is_masked_leaks_a_secrets_prefix(capsys: Any) -> None:
    """BREAK. worker/webhooks/app.py logs an unknown `event_type` as `str(event_type)[:64]`: the cut comes before the
    logging processor's `redact`, so a registered secret straddling character 64 is no longer whole and its first
    part is logged as it is (here 30 characters of CEKURA_API_KEY, from an authentic webhook)."""
    import asyncio

    from worker.redact import register_settings
    from worker.runtime import logging as service_logging
    from worker.webhooks.app import create_app

    api_key = f"ck-{secrets.token_hex(20)}"
    webhook_secret = f"whsec-{secrets.token_hex(16)}"
    settings = load_settings(
        redis_url=_test_redis_url(), cekura_api_key=api_key, cekura_webhook_secret=webhook_secret, log_format="json"
    )
    service_logging.configure(settings)
    register_settings(settings)

    async def post_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as http:
            answers = []
            for secret in (api_key, webhook_secret):
                event_type = "result.failed " + "x" * 20 + secret  # the cut (64) falls inside the secret
                answers.append(
                    await http.post(
                        "/webhooks/cekura",
                        json={"event_type": event_type, "data": {"id": 1}},
                        headers={"X-CEKURA-SECRET": webhook_secret},
                    )
                )
            return answers

    try:
        answers = asyncio.run(post_all())
        logs = capsys.readouterr().out
    finally:
        logging.getLogger().handlers[:] = [logging.NullHandler()]
    assert [a.json()["outcome"] for a in answers] == ["ignored", "ignored"]
    assert "webhook_ignored" in logs
    leaks = {name: secret[:20] for name, secret in (("api key", api_key), ("webhook secret", webhook_secret))}
    found = [name for name, prefix in leaks.items() if prefix in logs]
    assert not found, f"the first characters of {found} are in the webhook receiver's log: {logs[-400:]}"


def test_intake_rejection_quotes_the_api_key_unmasked_in_the_result_event(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """BREAK. A request entry a producer got wrong (the API key in `kind`, or a key in an `action` cut at 60
    characters by `repr(action)[:60]`) is rejected with an error that quotes it; `Intake.reject` and
    `JobStore.reject` publish the `rejected` result event without `redact`, so the registered CEKURA_API_KEY is in
    the event's `error` (and `kind`) as it is; and the `[:60]` cut comes before the log processor's masking, so the
    key's prefix is in the `request_rejected` log line too."""
    from worker.intake.stream import Intake

    api_key = f"ck-{secrets.token_hex(20)}"
    run = start_run(_settings(fake.url, api_key), worker=False)
    stream = run.rt.settings.cekura_requests_stream
    run.raw.xadd(stream, {"request": json.dumps({"kind": api_key, "params": {}})})
    run.raw.xadd(stream, {"request": json.dumps({"action": "x" * 20 + api_key, "job_id": "j-1"})})
    intake = Intake(run.rt, name="attack-masking")
    intake.ensure_group()
    assert intake.read_once() == 2
    logs = capsys.readouterr().out
    events = [e for e in run.client.results() if e["status"] == "rejected"]
    assert len(events) == 2
    writings = {"rejected events": json.dumps(events), "logs": logs}
    leaks = sorted({where for where, text in writings.items() if api_key[:20] in text})
    assert not leaks, f"CEKURA_API_KEY (or its first 20 characters) is in: {leaks}: {events}"


# == 5. a job secret in a logged traceback (internal_error) ===========================================================


def test_internal_error_traceback_quotes_the_jobs_secret_in_the_log(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """BREAK. A secret stored for a job that today's params check refuses (a record written before check_secret
    refused control characters, i.e. a rolling upgrade) makes `_with_secrets` raise pydantic's ValidationError,
    whose text carries `input_value='<the key>'` (check_secret's "(the value is not shown)" notwithstanding).
    `internal_error` logs it with `log.exception`: the traceback passes only through the registered-secret masking
    (the job's secrets were never loaded into the step), so the provider key is in the log line."""
    provider_key = f"prov-{secrets.token_hex(16)}"
    fake.script = lambda *_: json_reply(200, {"progress_id": "p-x"})
    run = start_run(_settings(fake.url), worker=False)
    job_id = run.client.submit(TOGGLE, {"agent_id": 6, "enabled": True, "api_key": provider_key}, job_id="old-secret")
    secret_key = run.rt.store.secret_key(job_id)
    # As an older version stored it: a tab inside the key, which today's check_secret refuses.
    ttl = run.raw.pttl(secret_key)
    run.raw.set(secret_key, json.dumps({"api_key": provider_key + "\tv1"}), px=ttl)
    run.start_worker()
    event = run.client.wait(job_id, timeout=20)
    assert event["status"] == "failed" and "internal error" in event["error"], event
    logs = capsys.readouterr().out
    assert "job_step_failed" in logs
    leaks = _leaks(provider_key, {"result event": json.dumps(event), "logs": logs})
    assert not leaks, f"the job's provider key is in: {leaks}"


# == 6. attacks that held ============================================================================================


def test_provider_key_in_progress_status_and_result_is_masked_everywhere(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """HELD. The provider key as the status word of a running poll (stored, logged as unexpected, in a progress
    event), then in a nested final result and its `error` (a dict, stringified by str()): masked in all of them."""
    provider_key = f"prov-{secrets.token_hex(16)}"
    polls = {"n": 0}

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            return json_reply(200, {"progress_id": "p-st"})
        polls["n"] += 1
        if polls["n"] == 1:
            return json_reply(200, {"status": f"checking {provider_key}"})
        return json_reply(
            200,
            {
                "status": "failed",
                "error": {"detail": [f"key {provider_key}", {"k": provider_key.upper() + provider_key}]},
                "echo": {"deep": [[{"key": provider_key}]]},
            },
        )

    fake.script = script
    run = start_run(_settings(fake.url, cekura_progress_events=True))
    job_id = run.client.submit(TOGGLE, {"agent_id": 6, "enabled": True, "api_key": provider_key}, job_id="st")
    event = run.client.wait(job_id, timeout=20)
    assert event["status"] == "failed"
    logs = capsys.readouterr().out
    writings = {
        "result event": json.dumps(event).replace(provider_key.upper(), ""),
        "progress events": run.progress_events(),
        "logs": logs.replace(provider_key.upper(), ""),
    }
    leaks = _leaks(provider_key, writings)
    assert not leaks, f"the provider key is in: {leaks}"


def test_mcp_header_value_quoted_across_the_excerpt_cut_is_masked(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """HELD. A whole `mcp_server_headers` value (and the api_key) straddling the 300-character excerpt cut of a
    progress error: masked before the cut."""
    header = f"hdr-{secrets.token_hex(16)}"

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            return json_reply(200, {"progress_id": "p-h"})
        return 400, [("Content-Type", "text/plain")], ("z" * 280 + "X-Token: " + header + " refused").encode()

    fake.script = script
    run = start_run(_settings(fake.url))
    params = {"agent_id": 6, "provider": "custom", "mcp_server_headers": {"X-Token": header}}
    job_id = run.client.submit(TOOLS, params, job_id="hdr-cut")
    event = run.client.wait(job_id, timeout=20)
    assert event["status"] == "failed" and "HTTP 400" in event["error"] and "***" in event["error"], event
    logs = capsys.readouterr().out
    leaks = _leaks(header, {"result event": json.dumps(event), "logs": logs})
    assert not leaks, f"part of the MCP header value is in: {leaks}: {event['error'][-60:]!r}"


def test_results_list_lookup_error_masks_the_api_key_before_its_cut(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """HELD. An evaluator run whose start answer is lost (a 502 after sending) looks for its tag in the results list
    (actors/lookup.py); the list answers 400 quoting the API key across the 300-character cut: the lookup call
    masks the registered secrets before the cut, so the job's error holds none of it."""
    api_key = f"ck-{secrets.token_hex(20)}"

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            return 502, [("Content-Type", "text/plain")], b"bad gateway"
        text = "q" * 262 + "key " + headers["x-cekura-api-key"] + " may not search"  # the cut falls inside it
        return 400, [("Content-Type", "text/plain")], text.encode()

    fake.script = script
    run = start_run(_settings(fake.url, api_key))
    job_id = run.client.submit("evaluator.run", {"agent_id": 3, "name": "nightly"}, job_id="lost-look", deadline_s=60)
    event = run.client.wait(job_id, timeout=25)
    assert event["status"] == "failed" and "results list" in event["error"] and "***" in event["error"], event
    logs = capsys.readouterr().out
    leaks = _leaks(api_key, {"result event": json.dumps(event), "logs": logs, "job error": event["error"]})
    assert not leaks, f"part of CEKURA_API_KEY is in: {leaks}: {event['error'][-80:]!r}"


def test_remote_cancel_error_quotes_no_body(fake: FakeCekura, start_run: Callable[..., Run], capsys: Any) -> None:
    """HELD. A job cancelled while its evaluator run polls: the remote cancel (end_calls) is refused with a body
    quoting the API key in a form no mask knows (base64): the log line quotes no body at all."""
    api_key = f"ck-{secrets.token_hex(20)}"
    ended = threading.Event()

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if path.endswith("/end_calls/"):
            ended.set()
            echo = base64.b64encode(headers["x-cekura-api-key"].encode()).decode()
            return 400, [("Content-Type", "text/plain")], f"cannot end calls for {echo}".encode()
        if method == "POST":
            return json_reply(200, {"id": 77})
        return json_reply(200, {"status": "running"})

    fake.script = script
    run = start_run(_settings(fake.url, api_key))
    job_id = run.client.submit("evaluator.run", {"agent_id": 3}, job_id="cancel-q", deadline_s=60)
    import time

    deadline = time.monotonic() + 10
    while (run.client.status(job_id) or {}).get("state") != "polling" and time.monotonic() < deadline:
        time.sleep(0.05)
    run.client.cancel(job_id)
    assert ended.wait(10)
    time.sleep(0.5)
    logs = capsys.readouterr().out
    echo = base64.b64encode(api_key.encode()).decode()
    assert "cekura_cancel_refused" in logs and "not quoted" in logs
    assert echo[:16] not in logs


def test_api_key_straddling_the_question_cut_is_masked(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """HELD. A waiting answer whose question quotes CEKURA_API_KEY across the 4000-character cut
    (DEFAULT_MAX_QUESTION_CHARS): masked before the cut, in the record, the progress event and the log."""
    api_key = f"ck-{secrets.token_hex(20)}"

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            return json_reply(200, {"progress_id": "p-q"})
        question = "y" * 3985 + " " + headers["x-cekura-api-key"] + " is that the right key?"
        return json_reply(200, {"status": "pending_clarification", "question": question})

    fake.script = script
    run = start_run(_settings(fake.url, api_key, cekura_progress_events=True))
    job_id = run.client.submit("scenario.generate", {"num_scenarios": 2}, job_id="q-cut", deadline_s=30)
    import time

    deadline = time.monotonic() + 15
    while (run.client.status(job_id) or {}).get("state") != "waiting" and time.monotonic() < deadline:
        time.sleep(0.05)
    view = run.client.status(job_id) or {}
    assert view.get("state") == "waiting" and "***" in str(view.get("question")), view
    logs = capsys.readouterr().out
    writings = {"status": json.dumps(view), "progress events": run.progress_events(), "logs": logs}
    leaks = _leaks(api_key, writings)
    assert not leaks, f"part of CEKURA_API_KEY is in: {leaks}"
    run.client.cancel(job_id)


def test_console_jobs_filter_cut_before_masking_reflects_the_api_key(start_run: Callable[..., Run]) -> None:
    """BREAK (minor: it reflects what the requester sent). The jobs page cuts its `kind` filter to 64 characters and
    its `prefix` to 256 (`listing.Filters.parse`) and renders both back, into the form and into every paging link,
    without `redact` before or after the cut; the confirmation and job pages, by contrast, mask a reflected id that
    quotes a secret. A link to `/jobs?prefix=<CEKURA_API_KEY>` shows the key on the page."""
    from worker.console import serve_in_thread

    api_key = f"ck-{secrets.token_hex(20)}"
    settings = _settings("http://127.0.0.1:9", api_key)
    start_run(settings, worker=False)
    console = serve_in_thread(settings)
    try:
        pages = {
            name: httpx.get(f"{console.url}/jobs", params={name: value}, timeout=10, trust_env=False).text
            for name, value in (("prefix", api_key), ("kind", "x" * 30 + api_key))
        }
    finally:
        console.stop()
    leaks = [name for name, page in pages.items() if api_key[:20] in page]
    assert not leaks, f"CEKURA_API_KEY (or its first 20 characters) is on the jobs page through: {leaks}"
