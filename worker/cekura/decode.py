"""Decoding Cekura's answers: the JSON object of a successful answer, or a `PermanentError` saying why not.

Any answer `json.loads` would choke on or decode into values nothing downstream can store is refused: not UTF-8,
nested too deeply, NaN or Infinity, integers of more than `DEFAULT_MAX_INT_DIGITS` digits (converting a long run
of digits costs time quadratic in its length), floats too large, unpaired UTF-16 surrogates, or not an object.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from worker.errors import PermanentError

#: How much of an error body (or a refusal's reason) is quoted in a job's `error` field.
DEFAULT_ERROR_EXCERPT = 300

#: Longest integer, in digits, accepted in an answer: ids and counts are far shorter.
DEFAULT_MAX_INT_DIGITS = 64

#: A JSON escape of a UTF-16 surrogate: only an answer holding one can decode to a string UTF-8 cannot encode.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode(body: bytes, path: str, status: int) -> dict[str, Any]:
    """The JSON object in a successful answer; anything else, however pathological, is a `PermanentError`."""
    try:
        # RFC 8259: JSON between systems is UTF-8 (json.loads would guess UTF-16 or -32); a BOM is tolerated.
        data = _DECODER.decode(body.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError:
        reason = "not UTF-8"
    except RecursionError:
        reason = "nested too deeply"
    except json.JSONDecodeError as exc:
        reason = f"not JSON ({exc.msg})"
    except ValueError as exc:  # from the hooks below: a value no consumer of the result could rely on
        reason = str(exc)[:DEFAULT_ERROR_EXCERPT]
    else:
        if not isinstance(data, dict):
            reason = "not a JSON object"
        elif b"\\u" in body and _SURROGATE_ESCAPE.search(body) is not None and not _encodable(data):
            reason = "a string holds an unpaired UTF-16 surrogate"
        else:
            return data
    raise PermanentError(f"invalid response from {path}: {reason}", status_code=status)


def _parse_int(digits: str) -> int:
    if len(digits) > DEFAULT_MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits")
    return int(digits)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("a number too large for a float")
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")  # json.loads accepts NaN and Infinity unless told not to


#: One decoder for every answer (json.loads with hooks would build a new one per call).
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant)


def _encodable(data: dict[str, Any]) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
