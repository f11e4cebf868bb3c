"""The published event schemas (`schemas/`, `worker/schemas/`) say what the worker really does.

The committed files are exactly what `build_schemas()` generates; `schemas/asyncapi.yaml` is a valid AsyncAPI 3.0
document (checked against the official JSON Schema, vendored) naming the streams the settings default to; every
entry a real worker writes on the results and progress streams matches its schema; and the request schema refuses
the intake tests' bad requests (except those whose rule no JSON Schema can state, listed below with the reason) and
accepts good ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import dramatiq
import jsonschema
import pytest
import redis
import yaml
from referencing import Registry, Resource

from actors.kinds import KINDS, Outcome
from config.settings import Settings
from simulator import SimulatorHandle
from tests.actors.test_jobs import CASES
from tests.conftest import SIM_DURATION_S, make_settings
from tests.intake.test_requests import BAD, Bad
from tests.support import wait_for
from worker.client import Client
from worker.errors import InvalidRequest
from worker.intake import requests
from worker.intake.stream import Intake
from worker.runtime.app import Runtime
from worker.schemas import FILES, PACKAGE_DIR, build_schemas, main, render

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
ASYNCAPI = SCHEMAS / "asyncapi.yaml"
#: The official AsyncAPI 3.0.0 JSON Schema (see schemas/vendor/README.md for its source and version).
ASYNCAPI_SCHEMA = SCHEMAS / "vendor" / "asyncapi-3.0.0.json"

#: Bad requests refused before JSON Schema applies: the entry's shape, which the AsyncAPI message payload states
#: (one field, `request`, and nothing else).
REFUSED_BY_ENTRY_SHAPE = {"no_request_field"}
#: Bad requests whose `request` is not JSON text (the payload's `contentMediaType: application/json`): a JSON
#: Schema applies only to a parsed JSON value, so these are refused by parsing, as a JSON consumer would.
NOT_JSON = {
    "invalid_json",
    "empty_request",
    "not_json_at_all",
    "nan_deadline",
    "integer_of_too_many_digits",  # valid JSON text, but no Python consumer reads an integer of 5000 digits
    "invalid_utf8",
    "utf8_encoded_surrogate",
}
#: Bad requests the worker refuses by a rule no JSON Schema states; the schema accepts them (checked below).
BEYOND_JSON_SCHEMA = {
    "too_large": "a size limit on the whole request in bytes (CEKURA_REQUEST_MAX_BYTES) is no JSON Schema keyword",
    "nested_too_deeply": "the nesting depth of free-form values (metadata, updated_scenarios) is no JSON Schema "
    "keyword, short of spelling out 64 levels of schema",
    "nul_in_param": "the worker refuses NUL in every string and key, free-form ones included; a `pattern` on each "
    "string would not reach the keys and values of free-form objects, and the params models don't declare it",
    "nul_in_metadata": "as nul_in_param: metadata is a free-form object",
    "lone_surrogate_in_param": "a lone surrogate is valid JSON text (\\ud800) and a JSON Schema string; only the "
    "worker's UTF-8 check refuses it",
    "lone_surrogate_in_key": "as lone_surrogate_in_param, in an object key",
    "overflowing_number_in_metadata": "1e999 is valid JSON text and a JSON Schema number; only the worker's range "
    "check refuses it (it decodes to Infinity, which strict JSON can't write back)",
}

#: Requests outside the intake tests' table that the worker refuses and `jsonschema` accepts, and why.
SCHEMA_GAPS: dict[str, tuple[dict[str, Any], str]] = {
    "integral_float_for_an_int": (
        {"kind": "agent.auto_fetch", "params": {"agent_id": 5.0}},
        "JSON Schema's `integer` is any number with no fractional part, 5.0 included; the worker's strict params "
        "take only an integer literal",
    ),
    "job_id_with_a_final_newline": (
        {"action": "cancel", "job_id": "abc\n"},
        "the pattern's `$` ends the string in ECMA-262, which JSON Schema specifies, but Python's `re`, which "
        "`jsonschema` uses, lets `$` match before a final newline",
    ),
}

#: Requests the worker accepts, beyond one of each kind and outcome (`CASES`): each optional field set, at its
#: bounds, or null (which the worker reads as absent).
GOOD: dict[str, Any] = {
    "all_fields": {
        "kind": "agent.auto_fetch",
        "params": {"agent_id": 42},
        "job_id": "refresh-agent-42",
        "deadline_s": 600,
        "metadata": {"ticket": "OPS-7", "nested": {"list": [1, "two", None]}},
    },
    "deadline_at_the_minimum": {"kind": "agent.auto_fetch", "params": {"agent_id": 1}, "deadline_s": 1},
    "deadline_at_the_maximum": {"kind": "agent.auto_fetch", "params": {"agent_id": 1}, "deadline_s": 86400.0},
    "fractional_deadline": {"kind": "agent.auto_fetch", "params": {"agent_id": 1}, "deadline_s": 2.5},
    "nulls_for_optional_fields": {
        "kind": "agent.auto_fetch",
        "params": {"agent_id": 1},
        "job_id": None,
        "deadline_s": None,
        "metadata": None,
    },
    "longest_job_id": {"kind": "agent.auto_fetch", "params": {"agent_id": 1}, "job_id": "a.B_9:-" * 18 + "xx"},
    "scenario_without_params": {"kind": "scenario.agent"},
    "scenario_every_field": {
        "kind": "scenario.agent",
        "params": {
            "user_message": "more",
            "agent_id": 1,
            "project_id": None,
            "session_id": 7,
            "context": [{"role": "user", "content": "hi"}],
            "num_scenarios": 3,
            "knowledge_base": [1],
            "scenarios": "all",
            "apply_changes": True,
            "updated_scenarios": [{"id": 1}],
            "agent_selections": {"1": 2},
            "agent_resolution_response": "",
            "scenarios_needing_agent": [3],
            "pending_tool_calls": None,
            "tool_ids": ["t1"],
            "inbound_phone_numbers": [15550100],
        },
    },
    "scenarios_as_one_id": {"kind": "scenario.agent", "params": {"scenarios": 4}},
    "toggle_with_api_key": {
        "kind": "agent.toggle_mock_tools",
        "params": {"agent_id": 6, "enabled": False, "api_key": "prov-key-xyz"},
    },
    "nested_as_deeply_as_allowed": {
        "kind": "scenario.agent",
        "params": {"updated_scenarios": [{"steps": json.loads("[" * 61 + "]" * 61)}]},
    },
    "cancel": {"action": "cancel", "job_id": "refresh-agent-42"},
}


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(build_schemas()[name])


def _errors(name: str, instance: Any) -> list[str]:
    return [error.message for error in _validator(name).iter_errors(instance)]


def _content_errors(schema: dict[str, Any], entry: dict[str, str]) -> list[str]:
    """What `contentMediaType: application/json` and `contentSchema` say, which jsonschema only annotates: each such
    non-empty field is JSON, matching its `contentSchema` when there is one."""
    found = []
    branches = [schema, *schema.get("$defs", {}).values()]
    for branch in branches:
        for field, spec in branch.get("properties", {}).items():
            if spec.get("contentMediaType") != "application/json" or not entry.get(field):
                continue
            try:
                value = json.loads(entry[field])
            except ValueError as exc:
                found.append(f"{field} is not JSON: {exc}")
                continue
            if "contentSchema" in spec and not jsonschema.Draft202012Validator(spec["contentSchema"]).is_valid(value):
                found.append(f"{field} does not match its contentSchema")
    return found


def _entries(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    return [{key.decode(): value.decode() for key, value in fields.items()} for _, fields in client.xrange(stream)]


def _parse_as_json(data: bytes) -> Any:
    """A request's text as a strict JSON consumer reads it: UTF-8, and no NaN or Infinity."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


