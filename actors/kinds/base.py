"""What a job kind is: the declaration that maps one Cekura start/progress operation onto this service.

A kind names its paths, its params model and its status table; the actors hold all control flow, so a new
Cekura operation is one small file in this folder. Where operations differ in more than their words, a kind says
so with a rule rather than new control flow: where the start answer carries the id to poll with
(`progress_id_field`), how to read a status from a progress answer (`status_of`), a verdict computed from the
final answer (`verdict`), the status words that wait for a person's answer (`waiting`, `answer_path`), whether
its start may be sent twice (`repeatable_start`), its polling cadence, how much of the work a running answer says
is done (`progress_of`) and its default deadline. Shared rules live in `actors/kinds/rules.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from worker.cekura.polling import PollPlan
from worker.cekura.progress import Progress
from worker.errors import InvalidRequest
from worker.redact import DEFAULT_MIN_SECRET_LEN, credentials


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


def status_field(answer: Mapping[str, Any]) -> str | None:
    """The default status rule: the answer's `status` string (None when it has none: an invalid answer)."""
    status = answer.get("status")
    return status if isinstance(status, str) else None


def no_progress(answer: Mapping[str, Any]) -> Progress | None:
    """The default progress rule: the answer counts nothing (the kind polls on its schedule alone)."""
    return None


def session_cancel_body(session_id: int | None, progress_id: str) -> dict[str, Any] | None:
    """The default cancel body: the scenario agent's `{"session_id": ...}`."""
    return {"session_id": session_id}


def question_text(answer: Mapping[str, Any]) -> str:
    """The question of an answer that waits for input: `question`, `clarification_question` or `questions`."""
    for name in ("question", "clarification_question", "questions"):
        value = answer.get(name)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value:
            texts = [item.get("question", "") if isinstance(item, Mapping) else item for item in value]
            return "\n".join(_text(text) for text in texts if text)
        if value:
            return _text(value)
    return ""


