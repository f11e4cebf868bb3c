"""Adversarial reproductions against "secrets never leak" (CEKURA_API_KEY, the Redis password in REDIS_URL, a job's
provider `api_key`). Each test asserts the guarantee and fails while the leak it reproduces exists.

A tiny HTTP server of our own stands in for Cekura, so it can echo the key back the ways a real API (or a proxy in
front of it) might: in an error body, HTML-escaped, in a progress payload, stripped of whitespace.
"""

from __future__ import annotations

import html
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
import redis

from config.settings import Settings, load_settings
from tests.conftest import FAST
from tests.system.fake_cekura import FakeCekura, Script, json_reply
from worker.client import Client
from worker.errors import ConfigError, InvalidRequest
from worker.runtime.app import Runtime, bind_actors, setup

if TYPE_CHECKING:
    from conftest import System


# -- a fake Cekura ----------------------------------------------------------------------------------------------


# -- an in-process worker on a given Redis and key ----------------------------------------------------------------


class Run:
    def __init__(self, rt: Runtime, worker: dramatiq.Worker, client: Client, raw: redis.Redis) -> None:
        self.rt, self.worker, self.client, self.raw = rt, worker, client, raw

    def results(self) -> list[dict[str, str]]:
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in self.raw.xrange("cekura:results")]

    def dump(self) -> str:
        readers: dict[str, Callable[[bytes], Any]] = {
            "string": self.raw.get,
            "hash": self.raw.hgetall,
            "list": lambda key: self.raw.lrange(key, 0, -1),
            "set": self.raw.smembers,
            "zset": lambda key: self.raw.zrange(key, 0, -1),
            "stream": self.raw.xrange,
        }
        out = []
        for key in self.raw.scan_iter(count=1000):
            kind = self.raw.type(key).decode()
            value = readers[kind](key) if kind in readers else kind
            out.append(f"{key!r} {_text(value)}")
        return "\n".join(out)