# -- the committed files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [SCHEMAS, PACKAGE_DIR], ids=["repository", "package"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_the_committed_schema_files_are_the_ones_build_schemas_generates(folder: Path, name: str) -> None:
    path = folder / FILES[name]
    assert path.read_text() == render(build_schemas()[name]), f"{path} is stale: run `python -m worker.schemas`"


def test_the_schema_command_checks_and_rewrites_the_files(tmp_path: Path) -> None:
    assert main(["--check", str(SCHEMAS), str(PACKAGE_DIR)]) == 0
    assert main(["--check", str(tmp_path)]) == 1
    assert main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES.values())
    assert main(["--check", str(tmp_path)]) == 0


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = build_schemas()[name]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_request_schema_takes_its_bounds_from_the_worker() -> None:
    schema = build_schemas()["request"]
    defaults = Settings.model_fields
    for name in KINDS:
        submit = schema["$defs"][schema["oneOf"][0]["discriminator"]["mapping"][name].rpartition("/")[2]]
        job_id, deadline = submit["properties"]["job_id"]["anyOf"][0], submit["properties"]["deadline_s"]["anyOf"][0]
        assert job_id["pattern"] == f"^{requests.JOB_ID_PATTERN.pattern}$"
        assert deadline["minimum"] == requests.DEFAULT_MIN_DEADLINE_S
        assert deadline["maximum"] == defaults["cekura_job_deadline_max_s"].default


