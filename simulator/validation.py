"""Request-body checks of the simulated operations, reporting problems as the Cekura API's DRF serializers do."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from simulator.replies import JsonObject, Reply, dumps

#: A field check: the DRF-style error message for a value, or None when the value is valid.
Check = Callable[[Any], str | None]

EVAL_TYPES = frozenset({"boolean", "numeric", "rating", "enum"})
CONTEXT_ROLES = frozenset({"user", "assistant"})

_LIST_OF_INT_FIELDS = ("knowledge_base", "scenarios_needing_agent", "inbound_phone_numbers")
_NULLABLE_INT_FIELDS = ("agent_id", "project_id", "session_id")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_object(body: bytes) -> tuple[JsonObject | None, str]:
    """Decode a JSON object body; an empty body is an empty object. Returns (object, "") or (None, reason)."""
    if not body.strip():
        return {}, ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"JSON parse error - {exc}"
    if not isinstance(data, dict):
        return None, f"Invalid data. Expected a dictionary, but got {type(data).__name__}."
    return data, ""


def object_or_error(body: bytes) -> JsonObject | Reply:
    """Decode a start body that must be a JSON object; a problem is a 400 `{"non_field_errors": [...]}`."""
    data, problem = parse_object(body)
    if data is None:
        return 400, dumps({"non_field_errors": [problem]})
    return data


def _check(ok: Callable[[Any], bool], message: str) -> Check:
    def check(value: Any) -> str | None:
        if value is None:
            return "This field may not be null."
        return None if ok(value) else message

    return check


def nullable(check: Check) -> Check:
    """`check`, with null allowed."""
    return lambda value: None if value is None else check(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


INT = _check(is_int, "A valid integer is required.")
STR = _check(lambda v: isinstance(v, str), "Not a valid string.")
BOOL = _check(lambda v: isinstance(v, bool), "Must be a valid boolean.")
NUMBER = _check(_is_number, "A valid number is required.")
OBJECT = _check(lambda v: isinstance(v, dict), "Expected a dictionary of items.")
INT_LIST = _check(lambda v: isinstance(v, list) and all(is_int(i) for i in v), "Expected a list of integers.")
STR_LIST = _check(lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "Expected a list of strings.")


def int_between(low: int, high: int | None = None) -> Check:
    """An integer in [low, high] (no upper bound when high is None)."""

    def check(value: Any) -> str | None:
        problem = INT(value)
        if problem:
            return problem
        if value < low:
            return f"Ensure this value is greater than or equal to {low}."
        if high is not None and value > high:
            return f"Ensure this value is less than or equal to {high}."
        return None

    return check


def choice(values: Collection[Any]) -> Check:
    """One of `values` (DRF's ChoiceField message); compared with == so an unhashable value is simply invalid."""
    options = tuple(values)
    return lambda value: None if value in options else f'"{value}" is not a valid choice.'


def str_max(length: int) -> Check:
    """A string of at most `length` characters."""

    def check(value: Any) -> str | None:
        problem = STR(value)
        if problem:
            return problem
        return f"Ensure this field has no more than {length} characters." if len(value) > length else None

    return check


def checked_object(body: bytes, fields: Mapping[str, Check], required: Iterable[str] = ()) -> JsonObject | Reply:
    """A start body decoded (`object_or_error`), its fields checked (`check_fields`); a problem is the 400 to send."""
    data = object_or_error(body)
    if not isinstance(data, dict):
        return data
    errors = check_fields(data, fields, required)
    return (400, dumps(errors)) if errors else data


def check_fields(data: JsonObject, fields: Mapping[str, Check], required: Iterable[str] = ()) -> dict[str, list[str]]:
    """Field errors of `data` against `fields` (only the fields present are checked) and `required`."""
    errors: dict[str, list[str]] = {}
    for name in required:
        if name not in data:
            errors[name] = ["This field is required."]
    for name, check in fields.items():
        if name in data and name not in errors:
            problem = check(data[name])
            if problem:
                errors[name] = [problem]
    return errors


def validate_scenario_request(data: JsonObject) -> dict[str, list[str]]:
    """Field errors of a ScenarioAgentRequest, as the DRF serializer would report them; empty when valid."""
    errors: dict[str, list[str]] = {}
    for name in ("user_message", "agent_resolution_response"):
        if name in data and not isinstance(data[name], str):
            errors[name] = ["Not a valid string."]
    for name in _NULLABLE_INT_FIELDS:
        if data.get(name) is not None and not is_int(data[name]):
            errors[name] = ["A valid integer is required."]
    if "num_scenarios" in data:
        value = data["num_scenarios"]
        if not is_int(value):
            errors["num_scenarios"] = ["A valid integer is required."]
        elif value < 1:
            errors["num_scenarios"] = ["Ensure this value is greater than or equal to 1."]
    if "apply_changes" in data and not isinstance(data["apply_changes"], bool):
        errors["apply_changes"] = ["Must be a valid boolean."]
    for name in _LIST_OF_INT_FIELDS:
        if name in data and not (isinstance(data[name], list) and all(is_int(v) for v in data[name])):
            errors[name] = ["Expected a list of integers."]
    if "tool_ids" in data and not (
        isinstance(data["tool_ids"], list) and all(isinstance(v, str) for v in data["tool_ids"])
    ):
        errors["tool_ids"] = ["Expected a list of strings."]
    if "updated_scenarios" in data and not (
        isinstance(data["updated_scenarios"], list) and all(isinstance(v, dict) for v in data["updated_scenarios"])
    ):
        errors["updated_scenarios"] = ["Expected a list of objects."]
    pending = data.get("pending_tool_calls")
    if pending is not None and not (isinstance(pending, list) and all(isinstance(v, dict) for v in pending)):
        errors["pending_tool_calls"] = ["Expected a list of objects."]
    selections = data.get("agent_selections")
    if "agent_selections" in data and not (
        isinstance(selections, dict) and all(is_int(v) and v >= 1 for v in selections.values())
    ):
        errors["agent_selections"] = ["Expected an object mapping scenario ids to agent ids (integers >= 1)."]
    scenarios = data.get("scenarios")
    if scenarios is not None and not (
        is_int(scenarios) or scenarios == "all" or (isinstance(scenarios, list) and all(is_int(v) for v in scenarios))
    ):
        errors["scenarios"] = ['Expected a list of integers, an integer, or "all".']
    context = data.get("context")
    if context is not None:
        if not isinstance(context, list):
            errors["context"] = ["Expected a list of items."]
        else:
            for item in context:
                if not isinstance(item, dict):
                    errors["context"] = ["Each item must be an object with role and content."]
                    break
                if item.get("role") not in CONTEXT_ROLES:
                    errors["context"] = [f'"{item.get("role")}" is not a valid choice for role (user or assistant).']
                    break
                if not isinstance(item.get("content"), str):
                    errors["context"] = ["content: This field is required and must be a string."]
                    break
    return errors