def _text(value: Any) -> str:
    """A question part as text: a string as it is, anything else (Cekura's answers are free-form) as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def json_body(params: BaseModel, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The start body: the params as given, secrets revealed (they are meant for Cekura), minus `exclude`."""
    body = params.model_dump(mode="python", exclude_unset=True, exclude=set(exclude))
    return {key: _reveal(value) for key, value in body.items()}


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _reveal(item) for key, item in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class JobKind:
    """One Cekura asynchronous operation.

    `start_path` and `progress_path` are formatted with the params' integer fields only (see `path_ids`), so
    no request field can change the host or the path beyond its ids.
    """

    name: str
    params: type[Params]
    #: The start path, or a function of the params choosing among fixed paths.
    start_path: str | Callable[[Any], str]
    progress_path: str
    #: Cekura status word -> terminal outcome; any other word means "still running".
    terminal: Mapping[str, Outcome]
    #: Status words that mean "still running"; any other non-terminal word is logged as unexpected.
    running: frozenset[str] = frozenset({"in_progress"})
    #: The JSON body of the start call, or None to send no body at all.
    start_body: Callable[[Any], dict[str, Any] | None] = json_body
    #: The progress field holding the current stage, for kinds that report stages.
    stage_field: str | None = None
    #: Path of the cancel endpoint (may hold `{progress_id}`); None when Cekura has none.
    cancel_path: str | None = None
    #: The cancel call's JSON body from the job's session id and progress id (None: no body).
    cancel_body: Callable[[int | None, str], dict[str, Any] | None] = session_cancel_body
    #: Params fields that are secrets: kept out of job state, logs and events.
    secret_fields: frozenset[str] = field(default_factory=frozenset)
    #: Params fields substituted into the paths; each must be an int.
    path_ids: tuple[str, ...] = ()
    #: The start answer's field holding the id to poll with (a string, or an integer for ids that are paths).
    progress_id_field: str = "progress_id"
    #: The status word of a progress answer (None: the answer is invalid).
    status_of: Callable[[Mapping[str, Any]], str | None] = status_field
    #: The final say on a terminal answer: (outcome, error) from the status table's outcome and the answer.
    verdict: Callable[[Outcome, Mapping[str, Any]], tuple[Outcome, str]] | None = None
    #: Status words meaning Cekura waits for a person's answer: the job publishes the question and waits.
    waiting: frozenset[str] = frozenset()
    #: The text of the question in a waiting answer.
    question_of: Callable[[Mapping[str, Any]], str] = question_text
    #: Path answers are sent to, and the body built from the progress id and the answer text.
    answer_path: str | None = None
    answer_body: Callable[[str, str], dict[str, Any]] = lambda progress_id, text: {
        "progress_id": progress_id,
        "answer": text,
    }
    #: False when a second start call would start the operation twice (Cekura has no idempotency key): once the
    #: request may have reached Cekura, it is never sent again, and the job fails saying its outcome is unknown.
    repeatable_start: bool = True
    #: The declared polling cadence (learned schedules start from it); None fields take the settings.
    poll_plan: PollPlan = field(default_factory=PollPlan)
    #: How much of the operation a running answer says is done, as counts of its parts (None: it doesn't say);
    #: the next poll is then put off while the parts left can't all be done before it (`worker/cekura/progress.py`).
    progress_of: Callable[[Mapping[str, Any]], Progress | None] = no_progress
    #: Deadline for a request that names none (seconds); None takes CEKURA_JOB_DEADLINE_S.
    default_deadline_s: float | None = None
    #: Cekura announces the end of this kind's operation with a result webhook: with CEKURA_WEBHOOKS on, a webhook
    #: makes the job poll at once, and polls are only a safety net.
    webhooks: bool = False
    #: The start body's field that carries the job's tag (`worker.cekura.lookup`), and the list that finds it
    #: (`?search=`): a start whose answer was lost is looked for there instead of failing at once.
    tag_field: str | None = None
    lookup_path: str | None = None

    def answer_request(self, progress_id: str, text: str) -> dict[str, Any]:
        """The body of the answer call, checked: the one function behind both the check of an answer when it is
        submitted and its delivery, so an answer accepted is one that can be sent. Raises `InvalidRequest` naming
        what is wrong (a body rule that parses the text refuses what JSON can't carry: `rules.feedback_answers`)."""
        try:
            body = self.answer_body(progress_id, text)
            json.dumps(body, allow_nan=False)  # what the Cekura client will write
        except InvalidRequest:
            raise
        except (TypeError, ValueError, RecursionError) as exc:  # a body rule that checks less than it should
            raise InvalidRequest(f"answer can't be sent as JSON ({type(exc).__name__})") from None
        return body

    def validate(self, raw: Mapping[str, Any]) -> Params:
        """Validate raw params into the kind's model (raises pydantic.ValidationError)."""
        return self.params.model_validate(dict(raw))

    def paths(self, params: Params, progress_id: str = "") -> tuple[str, str]:
        """The start and progress paths for these params (and, for a kind polled at `{progress_id}`, that id,
        which must then be all digits: nothing from Cekura's answer can change the path beyond its id)."""
        ids: dict[str, Any] = {name: int(getattr(params, name)) for name in self.path_ids}
        if self.polls_by_path:
            ids["progress_id"] = int(progress_id) if progress_id.isascii() and progress_id.isdigit() else 0
        start = self.start_path(params) if callable(self.start_path) else self.start_path.format(**ids)
        return start, self.progress_path.format(**ids)

    @property
    def polls_by_path(self) -> bool:
        """The progress id goes in the progress path (`/results/{progress_id}/`), not the query."""
        return "{progress_id}" in self.progress_path

    def public_params(self, params: Params) -> dict[str, Any]:
        """The params without secrets, as JSON-ready data for job state and events."""
        return params.model_dump(mode="json", exclude_unset=True, exclude=set(self.secret_fields))

    def secrets(self, params: Params) -> dict[str, str]:
        """The secret params that were given, revealed, to be stored apart from job state (a mapping of secrets,
        such as headers, as JSON)."""
        out: dict[str, str] = {}
        for name in self.secret_fields:
            value = getattr(params, name, None)
            if isinstance(value, SecretStr):
                out[name] = value.get_secret_value()
            elif isinstance(value, dict):
                out[name] = json.dumps(_reveal(value))
        return out

    def with_secrets(self, raw: Mapping[str, Any], stored: Mapping[str, str]) -> Params:
        """The params from a job's public params and its stored secrets (see `secrets`). Params that no longer
        validate (stored by an older version) raise a `ValueError` naming only the fields and the kinds of problem:
        pydantic's own text quotes each input value, the secrets among them."""
        merged = dict(raw)
        for name, text in stored.items():
            merged[name] = json.loads(text) if self.params.model_fields[name].annotation != SecretStr | None else text
        try:
            return self.validate(merged)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['type']}" for error in errors)
        raise ValueError(f"the job's params no longer validate ({problems})")

    @staticmethod
    def secret_values(stored: Mapping[str, str]) -> tuple[str, ...]:
        """Every secret text in stored secrets, to be masked: each value, and each value of a JSON mapping, with
        the credential of a header value such as `Bearer <token>` on its own (see `credentials`)."""
        values: list[str] = []
        for text in stored.values():
            values.append(text)
            if text.startswith("{"):
                try:
                    mapping = json.loads(text)
                except ValueError:
                    continue
                if isinstance(mapping, dict):
                    values.extend(str(item) for item in mapping.values())
        return tuple(values + [part for value in values for part in credentials(value)])

    def progress(self, answer: Mapping[str, Any]) -> Progress | None:
        """The kind's `progress_of` of a running answer; None for anything it can't read (never raises: a
        progress rule only ever tunes the next poll)."""
        try:
            found = self.progress_of(answer)
        except Exception:  # a free-form answer no rule foresaw
            return None
        return found if isinstance(found, Progress) and 0 <= found.done <= found.total else None

    def outcome(self, cekura_status: str) -> Outcome | None:
        """The terminal outcome for a Cekura status word, or None while the job is still running."""
        return self.terminal.get(cekura_status)
