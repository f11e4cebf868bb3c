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


def invalid_progress_field(progress_id: str | None) -> Reply:
    """The 400 of a progress call for an unknown or missing id on the scenario and metric routes: a field map."""
    return field_error(400, "progress_id", "Invalid progress_id" if progress_id else "This field is required.")


def invalid_progress_detail(progress_id: str | None) -> Reply:
    """The 400 of a progress call for an unknown or missing id on the agent routes: `{"detail"}`."""
    return detail(400, "Invalid progress_id" if progress_id else "progress_id is required")