# -- the AsyncAPI document ----------------------------------------------------------------------------------------


def _asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text())
    return document


def _asyncapi_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))


def test_the_asyncapi_document_is_valid_asyncapi_3() -> None:
    document = _asyncapi()
    assert document["asyncapi"] == "3.0.0"
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in _asyncapi_validator().iter_errors(document)]
    assert errors == []


def test_the_vendored_asyncapi_schema_catches_a_broken_document() -> None:
    document = _asyncapi()
    document["operations"]["sendResult"]["action"] = "publish"  # AsyncAPI 2's word, not 3's
    del document["channels"]["results"]["address"]
    document["channels"]["results"]["adress"] = "cekura:results"
    assert not _asyncapi_validator().is_valid(document)


def test_the_asyncapi_document_names_the_default_streams_and_directions() -> None:
    document = _asyncapi()
    defaults = Settings.model_fields
    channels = document["channels"]
    assert {name: channel["address"] for name, channel in channels.items()} == {
        "requests": defaults["cekura_requests_stream"].default,
        "results": defaults["cekura_results_stream"].default,
        "progress": defaults["cekura_progress_stream"].default,
    }
    directions = {op["channel"]["$ref"]: op["action"] for op in document["operations"].values()}
    assert directions == {"#/channels/requests": "receive", "#/channels/results": "send", "#/channels/progress": "send"}
    assert [server["protocol"] for server in document["servers"].values()] == ["redis"]


def test_every_reference_in_the_asyncapi_document_resolves_and_payloads_use_the_generated_schemas() -> None:
    document = _asyncapi()
    refs: list[str] = []
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            refs += [node["$ref"]] if "$ref" in node else []
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    files = {ref for ref in refs if not ref.startswith("#")}
    assert files == {f"./{name}" for name in FILES.values()}
    assert all((SCHEMAS / ref).is_file() for ref in files)
    for ref in refs:
        if ref.startswith("#"):
            node = document
            for part in ref.removeprefix("#/").split("/"):
                node = node[part]  # a KeyError names a dangling reference
    messages = document["components"]["messages"]
    for name in ("result", "progress"):
        assert messages[name]["payload"]["schema"] == {"$ref": f"./{FILES[name]}"}
    request = messages["request"]["payload"]["schema"]
    assert request["properties"]["request"]["contentSchema"] == {"$ref": f"./{FILES['request']}"}


def _request_entry_validator() -> jsonschema.Draft202012Validator:
    """The AsyncAPI request message's payload (a stream entry: one field, `request`), its `$ref` resolved."""
    resource = Resource.from_contents(build_schemas()["request"])
    registry: Registry[Any] = Registry().with_resource(f"./{FILES['request']}", resource)
    payload = _asyncapi()["components"]["messages"]["request"]["payload"]["schema"]
    return jsonschema.Draft202012Validator(payload, registry=registry)


# -- requests -----------------------------------------------------------------------------------------------------


