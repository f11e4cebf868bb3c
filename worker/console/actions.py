"""What the console's buttons do: cancel, retry and answer a job, through the very functions behind the CLI and the
Python client (`Client.cancel`, `submission.retry`, `Client.answer`), so the console can do nothing they can't.

Each action is asked for on a confirmation page and its outcome shown as the words those functions answer with.
`answer` is offered only by a client that has it (`Client.answer`, for jobs whose Cekura operation asked a question).

A retry's new job id is drawn when its confirmation page is (`retry_id`) and posted back with the form, so the same
confirmation posted twice (a double click, a reload that posts again) makes one job: `submission.retry` answers a
new job id it has already made with that job. A retry that could start a second Cekura operation beside one that
may still be running (`unknown_start`) is done only when the form says so (`force`).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from worker.client import Client
from worker.errors import InvalidRequest
from worker.intake import requests, submission
from worker.redact import redact

log = structlog.get_logger(__name__)

#: The longest answer the form takes (Cekura's clarify-answer takes up to 10,000 characters).
DEFAULT_MAX_ANSWER_CHARS = 10_000


@dataclass(frozen=True, slots=True)
class Action:
    """An action as its confirmation page describes it."""

    name: str
    title: str
    button: str
    explain: str
    takes_text: bool = False


ACTIONS = {
    "cancel": Action(
        "cancel",
        "Cancel",
        "Yes, cancel the job",
        "The job ends cancelled now, with its one result event; a running job of a kind Cekura can cancel is also "
        "stopped at Cekura. A job that has already finished is left as it is.",
    ),
    "retry": Action(
        "retry",
        "Retry",
        "Yes, retry the job",
        "Submits this finished job again as a new job with the same kind, params and deadline, exactly as "
        "`cekura-worker retry` does. The finished job is left as it is.",
    ),
    "answer": Action(
        "answer",
        "Answer",
        "Send the answer",
        "Records your answer to the question this job asked; it goes to Cekura with the job's next poll. Only the "
        "first answer to a question is taken.",
        takes_text=True,
    ),
}


@dataclass(frozen=True, slots=True)
class Done:
    """What an action did: `ok`, the words that say so, and the job to go on to (a retry's new job)."""

    ok: bool
    message: str
    job_id: str
    new_job_id: str = ""
    #: A retry refused because its start's outcome is unknown: it asks to be confirmed again, explicitly.
    unknown_start: bool = False


def can_answer(client: Client) -> bool:
    """Whether this version of the client can answer a waiting job."""
    return callable(getattr(client, "answer", None))


def retry_id(client: Client, job_id: str) -> str:
    """The id a retry of `job_id` confirmed now would make: `<job_id>-retry-<n>` with the first free n, as the CLI
    picks it ("" when there is none: the id is too long to add to, or every number is taken)."""
    for number in range(1, submission.DEFAULT_MAX_RETRY_NUMBER + 1):
        candidate = f"{job_id}-retry-{number}"
        if not requests.JOB_ID_PATTERN.fullmatch(candidate):
            return ""
        if not client.redis.exists(client.store.job_key(candidate)):
            return candidate
    return ""


def unknown_start(job_id: str, record: dict[str, str]) -> bool:
    """Whether a retry of the job with `record` (its `state`, `kind`, `start_sent`, `progress_id`) needs `force`: its
    start must not repeat and may have reached Cekura, whose operation may still be running."""
    refused = submission.Retried.refusal(job_id, record)
    return refused is not None and refused.result == "unknown_start"


def perform(
    client: Client, action: str, job_id: str, text: str = "", *, new_job_id: str = "", force: bool = False
) -> Done:
    """Run `action` on `job_id` (a retry as `new_job_id`, forced or not); a refusal (`InvalidRequest`) becomes a
    `Done` that says why. Redis errors propagate."""
    try:
        done = _perform(client, action, job_id, text, new_job_id, force)
    except InvalidRequest as exc:
        done = Done(False, redact(str(exc)), job_id)
    log.info("console_action", action=action, job_id=job_id, ok=done.ok, new_job_id=done.new_job_id or None)
    return done


def _perform(client: Client, action: str, job_id: str, text: str, new_job_id: str, force: bool) -> Done:
    if action == "cancel":
        cancelled = client.cancel(job_id)
        return Done(cancelled.result == "cancelled", redact(cancelled.message), job_id)
    if action == "retry":
        retried = submission.retry(client.store, client.broker, job_id, new_job_id=new_job_id or None, force=force)
        submitted, unknown = retried.result == "submitted", retried.result == "unknown_start"
        return Done(submitted, redact(retried.message), job_id, retried.job_id if submitted else "", unknown)
    if action == "answer":
        answer = getattr(client, "answer", None)
        if not callable(answer):
            return Done(False, "This version of cekura-worker can't answer jobs.", job_id)
        if not text.strip():
            return Done(False, "The answer is empty: nothing was sent.", job_id)
        if len(text) > DEFAULT_MAX_ANSWER_CHARS:
            return Done(False, f"The answer is over {DEFAULT_MAX_ANSWER_CHARS:,} characters: nothing was sent.", job_id)
        reply = answer(job_id, text)
        # A refusal raises `InvalidRequest`; an answer object that says `result` other than "ok" is one too.
        ok = getattr(reply, "result", "ok") == "ok"
        message = getattr(reply, "message", None)
        if not isinstance(message, str) or not message:
            message = f"Answer recorded for job {job_id}: it goes to Cekura with the job's next poll."
        return Done(ok, redact(message), job_id)
    return Done(False, f"There is no action {action!r}.", job_id)
