"""Every bad input is refused the same way wherever it comes from.

Through the real request stream (XADD, the intake consumer group, the results stream) each bad entry makes exactly
one `rejected` event whose `error` names the problem and the entry id, and nothing else happens; the Python client
and the CLI refuse the same inputs before sending anything, with the same message text.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest

from actors.kinds import KINDS
from config.settings import Settings, get_settings
from tests.support import REJECTED_EVENT_FIELDS
from worker.cli import EXIT_USAGE, main
from worker.client import Client
from worker.errors import InvalidRequest
from worker.intake.stream import Intake
from worker.runtime.app import Runtime

KNOWN_KINDS = ", ".join(sorted(KINDS))
JOB_ID_RULE = "job_id must be 1-128 characters of A-Z a-z 0-9 . _ : -"
DEADLINE_RANGE = "deadline_s must be between 1 and 86400 seconds"
DEADLINE_TYPE = "deadline_s must be a number of seconds"


@dataclass(frozen=True)
class Bad:
    """One bad request-stream entry and the problem its rejection must name (a regex, matched in full)."""

    fields: dict[str, bytes]
    problem: str
    job_id: str = ""  # the event's `requested_job_id` when the entry carries a usable one (its `job_id` is empty)
    kind: str = ""


def _json(value: Any) -> dict[str, bytes]:
    return {"request": json.dumps(value).encode()}


def _raw(data: bytes) -> dict[str, bytes]:
    return {"request": data}


def _p(text: str) -> str:
    return re.escape(text)


#: Deeper than any request may nest (`DEFAULT_MAX_DEPTH`), and than pydantic's serializer goes (255 levels).
DEEP = 900
TOO_DEEP = "params.updated_scenarios.steps is nested too deeply (more than 64 levels)"


def _nested(depth: int) -> list[Any]:
    """`depth` lists, one inside the other (built without recursion)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


LATIN1 = b'{"kind":"scenario.agent","params":{"user_message":"caf\xe9"}}'
CESU = b'{"kind":"scenario.agent","params":{"user_message":"\xed\xa0\x80"}}'  # a surrogate, UTF-8 encoded