def test_the_bad_request_lists_name_only_cases_of_the_intake_tests() -> None:
    named = REFUSED_BY_ENTRY_SHAPE | NOT_JSON | set(BEYOND_JSON_SCHEMA)
    assert named <= set(BAD), named - set(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_bad_request_is_refused_by_the_schema_where_a_schema_can_state_the_rule(name: str) -> None:
    case: Bad = BAD[name]
    fields = {key: value.decode("utf-8", "surrogateescape") for key, value in case.fields.items()}
    entry_errors = list(_request_entry_validator().iter_errors(fields))
    if name in REFUSED_BY_ENTRY_SHAPE:
        assert entry_errors, "the AsyncAPI payload schema should refuse this entry"
        return
    assert entry_errors == []
    if name in NOT_JSON:
        with pytest.raises(ValueError):
            _parse_as_json(case.fields["request"])
        return
    request = _parse_as_json(case.fields["request"])
    if name in BEYOND_JSON_SCHEMA:
        assert _errors("request", request) == [], "the schema refuses it now: take it off BEYOND_JSON_SCHEMA"
    else:
        assert _errors("request", request), f"the schema accepts {request!r:.200}"


@pytest.mark.parametrize(
    "request_value",
    [pytest.param({"kind": kind, "params": params}, id=f"{kind}-{outcome}") for kind, params, outcome, _ in CASES]
    + [pytest.param(value, id=name) for name, value in GOOD.items()],
)
def test_every_good_request_is_accepted_by_the_schema_and_the_worker(request_value: dict[str, Any]) -> None:
    text = json.dumps(request_value)
    settings = make_settings("http://127.0.0.1:9")
    requests.parse(text, settings)  # raises InvalidRequest if the case is not good after all
    assert _errors("request", request_value) == []
    assert list(_request_entry_validator().iter_errors({"request": text})) == []


@pytest.mark.parametrize("name", sorted(SCHEMA_GAPS))
def test_the_known_gaps_between_schema_and_worker_are_still_gaps(name: str) -> None:
    request, _why = SCHEMA_GAPS[name]
    with pytest.raises(InvalidRequest):
        requests.parse(json.dumps(request), make_settings("http://127.0.0.1:9"))
    assert _errors("request", request) == [], "the schema refuses it now: take it off SCHEMA_GAPS"


def test_the_schema_and_the_worker_agree_on_a_job_id_of_129_characters() -> None:
    request = {"action": "cancel", "job_id": "j" * 129}
    with pytest.raises(InvalidRequest):
        requests.parse(json.dumps(request), make_settings("http://127.0.0.1:9"))
    assert _errors("request", request)


# -- events from a real worker ------------------------------------------------------------------------------------


@pytest.fixture
def settings(sim: SimulatorHandle, redis_client: redis.Redis) -> Settings:
    """The shared fixture's settings, with progress events on."""
    sim.reset()
    sim.clear_faults()
    sim.configure(duration_s=SIM_DURATION_S, polls_to_complete=None, rate_limit_rps=0)
    return make_settings(sim.url, cekura_progress_events=True)


@pytest.fixture
def intake(rt: Runtime) -> Iterator[Intake]:
    thread = Intake(rt, name="schema-consumer")
    thread.start()
    yield thread
    thread.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_every_event_a_real_worker_publishes_matches_its_schema(
    rt: Runtime, worker: dramatiq.Worker, client: Client, intake: Intake
) -> None:
    s = rt.settings
    # every kind and outcome, through the client ...
    job_ids = [
        client.submit(kind, cast(dict[str, Any], params), metadata={"case": kind}) for kind, params, _, _ in CASES
    ]
    job_ids.append(client.submit("agent.auto_fetch", {"agent_id": 777}, deadline_s=1))  # never ends: timed_out
    hanging = client.submit("scenario.agent", {"user_message": "x [hang]"})
    # ... and through the request stream: good requests, a cancel, and every bad entry
    stream_jobs = {f"stream-{i}": request for i, request in enumerate(GOOD.values()) if "kind" in request}
    for job_id, request in stream_jobs.items():
        rt.redis.xadd(s.cekura_requests_stream, {"request": json.dumps({**request, "job_id": job_id})})
    job_ids += list(stream_jobs)
    bad_ids = [rt.redis.xadd(s.cekura_requests_stream, case.fields).decode() for case in BAD.values()]
    wait_for(lambda: (rt.store.get(hanging) or {}).get("state") == "polling", timeout=10, what="the hanging job")
    rt.redis.xadd(s.cekura_requests_stream, {"request": json.dumps({"action": "cancel", "job_id": hanging})})
    job_ids.append(hanging)
    for job_id in job_ids:
        client.wait(job_id, timeout=20)
    wait_for(lambda: rt.redis.xlen(s.cekura_requests_stream) == 0, timeout=10, what="the request stream to drain")

    results = _entries(rt.redis, s.cekura_results_stream)
    progress = _entries(rt.redis, s.cekura_progress_stream)
    schemas = build_schemas()
    for name, entries in (("result", results), ("progress", progress)):
        validator = jsonschema.Draft202012Validator(schemas[name])
        for entry in entries:
            problems = [e.message for e in validator.iter_errors(entry)] + _content_errors(schemas[name], entry)
            assert problems == [], (name, entry)

    # the run covered what the schemas describe
    assert {e["status"] for e in results} == {o.value for o in Outcome}
    assert {e["kind"] for e in results if e["job_id"]} == set(KINDS)
    assert sorted(e["request_id"] for e in results if e["status"] == "rejected") == sorted(bad_ids)
    assert {e["job_id"] for e in results if e["job_id"]} == set(job_ids)
    assert progress and any(e["current_stage"] for e in progress)
    assert {e["kind"] for e in progress} >= {"agent.auto_fetch", "scenario.agent"}
