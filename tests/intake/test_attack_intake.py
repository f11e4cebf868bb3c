"""Adversarial reproductions against the request-stream guarantee: "bad input gets a clear error and loses nothing:
every malformed request becomes exactly one `rejected` result event whose `error` says what is wrong and names the
entry, the worker keeps going, valid requests behind it are handled promptly, memory stays bounded, and a rejected
request never affects another job" (and the client / CLI give a clean `InvalidRequest` / usage error instead).

Each test asserts the guarantee and fails while the defect it names exists.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest

from config.settings import Settings, get_settings
from worker.cli import main
from worker.client import Client
from worker.errors import InvalidRequest
from worker.intake.stream import Intake
from worker.runtime.app import Runtime


def _intake(rt: Runtime, name: str = "attack-consumer") -> Intake:
    intake = Intake(rt, name=name)
    intake.ensure_group()
    return intake


def _xadd_raw(rt: Runtime, fields: dict[str, Any]) -> str:
    return rt.redis.xadd(rt.settings.cekura_requests_stream, fields).decode()  # type: ignore[no-any-return]


def _compact(value: Any, *, ascii_only: bool = True) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only).encode("utf-8")


def _rejected(client: Client) -> list[dict[str, str]]:
    return [e for e in client.results() if e["status"] == "rejected"]


# -- size limit: measured on a re-serialisation, not on the entry ---------------------------------------------------


def test_a_valid_request_exactly_at_the_byte_limit_is_accepted_and_completes(
    rt: Runtime, worker: dramatiq.Worker, client: Client
) -> None:
    # Compact JSON, exactly CEKURA_REQUEST_MAX_BYTES bytes on the stream, no deadline_s: the README rejects a
    # request *over* the limit, so this one must be accepted. build() re-measures a re-serialisation that adds
    # '"deadline_s":null' (and, with no job_id, '"job_id":"req-<entry>"') and rejects it as 65552 bytes.
    limit = rt.settings.cekura_request_max_bytes
    request: dict[str, Any] = {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "at-limit"}
    request["metadata"] = {"pad": ""}
    request["metadata"]["pad"] = "a" * (limit - len(_compact(request)))
    payload = _compact(request)
    assert len(payload) == limit
    entry = _xadd_raw(rt, {"request": payload})
    assert _intake(rt).read_once() == 1
    assert _rejected(client) == [], f"entry {entry} of exactly {limit} bytes was rejected"
    assert client.wait("at-limit", timeout=15)["status"] == "completed"


def test_a_non_ascii_request_well_under_the_byte_limit_is_accepted_and_completes(
    rt: Runtime, worker: dramatiq.Worker, client: Client
) -> None:
    # 15,000 x "é" is 30 KB of UTF-8 on the stream: under half the 64 KiB limit. build() re-serialises with
    # json.dumps' default ensure_ascii=True ("\\u00e9", 6 bytes each) and rejects it as ~90 KB.
    request = {"kind": "scenario.agent", "params": {"user_message": "é" * 15_000}, "job_id": "accented"}
    payload = _compact(request, ascii_only=False)
    assert len(payload) < rt.settings.cekura_request_max_bytes // 2
    _xadd_raw(rt, {"request": payload})
    assert _intake(rt).read_once() == 1
    rejected = _rejected(client)
    assert rejected == [], f"a {len(payload)}-byte entry was rejected: {rejected[0]['error'][:120]}"
    assert client.wait("accented", timeout=15)["status"] == "completed"


# -- a cancel naming a key that holds something other than a job -----------------------------------------------------


def test_a_stream_cancel_naming_a_key_that_is_not_a_job_is_rejected_once(rt: Runtime, client: Client) -> None:
    # A submit with this job_id is rejected ("its key in Redis holds something other than a job"); the cancel is
    # instead reported as `cancelled` (and counted in JOBS_FINISHED{kind=""}), with no event at all.
    rt.redis.set(rt.store.job_key("not-a-job"), "another program's string")
    entry = _xadd_raw(rt, {"request": json.dumps({"action": "cancel", "job_id": "not-a-job"})})
    assert _intake(rt).read_once() == 1
    events = list(client.results())
    assert [(e["status"], e["request_id"], e["requested_job_id"]) for e in events] == [
        ("rejected", entry, "not-a-job")
    ], events
    assert rt.redis.get(rt.store.job_key("not-a-job")) == b"another program's string"


def test_client_cancel_of_a_key_that_is_not_a_job_does_not_report_it_cancelled(rt: Runtime, client: Client) -> None:
    rt.redis.set(rt.store.job_key("not-a-job"), "another program's string")
    try:
        outcome = client.cancel("not-a-job")
    except InvalidRequest:
        return  # a clean refusal, like submit gives, is fine
    assert outcome.result != "cancelled", outcome


# -- the Python client with values that are not JSON ----------------------------------------------------------------


class _Unprintable(str):
    def __repr__(self) -> str:
        raise RuntimeError("repr boom")

    def __str__(self) -> str:
        raise RuntimeError("str boom")


class _Opaque:
    def __repr__(self) -> str:
        raise RuntimeError("repr boom")

    def __str__(self) -> str:
        raise RuntimeError("str boom")


@pytest.mark.parametrize("kind", [_Opaque(), _Unprintable("agent.nope")], ids=["object", "str_subclass"])
def test_client_submit_with_a_kind_whose_repr_raises_gives_invalid_request(
    rt: Runtime, client: Client, kind: Any
) -> None:
    with pytest.raises(InvalidRequest):
        client.submit(kind, {"agent_id": 5})
    assert rt.redis.keys(rt.store.job_prefix + "*") == []


def test_client_refuses_metadata_whose_keys_collide_once_serialised(rt: Runtime, client: Client) -> None:
    # {1: "a", "1": "b"} is no JSON object; it is accepted and recorded as '{"1":"a","1":"b"}', which every
    # reader (json.loads in Client.status/results consumers) reads back as {"1": "b"}: "a" is silently lost.
    metadata = {1: "a", "1": "b"}
    try:
        job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, metadata=metadata, job_id="colliding-keys")
    except InvalidRequest:
        return
    view = client.status(job_id)
    assert view is not None
    assert len(view["metadata"]) == len(metadata), f"echoed metadata lost a value: {view['metadata']}"


# -- the CLI's -p KEY=VALUE and JSON options with hostile values ----------------------------------------------------


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("CEKURA_API_URL", settings.cekura_api_url)
    monkeypatch.setenv("CEKURA_API_KEY", "sim-key")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "scenario.agent", "-p", "user_message=" + "[" * 3000],
        ["submit", "scenario.agent", "--params-json", "[" * 3000],
        ["submit", "scenario.agent", "--metadata", "[" * 3000],
    ],
    ids=["param", "params_json", "metadata"],
)
def test_the_cli_answers_a_deeply_nested_value_with_a_clean_error(rt: Runtime, cli_env: None, argv: list[str]) -> None:
    # json.loads raises RecursionError (not ValueError): argparse lets it through as a traceback.
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage error: clean
        code = exc.code
    except RecursionError as exc:
        pytest.fail(f"the CLI crashed with a traceback: {exc!r}")
    assert code in (0, 2)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_the_cli_reads_a_non_json_word_as_text(rt: Runtime, cli_env: None, text: str) -> None:
    # README: "-p KEY=VALUE reads VALUE as JSON when it parses, else as text". NaN/Infinity are not JSON, but
    # Python's json.loads accepts them, so the text is turned into a float and the submission is refused.
    argv = [
        "submit",
        "metric.clean_description",
        "-p",
        "agent=1",
        "-p",
        f"metric_description={text}",
        "-p",
        "eval_type=boolean",
        "--job-id",
        "cli-text",
    ]
    assert main(argv) == 0
    job = rt.store.get("cli-text")
    assert job is not None
    assert json.loads(job["params"])["metric_description"] == text


# -- entries that are not one `request` field -------------------------------------------------------------------------


def test_an_entry_with_fields_besides_request_is_rejected_not_silently_trimmed(rt: Runtime, client: Client) -> None:
    # README: "XADD one field, request". A producer that puts its idempotency key in a stream field of its own
    # gets a job under a generated id (req-<entry>) and no word that `job_id` was ignored.
    good = {"kind": "agent.auto_fetch", "params": {"agent_id": 5}}
    entry = _xadd_raw(rt, {"request": json.dumps(good), "job_id": "order-1"})
    assert _intake(rt).read_once() == 1
    rejected = _rejected(client)
    assert [e["request_id"] for e in rejected] == [entry], (
        "an entry with an unknown field was accepted: "
        f"jobs {sorted(k.decode() for k in rt.redis.keys(rt.store.job_prefix + '*'))}"
    )


# -- memory ---------------------------------------------------------------------------------------------------------


def test_a_burst_of_oversized_entries_is_not_read_into_memory_all_at_once(rt: Runtime, client: Client) -> None:
    # Each entry is rejected unparsed, but XREADGROUP COUNT 100 brings all of them (and any extra fields, which
    # are never size-checked) into one reply: memory grows with what producers send, not with the limit.
    stream = rt.settings.cekura_requests_stream
    entry_bytes = 8 * 1024 * 1024
    count = 24
    blob = b"x" * entry_bytes
    pipe = rt.redis.pipeline(transaction=False)
    for _ in range(count):
        pipe.xadd(stream, {"request": blob})
    pipe.execute()
    del blob
    intake = _intake(rt)
    tracemalloc.start()
    try:
        handled = intake.read_once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handled == count
    assert len(_rejected(client)) == count
    bound = 32 * 1024 * 1024  # ~100 entries x 64 KiB with room to spare: bounded by the limit, not the input
    assert peak < bound, f"reading {count} oversized entries peaked at {peak / 2**20:.0f} MiB of Python memory"