def _text(value: Any) -> str:
    """Redis values as text, bytes decoded (so a secret shows as itself, not as a bytes repr)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return " ".join(f"{_text(k)}={_text(v)}" for k, v in value.items())
    if isinstance(value, list | set | tuple):
        return " ".join(_text(v) for v in value)
    return str(value)


@pytest.fixture
def start_run(capsys: Any) -> Iterator[Callable[..., Run]]:
    # capsys first: its stream (where the runtime logs) outlives the workers, which are stopped here
    started: list[Run] = []

    def start(settings: Settings) -> Run:
        rt = setup(settings)  # logging goes to the sys.stdout of this moment: capsys's
        bind_actors()
        rt.redis.flushdb()
        worker = dramatiq.Worker(rt.broker, worker_threads=4, worker_timeout=100)
        worker.start()
        run = Run(rt, worker, Client(settings, client=rt.redis, broker=rt.broker), rt.redis)
        started.append(run)
        return run

    yield start
    logging.getLogger().handlers[:] = [logging.NullHandler()]  # capsys's stream is closed by now
    for run in started:
        run.worker.stop(timeout=10_000)
        run.raw.flushdb()


def _settings(redis_url: str, api_url: str, api_key: str, **overrides: Any) -> Settings:
    return load_settings(redis_url=redis_url, cekura_api_url=api_url, cekura_api_key=api_key, **{**FAST, **overrides})


def _test_redis_url() -> str:
    from tests.conftest import TEST_REDIS_URL  # this pytest worker's database

    assert not TEST_REDIS_URL.endswith("/0"), "never db 0"
    return TEST_REDIS_URL


TOGGLE = "agent.toggle_mock_tools"


# -- 1. the Redis password in the URL's query string ----------------------------------------------------------


@pytest.mark.slow
def test_redis_password_given_as_url_query_parameter_is_printed(system: System) -> None:
    """redis-py takes `?password=` from REDIS_URL, but neither `redact_url` nor `register_settings` knows it."""
    password = f"redis-pw-{secrets.token_hex(8)}"
    server = system.redis(password=password)
    env = {"REDIS_URL": f"redis://127.0.0.1:{server.port}/0?password={password}"}
    status, health = system.cli_many([(env, ["status", "--format", "json"]), (env, ["healthcheck"])])
    # Refused at start-up (a password outside the netloc is one nothing could mask), with a message that hides it.
    assert status.returncode == 2 and "query parameters" in status.stderr, status.stderr
    output = {"status": status.stdout + status.stderr, "healthcheck": health.stdout + health.stderr}
    leaks = [name for name, text in output.items() if password in text]
    assert not leaks, f"Redis password printed by: {leaks}\n{output}"


# -- 2. a Redis password holding a raw '#' (or '/', '?') ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("separator", ["#", "/", "?"])
def test_redis_password_with_raw_delimiter_is_printed_by_healthcheck(system: System, separator: str) -> None:
    """With a '#', '/' or '?' in the password, urlsplit finds no password, so nothing is masked or registered."""
    tail = secrets.token_hex(8)
    password = f"pw{separator}{tail}"
    env = {"REDIS_URL": f"redis://:{password}@127.0.0.1:6379/0"}
    health, status = system.cli_many([(env, ["healthcheck"]), (env, ["status"])])
    output = {"healthcheck": health.stdout + health.stderr, "status": status.stdout + status.stderr}
    assert health.returncode != 0
    leaks = [name for name, text in output.items() if tail in text]
    assert not leaks, f"part of the Redis password printed by: {leaks}\n{output}"


# -- 3. Cekura's error body echoes the key, HTML-escaped --------------------------------------------------------------


def test_api_key_echoed_html_escaped_in_error_body(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    api_key = f"ck&live<{secrets.token_hex(6)}>'\"x"
    assert api_key.isprintable() and api_key.isascii()

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        page = f"<html><body><p>Invalid API key: {html.escape(headers['x-cekura-api-key'])}</p></body></html>"
        return 400, [("Content-Type", "text/html")], page.encode()

    fake.script = script
    run = start_run(_settings(_test_redis_url(), fake.url, api_key))
    job_id = run.client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="html-echo")
    event = run.client.wait(job_id, timeout=60)
    assert event["status"] == "failed"
    logs = capsys.readouterr().out
    writings = {"event": json.dumps(event), "logs": logs, "redis": run.dump()}
    escaped = html.escape(api_key)
    leaks = [where for where, text in writings.items() if escaped in text]
    assert not leaks, f"the API key (HTML-escaped) is in: {leaks}: {event['error']}"


# -- 4. the error excerpt cuts the key in half ---------------------------------------------------------------------


def test_api_key_cut_by_error_excerpt_leaks_its_prefix(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    api_key = f"ck-{secrets.token_hex(16)}"

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        # 300 bytes of excerpt: the key starts 20 bytes before the cut.
        text = "x" * 280 + "key=" + headers["x-cekura-api-key"] + " refused"
        return 400, [("Content-Type", "text/plain")], text.encode()

    fake.script = script
    run = start_run(_settings(_test_redis_url(), fake.url, api_key))
    job_id = run.client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="cut-key")
    event = run.client.wait(job_id, timeout=60)
    assert event["status"] == "failed"
    logs = capsys.readouterr().out
    prefix = api_key[:16]
    writings = {"event": json.dumps(event), "logs": logs, "redis": run.dump()}
    leaks = [where for where, text in writings.items() if prefix in text]
    assert not leaks, f"the first 16 characters of the API key are in: {leaks}: {event['error'][-40:]!r}"


# -- 5. one secret inside another ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_secret_that_contains_another_secret_is_only_partly_masked(
    system: System, fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """The Redis password is a prefix of the API key: masking the shorter one first leaves the rest of the key."""
    password = f"pw{secrets.token_hex(3)}"
    rest = secrets.token_hex(12)
    api_key = password + rest
    server = system.redis(password=password)

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        return json_reply(400, {"detail": f"key {headers['x-cekura-api-key']} is not valid for this project"})

    fake.script = script
    run = start_run(_settings(server.url, fake.url, api_key))
    job_id = run.client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="nested")
    event = run.client.wait(job_id, timeout=60)
    logs = capsys.readouterr().out
    assert event["status"] == "failed"
    writings = {"event": json.dumps(event), "logs": logs}
    leaks = [where for where, text in writings.items() if rest in text]
    assert not leaks, f"all of the API key but its first {len(password)} characters is in {leaks}: {event['error']}"


# -- 6. a progress payload that carries the key -----------------------------------------------------------------------


def _auto_fetch_script(stage: Any, then: dict[str, Any]) -> Script:
    polls = {"n": 0}

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            return json_reply(200, {"progress_id": "p-1"})
        polls["n"] += 1
        if polls["n"] == 1:
            return json_reply(200, {"status": "in_progress", "current_stage": stage(headers)})
        return json_reply(200, then)

    return script


def test_api_key_in_progress_stage_reaches_job_record_and_progress_event(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    api_key = f"ck-{secrets.token_hex(16)}"
    fake.script = _auto_fetch_script(lambda h: f"validating key {h['x-cekura-api-key']}", {"status": "completed"})
    run = start_run(_settings(_test_redis_url(), fake.url, api_key, cekura_progress_events=True))
    job_id = run.client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="stage-echo")
    event = run.client.wait(job_id, timeout=60)
    assert event["status"] == "completed"
    capsys.readouterr()
    progress = [_text(f) for _, f in run.raw.xrange("cekura:progress")]
    writings = {"job record": _text(run.raw.hgetall(f"cekura:job:{job_id}")), "progress events": " ".join(progress)}
    leaks = [where for where, text in writings.items() if api_key in text]
    assert not leaks, f"the API key is stored unredacted in: {leaks}"


def test_api_key_in_structured_progress_stage_reaches_logs(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """`_redact_values` masks only top-level str values; `job_progress` logs a non-string stage as it came."""
    api_key = f"ck-{secrets.token_hex(16)}"
    fake.script = _auto_fetch_script(
        lambda h: {"name": "auth", "detail": f"key {h['x-cekura-api-key']} checked"}, {"status": "completed"}
    )
    run = start_run(_settings(_test_redis_url(), fake.url, api_key))
    job_id = run.client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="nested-stage")
    event = run.client.wait(job_id, timeout=60)
    assert event["status"] == "completed"
    logs = capsys.readouterr().out
    leaked = [line for line in logs.splitlines() if api_key in line]
    assert not leaked, f"the API key is in log lines: {leaked}"


# -- 7. the provider api_key after its secret key is gone --------------------------------------------------------------


def test_provider_key_echoed_in_progress_payload_reaches_result_event(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """Secrets are deleted once the start call used them, so nothing can mask them in what the polls bring back."""
    provider_key = f"prov-{secrets.token_hex(16)}"
    seen: dict[str, str] = {}

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            seen["key"] = json.loads(body)["api_key"]
            return json_reply(200, {"progress_id": "p-1"})
        return json_reply(200, {"status": "failed", "error": f"the provider refused api key {seen['key']}"})

    fake.script = script
    run = start_run(_settings(_test_redis_url(), fake.url, f"ck-{secrets.token_hex(16)}"))
    params = {"agent_id": 6, "enabled": True, "api_key": provider_key}
    job_id = run.client.submit(TOGGLE, params, job_id="provider-echo")
    event = run.client.wait(job_id, timeout=60)
    assert event["status"] == "failed"
    logs = capsys.readouterr().out
    writings = {"event": json.dumps(event), "logs": logs, "redis": run.dump()}
    leaks = [where for where, text in writings.items() if provider_key in text]
    assert not leaks, f"the provider api_key is in: {leaks}: {event['error']}"


def test_provider_key_with_whitespace_is_not_masked_when_echoed_trimmed(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """The key is masked only as given (with its whitespace); Cekura quoting the trimmed key is not masked."""
    core = f"prov-{secrets.token_hex(16)}"

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        key = json.loads(body)["api_key"].strip()
        return json_reply(400, {"api_key": [f"{key} is not a valid provider key"]})

    fake.script = script
    run = start_run(_settings(_test_redis_url(), fake.url, f"ck-{secrets.token_hex(16)}"))
    params = {"agent_id": 6, "enabled": True, "api_key": f"  {core}\n"}
    job_id = run.client.submit(TOGGLE, params, job_id="provider-ws")
    event = run.client.wait(job_id, timeout=60)
    assert event["status"] == "failed"
    logs = capsys.readouterr().out
    writings = {"event": json.dumps(event), "logs": logs, "redis": run.dump()}
    leaks = [where for where, text in writings.items() if core in text]
    assert not leaks, f"the provider api_key is in: {leaks}: {event['error']}"


# -- 8. secrets shorter than redact's minimum ------------------------------------------------------------


@pytest.mark.parametrize("which", ["CEKURA_API_KEY", "provider api_key"])
def test_short_secret_is_accepted_and_never_masked(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any, which: str
) -> None:
    """Settings and params accept a 3-character secret, which `redact` then never masks (DEFAULT_MIN_SECRET_LEN)."""
    short = "Q7Z"
    # Refused where they enter, since a secret this short can't be masked without masking ordinary words.
    if which == "CEKURA_API_KEY":
        with pytest.raises(ConfigError) as refused:
            _settings(_test_redis_url(), fake.url, short)
        assert short not in str(refused.value) and "CEKURA_API_KEY" in str(refused.value)
    else:
        run = start_run(_settings(_test_redis_url(), fake.url, f"ck-{secrets.token_hex(16)}"))
        with pytest.raises(InvalidRequest) as refused:
            run.client.submit(TOGGLE, {"agent_id": 6, "enabled": True, "api_key": short}, job_id="short")
        assert short not in str(refused.value) and "api_key" in str(refused.value)


# -- 9. the CLI echoes a mistyped -p argument ------------------------------------------------------------


@pytest.mark.slow
def test_cli_usage_error_quotes_provider_key(system: System) -> None:
    """`-p api_key:VALUE` (':' for '=') makes argparse print the whole argument, key included, on stderr."""
    provider_key = f"prov-{secrets.token_hex(16)}"
    done = system.cli(
        {"REDIS_URL": "redis://127.0.0.1:1/0"},
        "submit", TOGGLE, "-p", "agent_id=6", "-p", "enabled=true", "-p", f"api_key:{provider_key}",
    )  # fmt: skip
    assert done.returncode != 0
    assert provider_key not in done.stdout + done.stderr, done.stderr


# -- 8. a provider key quoted by a progress error, across the excerpt's cut (issue 19, break 2) -----------------------


TOOLS = "agent.tools_auto_fetch"


def _pieces(secret: str, size: int = 12) -> list[str]:
    """Every run of `size` characters of `secret`: none of them may be written anywhere."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def test_provider_key_quoted_by_a_progress_error_across_the_excerpt_cut_is_masked(
    fake: FakeCekura, start_run: Callable[..., Run], capsys: Any
) -> None:
    """On main before the fix, the progress call did not know the job's secrets and cut the excerpt unmasked: 36 of
    the key's 40 characters reached the job's error, its event and the log."""
    provider_key = f"prov-{secrets.token_hex(18)}"[:40]

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        if method == "POST":
            return json_reply(200, {"progress_id": "p-cut"})
        text = "x" * 260 + "provider key " + provider_key + " was refused"  # the cut (300) falls inside the key
        return 400, [("Content-Type", "text/plain")], text.encode()

    fake.script = script
    run = start_run(_settings(_test_redis_url(), fake.url, f"ck-{secrets.token_hex(16)}"))
    params = {"agent_id": 6, "provider": "vapi", "api_key": provider_key}
    job_id = run.client.submit(TOOLS, params, job_id="progress-cut")
    event = run.client.wait(job_id, timeout=60)
    assert event["status"] == "failed" and "HTTP 400" in event["error"]
    logs = capsys.readouterr().out
    writings = {"event": json.dumps(event), "logs": logs, "redis": run.dump()}
    leaks = sorted({where for where, text in writings.items() for piece in _pieces(provider_key) if piece in text})
    assert not leaks, f"part of the provider api_key is in: {leaks}: {event['error'][-60:]!r}"


def test_an_answer_error_masks_the_jobs_secrets_and_a_cancel_error_quotes_nothing(fake: FakeCekura) -> None:
    """Every call made for a job masks that job's secrets: the answer call is given them; a remote cancel runs after
    the job's secrets are gone, so its error quotes no body at all."""
    from actors.kinds import KINDS
    from worker.cekura.client import CekuraClient
    from worker.errors import PermanentError

    provider_key = f"prov-{secrets.token_hex(16)}"

    def script(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        return 400, [("Content-Type", "text/plain")], ("y" * 290 + provider_key).encode()

    fake.script = script
    cekura = CekuraClient(_settings(_test_redis_url(), fake.url, f"ck-{secrets.token_hex(16)}"))
    try:
        with pytest.raises(PermanentError) as answered:
            cekura.answer(KINDS["scenario.generate"], "p-1", "an answer", secrets=(provider_key,))
        with pytest.raises(PermanentError) as cancelled:
            cekura.cancel(KINDS["metric.improve_from_feedback"], None, "12")
    finally:
        cekura.close()
    for error in (str(answered.value), str(cancelled.value)):
        assert not [piece for piece in _pieces(provider_key) if piece in error], error
    assert "not quoted" in str(cancelled.value)