BAD: dict[str, Bad] = {
    "no_request_field": Bad(
        {"payload": b'{"kind":"agent.auto_fetch","params":{"agent_id":5}}'}, _p("entry has no 'request' field")
    ),
    "invalid_json": Bad(_raw(b'{"kind": "agent.auto_fetch", "params": {'), r"request is not valid JSON: .+"),
    "empty_request": Bad(_raw(b""), r"request is not valid JSON: .+"),
    "not_json_at_all": Bad(_raw(b"auto_fetch agent 5"), r"request is not valid JSON: .+"),
    "json_array": Bad(_raw(b'[{"kind": "agent.auto_fetch"}]'), _p("request must be a JSON object, got array")),
    "json_string": Bad(_raw(b'"agent.auto_fetch"'), _p("request must be a JSON object, got string")),
    "json_number": Bad(_raw(b"42"), _p("request must be a JSON object, got number")),
    "json_null": Bad(_raw(b"null"), _p("request must be a JSON object, got null")),
    "nan_deadline": Bad(
        _raw(b'{"kind":"agent.auto_fetch","params":{"agent_id":5},"deadline_s":NaN}'),
        _p("request is not valid JSON: NaN is not a JSON number"),
        "",
        "agent.auto_fetch",
    ),
    "unknown_kind": Bad(
        _json({"kind": "agent.delete_all", "params": {}, "job_id": "b-kind"}),
        _p(f"unknown kind 'agent.delete_all'; known kinds: {KNOWN_KINDS}"),
        "b-kind",
        "agent.delete_all",
    ),
    "kind_not_a_string": Bad(_json({"kind": 5, "params": {}}), _p(f"unknown kind 5; known kinds: {KNOWN_KINDS}")),
    "no_kind": Bad(
        _json({"params": {"agent_id": 5}, "job_id": "b-nokind"}), _p("request needs 'kind' (or 'action')"), "b-nokind"
    ),
    "unknown_request_field": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "priority": 1, "job_id": "b-field"}),
        _p("unknown request field(s): 'priority'"),
        "b-field",
        "agent.auto_fetch",
    ),
    "unknown_action": Bad(
        _json({"action": "pause", "job_id": "b-action"}),
        _p("unknown action 'pause'; the actions are 'cancel' and 'answer'"),
        "b-action",
    ),
    "cancel_without_job_id": Bad(_json({"action": "cancel"}), _p("cancel needs 'job_id'")),
    "cancel_with_extra_field": Bad(
        _json({"action": "cancel", "job_id": "b-cx", "force": True}), _p("unknown field(s) for cancel: 'force'"), "b-cx"
    ),
    "missing_params": Bad(
        _json({"kind": "agent.auto_fetch", "params": {}, "job_id": "b-miss"}),
        _p("invalid params for agent.auto_fetch: agent_id: Field required"),
        "b-miss",
        "agent.auto_fetch",
    ),
    "no_params_at_all": Bad(
        _json({"kind": "agent.auto_fetch"}),
        _p("invalid params for agent.auto_fetch: agent_id: Field required"),
        "",
        "agent.auto_fetch",
    ),
    "several_missing_params": Bad(
        _json({"kind": "metric.clean_description", "params": {"agent": 1}}),
        _p(
            "invalid params for metric.clean_description: metric_description: Field required; eval_type: Field required"
        ),
        "",
        "metric.clean_description",
    ),
    "param_wrong_type": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": "5"}}),
        _p("invalid params for agent.auto_fetch: agent_id: Input should be a valid integer"),
        "",
        "agent.auto_fetch",
    ),
    "param_bool_wrong_type": Bad(
        _json({"kind": "agent.toggle_mock_tools", "params": {"agent_id": 5, "enabled": "yes"}}),
        _p("invalid params for agent.toggle_mock_tools: enabled: Input should be a valid boolean"),
        "",
        "agent.toggle_mock_tools",
    ),
    "param_not_in_choices": Bad(
        _json(
            {
                "kind": "metric.clean_description",
                "params": {"agent": 1, "metric_description": "d", "eval_type": "stars"},
            }
        ),
        _p(
            "invalid params for metric.clean_description: eval_type: Input should be 'boolean', 'numeric', "
            "'rating' or 'enum'"
        ),
        "",
        "metric.clean_description",
    ),
    "params_not_an_object": Bad(
        _json({"kind": "agent.auto_fetch", "params": [5]}),
        _p("params must be a JSON object, got array"),
        "",
        "agent.auto_fetch",
    ),
    "extra_unknown_param": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5, "force": True}}),
        _p("invalid params for agent.auto_fetch: force: unknown field"),
        "",
        "agent.auto_fetch",
    ),
    "job_id_too_long": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "j" * 129}),
        _p(JOB_ID_RULE),
        "",
        "agent.auto_fetch",
    ),
    "job_id_bad_characters": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "a b/c"}),
        _p(JOB_ID_RULE),
        "",
        "agent.auto_fetch",
    ),
    "job_id_empty": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": ""}),
        _p(JOB_ID_RULE),
        "",
        "agent.auto_fetch",
    ),
    "job_id_not_a_string": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": 42}),
        _p(JOB_ID_RULE),
        "",
        "agent.auto_fetch",
    ),
    "deadline_negative": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "deadline_s": -5}),
        _p(DEADLINE_RANGE),
        "",
        "agent.auto_fetch",
    ),
    "deadline_zero": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "deadline_s": 0}),
        _p(DEADLINE_RANGE),
        "",
        "agent.auto_fetch",
    ),
    "deadline_huge": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "deadline_s": 1e12}),
        _p(DEADLINE_RANGE),
        "",
        "agent.auto_fetch",
    ),
    "deadline_huge_integer": Bad(
        _raw(b'{"kind":"agent.auto_fetch","params":{"agent_id":5},"deadline_s":1' + b"0" * 400 + b"}"),
        _p(DEADLINE_RANGE),
        "",
        "agent.auto_fetch",
    ),
    "deadline_a_string": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "deadline_s": "60"}),
        _p(DEADLINE_TYPE),
        "",
        "agent.auto_fetch",
    ),
    "deadline_a_boolean": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "deadline_s": True}),
        _p(DEADLINE_TYPE),
        "",
        "agent.auto_fetch",
    ),
    "metadata_array": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "metadata": [1]}),
        _p("metadata must be a JSON object, got array"),
        "",
        "agent.auto_fetch",
    ),
    "metadata_string": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "metadata": "note"}),
        _p("metadata must be a JSON object, got string"),
        "",
        "agent.auto_fetch",
    ),
    "too_large": Bad(
        _json({"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "metadata": {"blob": "x" * 140_000}}),
        r"request is 1400\d\d bytes, over the 131072-byte limit",
        "",
        "",  # not even the kind: a request over the limit is never parsed
    ),
    "lone_surrogate_in_param": Bad(
        _raw(b'{"kind":"scenario.agent","params":{"user_message":"hi \\ud800"}}'),
        _p("params.user_message contains a lone surrogate (invalid Unicode)"),
        "",
        "scenario.agent",
    ),
    "lone_surrogate_in_key": Bad(
        _raw(b'{"kind":"scenario.agent","params":{},"metadata":{"\\udfff":1}}'),
        _p("metadata contains a lone surrogate (invalid Unicode)"),
        "",
        "scenario.agent",
    ),
    "nul_in_param": Bad(
        _raw(b'{"kind":"scenario.agent","params":{"user_message":"a\\u0000b"}}'),
        _p("params.user_message contains a NUL character"),
        "",
        "scenario.agent",
    ),
    "nul_in_metadata": Bad(
        _raw(b'{"kind":"scenario.agent","params":{},"metadata":{"note":"\\u0000"}}'),
        _p("metadata.note contains a NUL character"),
        "",
        "scenario.agent",
    ),
    "nested_too_deeply": Bad(
        _raw(
            b'{"kind":"scenario.agent","params":{"updated_scenarios":[{"steps":' + b"[" * DEEP + b"]" * DEEP + b"}]}}"
        ),
        _p(TOO_DEEP),
        "",
        "scenario.agent",
    ),
    "overflowing_number_in_metadata": Bad(
        _raw(b'{"kind":"agent.auto_fetch","params":{"agent_id":5},"metadata":{"score":1e999}}'),
        _p("metadata.score is out of range for a JSON number (beyond a 64-bit float)"),
        "",
        "agent.auto_fetch",
    ),
    "integer_of_too_many_digits": Bad(
        _raw(b'{"kind":"agent.auto_fetch","params":{"agent_id":5},"metadata":{"n":' + b"9" * 5000 + b"}}"),
        _p("request holds an integer of 5000 digits, over the 4300-digit limit"),
    ),
    "invalid_utf8": Bad(_raw(LATIN1), _p(f"request is not valid UTF-8 (byte {LATIN1.index(0xE9)})")),
    "utf8_encoded_surrogate": Bad(
        _raw(CESU), _p(f"request is not valid UTF-8 (byte {CESU.index(0xED)})"), "", "scenario.agent"
    ),
}


# -- helpers ------------------------------------------------------------------------------------------------------


def _results(rt: Runtime) -> list[dict[str, str]]:
    return [
        {"id": entry_id.decode(), **{k.decode(): v.decode() for k, v in fields.items()}}
        for entry_id, fields in rt.redis.xrange(rt.settings.cekura_results_stream)
    ]


def _handle_entry(rt: Runtime, fields: dict[str, bytes]) -> tuple[str, list[dict[str, str]]]:
    """XADD one entry, let the intake consumer handle it, and return (entry id, all result events)."""
    intake = Intake(rt, name="test-consumer")
    intake.ensure_group()
    entry_id = rt.redis.xadd(rt.settings.cekura_requests_stream, fields).decode()  # type: ignore[arg-type]
    assert intake.read_once() == 1
    return entry_id, _results(rt)


def _assert_nothing_else_happened(rt: Runtime) -> None:
    s = rt.settings
    assert rt.redis.keys(rt.store.job_prefix + "*") == []
    assert rt.redis.zcard(rt.store.schedule_key) == 0
    namespace = s.key("dramatiq")
    assert rt.redis.llen(f"{namespace}:{s.cekura_queue}") == 0
    assert rt.redis.zcard(f"{namespace}:{s.cekura_queue}.ZQ") == 0


def _stream_problem(rt: Runtime, fields: dict[str, bytes]) -> str:
    """The problem text the request stream gives for an entry (its error without the entry-id suffix)."""
    entry_id, events = _handle_entry(rt, fields)
    mine = [e for e in events if e.get("request_id") == entry_id]
    assert len(mine) == 1, events
    suffix = f" (request entry {entry_id})"
    assert mine[0]["error"].endswith(suffix)
    return mine[0]["error"][: -len(suffix)]


# -- through the request stream -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [pytest.param(case, id=name) for name, case in BAD.items()])
def test_a_bad_stream_entry_makes_one_rejected_event_naming_problem_and_entry(rt: Runtime, case: Bad) -> None:
    entry_id, events = _handle_entry(rt, case.fields)
    assert len(events) == 1, events
    event = events[0]
    assert event["status"] == "rejected"
    assert re.fullmatch(case.problem + re.escape(f" (request entry {entry_id})"), event["error"]), event["error"]
    assert event["request_id"] == entry_id
    assert event["job_id"] == ""  # a rejected request never became a job
    assert event["requested_job_id"] == case.job_id
    assert set(event) - {"id"} == REJECTED_EVENT_FIELDS
    assert event["kind"] == case.kind
    assert event["polls"] == "0"
    assert event["result"] == ""
    assert event["metadata"] == "{}"
    # acknowledged and deleted: nothing pending, nothing left in the request stream
    stream, group = rt.settings.cekura_requests_stream, rt.settings.cekura_intake_group
    assert rt.redis.xlen(stream) == 0
    assert rt.redis.xpending(stream, group)["pending"] == 0
    _assert_nothing_else_happened(rt)


def test_bad_entries_do_not_stop_the_worker_and_a_good_request_after_them_completes(
    rt: Runtime, worker: dramatiq.Worker, client: Client
) -> None:
    stream = rt.settings.cekura_requests_stream
    intake = Intake(rt, name="test-consumer")
    intake.start()
    try:
        bad_ids = [rt.redis.xadd(stream, case.fields).decode() for case in BAD.values()]  # type: ignore[arg-type]
        # a request nested too deeply for the JSON parser must not wedge the consumer either
        bad_ids.append(rt.redis.xadd(stream, {"request": b"[" * 5000 + b"]" * 5000}).decode())
        good = {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "good-after-bad"}
        rt.redis.xadd(stream, {"request": json.dumps(good)})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and rt.store.get("good-after-bad") is None:
            time.sleep(0.05)
        event = client.wait("good-after-bad", timeout=15)
    finally:
        intake.stop()
        intake.join(timeout=10)
    assert not intake.is_alive()
    assert event["status"] == "completed"
    events = list(client.results())
    rejected = [e for e in events if e["status"] == "rejected"]
    assert sorted(e["request_id"] for e in rejected) == sorted(bad_ids)  # exactly one each
    assert all(e["error"].endswith(f"(request entry {e['request_id']})") for e in rejected)
    assert [e["job_id"] for e in events if e["status"] != "rejected"] == ["good-after-bad"]
    assert rt.redis.xlen(stream) == 0
    assert rt.redis.xpending(stream, rt.settings.cekura_intake_group)["pending"] == 0


# -- the same inputs through the Python client and the CLI --------------------------------------------------------


@dataclass(frozen=True)
class Py:
    """A bad submission given as Python values (the arguments of `Client.submit`)."""

    kind: Any
    params: Any
    extra: dict[str, Any]


CLIENT_CASES = [
    pytest.param(Py("agent.delete_all", {}, {}), id="unknown_kind"),
    pytest.param(Py(5, {}, {}), id="kind_not_a_string"),
    pytest.param(Py("agent.auto_fetch", {}, {}), id="missing_params"),
    pytest.param(Py("metric.clean_description", {"agent": 1}, {}), id="several_missing_params"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": "5"}, {}), id="param_wrong_type"),
    pytest.param(Py("agent.toggle_mock_tools", {"agent_id": 5, "enabled": "yes"}, {}), id="param_bool_wrong_type"),
    pytest.param(Py("agent.auto_fetch", [5], {}), id="params_not_an_object"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5, "force": True}, {}), id="extra_unknown_param"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"job_id": "j" * 129}), id="job_id_too_long"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"job_id": "a b/c"}), id="job_id_bad_characters"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"job_id": ""}), id="job_id_empty"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"job_id": 42}), id="job_id_not_a_string"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"deadline_s": -5}), id="deadline_negative"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"deadline_s": 0}), id="deadline_zero"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"deadline_s": 1e12}), id="deadline_huge"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"deadline_s": 10**400}), id="deadline_huge_integer"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"deadline_s": "60"}), id="deadline_a_string"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"deadline_s": True}), id="deadline_a_boolean"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"metadata": [1]}), id="metadata_array"),
    pytest.param(Py("agent.auto_fetch", {"agent_id": 5}, {"metadata": "note"}), id="metadata_string"),
    pytest.param(Py("scenario.agent", {"user_message": "hi \ud800"}, {}), id="lone_surrogate_in_param"),
    pytest.param(Py("scenario.agent", {}, {"metadata": {"\udfff": 1}}), id="lone_surrogate_in_key"),
    pytest.param(Py("scenario.agent", {"user_message": "a\x00b"}, {}), id="nul_in_param"),
    pytest.param(Py("scenario.agent", {}, {"metadata": {"note": "\x00"}}), id="nul_in_metadata"),
    pytest.param(Py("scenario.agent", {"updated_scenarios": [{"steps": _nested(DEEP)}]}, {}), id="nested_too_deeply"),
]

