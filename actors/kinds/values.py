"""JSON values a job carries to Cekura: the rules every request value obeys, and every answer that is JSON.

One strict decoder (`loads`) and one bounded walk (`check_values`), shared by the intake, which checks a request's
values with them (worker/intake/requests.py), and by the answer bodies that parse an answer's text
(`rules.feedback_answers`), so an answer is checked when it is submitted by the very code that builds its body when
it is delivered: nothing accepted can fail to be sent. They live beside the kinds, not in the intake, because the
intake imports the kinds.

Every check is iterative and bounded (`DEFAULT_MAX_DEPTH` levels of nesting, no more values than the caller allows),
so no input can exhaust the stack or reach the depth at which pydantic's serializer gives up (255) once accepted;
and every number is one strict JSON can write back: no NaN or Infinity, no float past a 64-bit float's range, no
integer longer than Python converts to text (`DEFAULT_MAX_INT_DIGITS`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from worker.errors import InvalidRequest

#: How deeply objects and arrays may nest in a request's values: ample for any Cekura payload, far below the
#: 255 levels at which pydantic's serializer refuses to store params.
DEFAULT_MAX_DEPTH = 64

#: The longest integer, in digits, a value may hold: Python's default limit for converting an int to text, past
#: which `json.dumps` could not write it back (and reading one costs time quadratic in its length).
DEFAULT_MAX_INT_DIGITS = sys.int_info.default_max_str_digits

#: The smallest integer over `DEFAULT_MAX_INT_DIGITS` digits (compared, never converted to text).
_INT_BOUND = 10**DEFAULT_MAX_INT_DIGITS

#: What JSON counts as whitespace before a value (`str.strip()` would take more).
_JSON_SPACE = " \t\n\r"


class _Refused(ValueError):
    """Raised by the decoder's hooks for a number it will not decode; `loads` names what held it."""


def loads(text: str, what: str) -> Any:
    """Decode JSON text the one strict way: a NaN or Infinity, an integer of more than `DEFAULT_MAX_INT_DIGITS`
    digits, or nesting deeper than the parser goes raises `InvalidRequest` naming `what`; text that is not JSON
    raises `json.JSONDecodeError`. Check what it returns with `check_values` (a float past range decodes to inf)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_int)
    except RecursionError:
        raise InvalidRequest(f"{what} is nested too deeply (more than {DEFAULT_MAX_DEPTH} levels)") from None
    except _Refused as exc:
        raise InvalidRequest(f"{what} {exc}") from None


def json_object(text: str, what: str) -> dict[str, Any] | None:
    """`text` decoded and checked when it is a JSON object; None when it is not one (plain text, or JSON of another
    type, which is never parsed). Raises `InvalidRequest` naming the problem for an object JSON can't carry."""
    if not text.lstrip(_JSON_SPACE).startswith("{"):
        return None
    try:
        value = loads(text, what)
    except json.JSONDecodeError:
        return None  # it only looks like an object: text
    if not isinstance(value, dict):  # unreachable for text that starts with "{" and decodes
        return None
    check_values([(value, what)], max_values=len(text), what=what)  # each value takes at least one character
    return value


#: A value's location as a chain of (parent, name) links, turned into "params.a.b" only for an error message:
#: built eagerly, the names of a wide object under a long key would be copied once per child.
_Where = tuple[Any, str]


def check_values(roots: Iterable[tuple[Any, str]], *, max_values: int, what: str = "request") -> None:
    """Refuse NUL characters and lone surrogates in keys and strings, mapping keys that are not strings, numbers
    strict JSON can't write (NaN, infinities, integers over `DEFAULT_MAX_INT_DIGITS` digits), and objects and arrays
    nested more than `DEFAULT_MAX_DEPTH` deep; each root is a value and the name of where it sits.

    It walks with a list, not recursion, and stops after `max_values` values (a request's size limit in bytes:
    each value takes at least one), so neither a deep value nor a circular or shared structure from Python runs away.
    """
    stack: list[tuple[Any, _Where, int]] = [(value, (None, where), 1) for value, where in reversed(list(roots))]
    seen = len(stack)
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise InvalidRequest(f"{_name(where)} contains a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(f"{_name(where)} contains a lone surrogate (invalid Unicode)") from None
            continue
        if isinstance(value, float):
            if math.isnan(value):
                raise InvalidRequest(f"{_name(where)} is NaN, which is not a JSON number")
            if math.isinf(value):  # also a number in JSON text past a float's range: 1e999 decodes to inf
                raise InvalidRequest(f"{_name(where)} is out of range for a JSON number (beyond a 64-bit float)")
            continue
        if isinstance(value, int):
            if not -_INT_BOUND < value < _INT_BOUND:
                raise InvalidRequest(f"{_name(where)} is an integer over the {DEFAULT_MAX_INT_DIGITS}-digit limit")
            continue
        if not isinstance(value, Mapping | list | tuple):
            continue
        if depth > DEFAULT_MAX_DEPTH:
            raise InvalidRequest(f"{_name(where)} is nested too deeply (more than {DEFAULT_MAX_DEPTH} levels)")
        seen += 2 * len(value) if isinstance(value, Mapping) else len(value)
        if seen > max_values:
            raise InvalidRequest(f"{what} holds more than {max_values} values, over the {max_values}-byte limit")
        children: list[tuple[Any, _Where, int]] = []
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):  # json.dumps would write 1 and "1" as the same key: one value lost
                    raise InvalidRequest(f"{_name(where)} keys must be strings")
                child = (where, key) if key.isprintable() else where
                children += [(key, where, depth), (item, child, depth + 1)]
        else:
            children = [(item, where, depth + 1) for item in value]
        stack.extend(reversed(children))


def _name(where: _Where) -> str:
    names = []
    link: _Where | None = where
    while link is not None:
        link, name = link
        names.append(name)
    return ".".join(reversed(names))


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"is not valid JSON: {name} is not a JSON number")  # json.loads takes NaN unless told not to


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > DEFAULT_MAX_INT_DIGITS:
        raise _Refused(f"holds an integer of {digits} digits, over the {DEFAULT_MAX_INT_DIGITS}-digit limit")
    return int(text)
