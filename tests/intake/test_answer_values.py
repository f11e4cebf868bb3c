"""An answer is checked, when it is submitted, by the very code that builds its body when it is delivered.

A metric improvement's answer that is a JSON object is sent as the answers keyed by question id; any other text
answers every question under `all` (`actors/kinds/rules.feedback_answers`). Its JSON obeys the rules of every
request value (`worker/intake/requests.py`): at most 64 levels of nesting, no NaN or Infinity, no number JSON can't
carry, no NUL or lone surrogate. Whatever that body builder refuses, it refuses with `InvalidRequest` naming what
is wrong, never with a RecursionError, and whatever it builds can be written as strict JSON.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from actors.kinds import KINDS
from actors.kinds.rules import feedback_answers
from worker.errors import InvalidRequest

#: 4,010 characters of nested JSON: deeper than the JSON parser goes (the answer of issue 19, break 3).
DEEP_ANSWER = '{"q1": ' + "[" * 2001 + "]" * 2001 + "}"

#: An object one level deeper than a request value may nest (the object itself is level 1).
TOO_DEEP_ANSWER = '{"q1": ' + "[" * 64 + "]" * 64 + "}"

#: (answer text, the problem its refusal names), each sent by every channel in tests/actors/test_attack_answers.py.
REFUSED: dict[str, tuple[str, str]] = {
    "nested_past_the_parser": (DEEP_ANSWER, "answer is nested too deeply (more than 64 levels)"),
    "nested_past_the_limit": (TOO_DEEP_ANSWER, "answer.q1 is nested too deeply (more than 64 levels)"),
    "overflowing_number": ('{"q1": 1e999}', "answer.q1 is out of range for a JSON number (beyond a 64-bit float)"),
    "overflowing_negative": (
        '{"q1": {"a": -2E+400}}',
        "answer.q1.a is out of range for a JSON number (beyond a 64-bit float)",
    ),
    "nan": ('{"q1": NaN}', "answer is not valid JSON: NaN is not a JSON number"),
    "infinity": ('{"q1": -Infinity}', "answer is not valid JSON: -Infinity is not a JSON number"),
    "huge_integer": ('{"q1": ' + "9" * 5000 + "}", "answer holds an integer of 5000 digits, over the 4300-digit limit"),
    "nul": ('{"q1": "a\\u0000b"}', "answer.q1 contains a NUL character"),
    "lone_surrogate": ('{"q1": "\\ud800"}', "answer.q1 contains a lone surrogate (invalid Unicode)"),
    "lone_surrogate_in_key": ('{"\\udfff": "yes"}', "answer contains a lone surrogate (invalid Unicode)"),
}


@pytest.mark.parametrize(("text", "problem"), list(REFUSED.values()), ids=list(REFUSED))
def test_a_metric_answer_json_cannot_carry_is_refused_by_its_body_builder_naming_the_problem(
    text: str, problem: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        feedback_answers("p-1", text)
    assert str(caught.value) == problem


@pytest.mark.parametrize(("text", "problem"), list(REFUSED.values()), ids=list(REFUSED))
def test_the_metric_kind_refuses_the_same_answers_when_asked_for_its_answer_request(text: str, problem: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        KINDS["metric.improve_from_feedback"].answer_request("p-1", text)
    assert str(caught.value) == problem


@pytest.mark.parametrize(
    ("text", "answers"),
    [
        ("skip the second question", {"all": "skip the second question"}),
        ('{"q1": "yes", "q2": {"action": "skip"}}', {"q1": "yes", "q2": {"action": "skip"}}),
        (' \n{"q1": ' + "[" * 63 + "]" * 63 + "}", {"q1": json.loads("[" * 63 + "]" * 63)}),
        (
            '{"q1": 12345678901234567890, "q2": 1e308, "q3": 1e-999}',
            {"q1": 12345678901234567890, "q2": 1e308, "q3": 0.0},
        ),
        ("{q1: yes}", {"all": "{q1: yes}"}),  # looks like an object, isn't JSON: text
        ('{"q1": "yes"} and more', {"all": '{"q1": "yes"} and more'}),
        ("[" * 5000 + "]" * 5000, {"all": "[" * 5000 + "]" * 5000}),  # not an object: text, never parsed
        ("NaN", {"all": "NaN"}),
        ("1e999", {"all": "1e999"}),
        ('"a quoted answer"', {"all": '"a quoted answer"'}),
    ],
    ids=[
        "plain_text",
        "object",
        "object_as_deep_as_allowed",
        "numbers_json_carries",
        "object_lookalike",
        "object_then_text",
        "deep_array",
        "nan_alone",
        "overflow_alone",
        "json_string",
    ],
)
def test_what_the_metric_kind_accepts_is_a_body_strict_json_can_write(text: str, answers: dict[str, Any]) -> None:
    body = KINDS["metric.improve_from_feedback"].answer_request("p-1", text)
    assert body == {"progress_id": "p-1", "answers": answers}
    json.dumps(body, allow_nan=False)  # what the Cekura client sends


def test_a_kind_that_sends_its_answer_as_text_takes_json_looking_text_verbatim() -> None:
    for text, _ in REFUSED.values():
        body = KINDS["scenario.generate"].answer_request("p-1", text)
        assert body == {"progress_id": "p-1", "answer": text}