#: Numbers a Python caller can give that JSON can't carry, and the problem the client names (the request stream
#: can't express NaN, nor an integer it could not parse: see BAD).
NUMBER_CASES = [
    pytest.param(
        Py("agent.auto_fetch", {"agent_id": 5}, {"metadata": {"score": float("nan")}}),
        "metadata.score is NaN, which is not a JSON number",
        id="nan_in_metadata",
    ),
    pytest.param(
        Py("scenario.agent", {"updated_scenarios": [{"id": 1, "weight": float("inf")}]}, {}),
        "params.updated_scenarios.weight is out of range for a JSON number (beyond a 64-bit float)",
        id="infinity_in_params",
    ),
    pytest.param(
        Py("agent.auto_fetch", {"agent_id": 5}, {"metadata": {"n": -(10**5000)}}),
        "metadata.n is an integer over the 4300-digit limit",
        id="huge_integer_in_metadata",
    ),
]


@pytest.mark.parametrize("case", CLIENT_CASES)
def test_the_client_refuses_what_the_stream_rejects_with_the_same_message(
    rt: Runtime, client: Client, case: Py
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.submit(case.kind, case.params, **case.extra)
    _assert_nothing_else_happened(rt)  # refused before sending anything
    request = {"kind": case.kind, "params": case.params, **case.extra}
    assert str(caught.value) == _stream_problem(rt, _json(request))


@pytest.mark.parametrize(("case", "problem"), NUMBER_CASES)
def test_the_client_refuses_numbers_that_json_cannot_carry_naming_where(
    rt: Runtime, client: Client, case: Py, problem: str
) -> None:
    # accepted, they would reach events and Cekura as NaN or Infinity, which no strict JSON reader takes
    with pytest.raises(InvalidRequest) as caught:
        client.submit(case.kind, case.params, **case.extra)
    assert str(caught.value) == problem
    _assert_nothing_else_happened(rt)


def test_the_client_refuses_structures_no_request_can_express_with_invalid_request(rt: Runtime, client: Client) -> None:
    # Python values can do what JSON text can't: refer to themselves, or share one value many times over.
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(InvalidRequest, match=r"^params\.updated_scenarios\.steps is nested too deeply"):
        client.submit("scenario.agent", {"updated_scenarios": [{"steps": circular}]})
    with pytest.raises(InvalidRequest, match=r"^metadata\.loop is nested too deeply"):
        client.submit("agent.auto_fetch", {"agent_id": 5}, metadata={"loop": circular})
    shared: list[Any] = ["x"]
    for _ in range(40):  # 2**40 values once expanded, but only 80 objects
        shared = [shared, shared]
    with pytest.raises(InvalidRequest, match=r"^request holds more than 131072 values, over the 131072-byte limit$"):
        client.submit("scenario.agent", {"updated_scenarios": [{"steps": shared}]})
    with pytest.raises(InvalidRequest, match=r"^each item must be a mapping of submit's arguments, got str$"):
        client.submit_many(["agent.auto_fetch"])  # type: ignore[list-item]
    _assert_nothing_else_happened(rt)


def test_a_request_nested_as_deeply_as_allowed_is_accepted_and_recorded(rt: Runtime, client: Client) -> None:
    # The depth limit counts from the request's fields: params (1), updated_scenarios (2), a scenario (3), steps (4).
    params = {"updated_scenarios": [{"steps": _nested(61)}]}
    client.submit("scenario.agent", params, job_id="deep-enough")
    assert (client.status("deep-enough") or {})["params"] == params
    with pytest.raises(InvalidRequest, match=f"^{re.escape(TOO_DEEP)}$"):
        client.submit("scenario.agent", {"updated_scenarios": [{"steps": _nested(62)}]})


def test_the_client_refuses_a_request_over_the_size_limit(rt: Runtime, client: Client) -> None:
    with pytest.raises(InvalidRequest, match=r"^request is \d+ bytes, over the 131072-byte limit$"):
        client.submit("agent.auto_fetch", {"agent_id": 5}, metadata={"blob": "x" * 140_000})
    _assert_nothing_else_happened(rt)


def test_submit_many_sends_nothing_when_one_item_is_bad(rt: Runtime, client: Client) -> None:
    items = [
        {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "many-ok"},
        {"kind": "agent.auto_fetch", "params": {"agent_id": "5"}, "job_id": "many-bad"},
    ]
    with pytest.raises(InvalidRequest, match="agent_id: Input should be a valid integer"):
        client.submit_many(items)
    _assert_nothing_else_happened(rt)


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads its settings from the environment: point it at the test Redis and the simulator."""
    monkeypatch.setenv("REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("CEKURA_API_URL", settings.cekura_api_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("argv", "request_value"),
    [
        (
            ["submit", "agent.auto_fetch", "-p", "agent_id=abc"],
            {"kind": "agent.auto_fetch", "params": {"agent_id": "abc"}},
        ),
        (["submit", "agent.delete_all"], {"kind": "agent.delete_all", "params": {}}),
        (
            ["submit", "agent.auto_fetch", "-p", "agent_id=5", "-p", "force=true"],
            {"kind": "agent.auto_fetch", "params": {"agent_id": 5, "force": True}},
        ),
        (
            ["submit", "agent.auto_fetch", "-p", "agent_id=5", "--job-id", "a b/c"],
            {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "a b/c"},
        ),
        (
            ["submit", "agent.auto_fetch", "-p", "agent_id=5", "--deadline", "-1"],
            {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "deadline_s": -1.0},
        ),
    ],
    ids=["param_wrong_type", "unknown_kind", "extra_unknown_param", "job_id_bad_characters", "deadline_negative"],
)
def test_the_cli_refuses_what_the_stream_rejects_with_the_same_message(
    rt: Runtime, cli_env: None, capsys: pytest.CaptureFixture[str], argv: list[str], request_value: dict[str, Any]
) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    _assert_nothing_else_happened(rt)
    problem = _stream_problem(rt, _json(request_value))
    assert err.strip() == f"cekura-worker: rejected: {problem}"


def test_the_same_job_id_check_guards_status_and_cancel(client: Client) -> None:
    for call in (client.status, client.cancel):
        with pytest.raises(InvalidRequest, match=re.escape(JOB_ID_RULE)):
            call("../etc/passwd")
