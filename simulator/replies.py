"""JSON answers shared by the simulated operations and the HTTP layer: the reply type, the encoder, error bodies."""

from __future__ import annotations

import json
from typing import Any

Reply = tuple[int, bytes]
JsonObject = dict[str, Any]

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call


def dumps(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


def detail(status: int, message: str) -> Reply:
    """A DRF-style error: `{"detail": message}`."""
    return status, dumps({"detail": message})


def field_error(status: int, field: str, message: str) -> Reply:
    """A DRF-style field map with one error: `{field: [message]}`."""
    return status, dumps({field: [message]})
