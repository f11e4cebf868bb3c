"""What a job kind is: the declaration that maps one Cekura start/progress operation onto this service.

A kind names its paths, its params model and its status table; the actors hold all control flow, so a new
Cekura operation is one small file in this folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from worker.redact import DEFAULT_MIN_SECRET_LEN


class Outcome(StrEnum):
    """How a job ended; the `status` field of its result event."""

    COMPLETED = "completed"
    FAILED = "failed"
    NEEDS_INPUT = "needs_input"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"


class Params(BaseModel):
    """Base of every kind's params: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def check_secret(cls: type, value: SecretStr | None) -> SecretStr | None:
    """A params validator for secret fields: surrounding whitespace stripped, then printable and long enough to be
    masked wherever Cekura might echo it. Its messages never show the value."""
    if value is None:
        return None
    secret = value.get_secret_value().strip()
    if not secret.isprintable():
        raise ValueError("must not contain control characters (the value is not shown)")
    if len(secret) < DEFAULT_MIN_SECRET_LEN:
        raise ValueError(f"must be at least {DEFAULT_MIN_SECRET_LEN} characters (the value is not shown)")
    return SecretStr(secret)


def _json_body(params: BaseModel) -> dict[str, Any]:
    """The start body: the params as given, secrets revealed (they are meant for Cekura)."""
    body = params.model_dump(mode="python", exclude_unset=True)
    return {key: (value.get_secret_value() if isinstance(value, SecretStr) else value) for key, value in body.items()}


@dataclass(frozen=True, slots=True)
class JobKind:
    """One Cekura asynchronous operation.

    `start_path` and `progress_path` are formatted with the params' integer fields only (see `path_ids`), so
    no request field can change the host or the path beyond its ids.
    """

    name: str
    params: type[Params]
    start_path: str
    progress_path: str
    #: Cekura status word -> terminal outcome; any other word means "still running".
    terminal: Mapping[str, Outcome]
    #: Status words that mean "still running"; any other non-terminal word is logged as unexpected.
    running: frozenset[str] = frozenset({"in_progress"})
    #: The JSON body of the start call, or None to send no body at all.
    start_body: Callable[[Any], dict[str, Any] | None] = _json_body
    #: The progress field holding the current stage, for kinds that report stages.
    stage_field: str | None = None
    #: Path of the cancel endpoint, taking `{"session_id": int}`; None when Cekura has none.
    cancel_path: str | None = None
    #: Params fields that are secrets: kept out of job state, logs and events.
    secret_fields: frozenset[str] = field(default_factory=frozenset)
    #: Params fields substituted into the paths; each must be an int.
    path_ids: tuple[str, ...] = ()

    def validate(self, raw: Mapping[str, Any]) -> Params:
        """Validate raw params into the kind's model (raises pydantic.ValidationError)."""
        return self.params.model_validate(dict(raw))

    def paths(self, params: Params) -> tuple[str, str]:
        """The start and progress paths for these params."""
        ids = {name: int(getattr(params, name)) for name in self.path_ids}
        return self.start_path.format(**ids), self.progress_path.format(**ids)

    def public_params(self, params: Params) -> dict[str, Any]:
        """The params without secrets, as JSON-ready data for job state and events."""
        return params.model_dump(mode="json", exclude_unset=True, exclude=set(self.secret_fields))

    def secrets(self, params: Params) -> dict[str, str]:
        """The secret params that were given, revealed, to be stored apart from job state."""
        out: dict[str, str] = {}
        for name in self.secret_fields:
            value = getattr(params, name, None)
            if isinstance(value, SecretStr):
                out[name] = value.get_secret_value()
        return out

    def outcome(self, cekura_status: str) -> Outcome | None:
        """The terminal outcome for a Cekura status word, or None while the job is still running."""
        return self.terminal.get(cekura_status)
