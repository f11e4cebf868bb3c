"""What went wrong lately: dead-lettered Dramatiq messages and jobs that ended `failed` or `timed_out`, for
`cekura-worker dead list`.

Two sources, because they fail differently. A *dead letter* is a message Dramatiq gave up on: its actor raised
past `max_retries` (a Redis error in every attempt, a `cancel_remote` Cekura kept refusing), so the message sits in
`<prefix>:dramatiq:<queue>.XQ` (a sorted set of Redis message ids scored by when it was nacked, in ms) with its data
in `.XQ.msgs`, until Dramatiq's maintenance drops it after `dead_message_ttl` (7 days). A *failed job* is an
outcome the service published: it is read from the results stream, newest first, so it is known as long as the
stream keeps its event (`CEKURA_RESULTS_MAXLEN`); `retryable` says whether `cekura-worker retry` takes it as it is
(its record is still there, `CEKURA_JOB_TTL_S`, and `submission.Retried.refusal` finds nothing against it), and
`needs_force` whether it takes it only with `--force` (a start that must not repeat and whose outcome is unknown).

The stream is read through the console's bounded reads (`worker.console.reads`, one Lua script): each event comes
back as its small fields only, each cut to a length (an error to 32 KiB), at most `DEFAULT_BATCH_BYTES` a call. A
listing used to read whole events, 1,000 at a time, results and all: 200 completed events of 1 MiB in the window
took it to a peak of 251 MiB to print nothing.

What this relies on of Dramatiq (the key layout and `nack` are pinned in tests/broker/test_dramatiq_contract.py,
`Retries`' options in tests/ops/test_dead_and_retry.py): the message is stored as `Message.encode()` wrote it when
it was last enqueued, and `Retries` sets the `retries` and `traceback` options before each re-enqueue. So a dead
letter's `error` is the last line of the traceback of the attempt *before* the final one (`nack` moves the stored
message, never the in-memory one the final attempt failed with), and is empty for a message never retried.

Every text shown passes through `redact()`; no job's params are read.
"""

from __future__ import annotations

from typing import Any

import redis
from dramatiq.errors import DecodeError
from dramatiq.message import Message

from actors.kinds import KINDS
from config.settings import Settings
from worker.console import reads
from worker.intake.requests import JOB_ID_PATTERN
from worker.intake.submission import Retried
from worker.redact import redact
from worker.runtime.connection import server_ms
from worker.store.jobs import as_text, iso_from_ms

#: The most entries of each kind a listing shows unless asked otherwise.
DEFAULT_LIMIT = 20

#: Result events looked at per read while looking for failed jobs.
DEFAULT_SCAN_BATCH = 1000

#: Bytes one read of the results stream returns at most (the small fields of the events it looked at).
DEFAULT_BATCH_BYTES = 1_048_576

#: The longest error text a table cell shows (JSON output has it up to the 32 KiB read).
DEFAULT_CELL_CHARS = 100

#: The outcomes `dead list` shows: the ones a retry might fix.
FAILED_STATUSES = frozenset({"failed", "timed_out"})


def _last_line(traceback: Any) -> str:
    lines = [line.strip() for line in str(traceback or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _dead_letter(redis_message_id: str, score: float, data: bytes | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "redis_message_id": redact(redis_message_id),
        "dead_lettered_at": iso_from_ms(int(score)),
        "actor": "",
        "job_id": "",
        "message_id": "",
        "enqueued_at": None,
        "retries": 0,
        "error": "",
    }
    if data is None:  # the id without its data: dropped by maintenance between the two reads
        entry["error"] = "(message data gone)"
        return entry
    try:
        message = Message.decode(data)
    except DecodeError:
        entry["error"] = "(message data can't be decoded)"
        return entry
    job_id = message.args[0] if message.args and isinstance(message.args[0], str) else ""
    entry.update(
        actor=redact(message.actor_name),
        job_id=redact(job_id),
        message_id=redact(message.message_id),
        enqueued_at=iso_from_ms(int(message.message_timestamp)),
        retries=int(message.options.get("retries") or 0),
        error=redact(_last_line(message.options.get("traceback"))),
    )
    return entry


def dead_letters(client: redis.Redis, settings: Settings, since_ms: int, limit: int) -> dict[str, Any]:
    """The queue's dead letters since `since_ms` (server clock), newest first, at most `limit`, and how many the
    queue holds in all."""
    queue = f"{settings.key('dramatiq')}:{settings.cekura_queue}"
    pipe = client.pipeline(transaction=False)
    pipe.zcard(f"{queue}.XQ")
    pipe.zrevrangebyscore(f"{queue}.XQ", "+inf", since_ms, start=0, num=limit, withscores=True)
    total, newest = pipe.execute()
    ids = [as_text(member) for member, _ in newest]
    datas = client.hmget(f"{queue}.XQ.msgs", ids) if ids else []
    messages = [_dead_letter(i, score, data) for i, (_, score), data in zip(ids, newest, datas, strict=True)]
    return {"queue": settings.cekura_queue, "total": int(total), "messages": messages}


def failed_jobs(client: redis.Redis, settings: Settings, since_ms: int, limit: int) -> list[dict[str, Any]]:
    """Jobs whose result event says `failed` or `timed_out`, finished since `since_ms`, newest first, at most
    `limit`; read from the results stream, whose entry ids are the server's ms when the event was written, a
    bounded batch at a time (see the module docstring)."""
    hits: list[dict[str, str]] = []
    upper = "+"
    while len(hits) < limit:
        got = reads.entries(
            client,
            settings.cekura_results_stream,
            _EVENT_FIELDS,
            start=upper,
            end=f"{since_ms}-0",
            count=DEFAULT_SCAN_BATCH,
            reverse=True,
            budget=DEFAULT_BATCH_BYTES,
        )
        hits += [f for _, f in got.rows if f.get("status") in FAILED_STATUSES and f.get("job_id")][: limit - len(hits)]
        if got.ended:
            break
        upper = f"({got.last}"  # exclusive: continue below the last entry looked at
    # An id read cut (longer than any job id) names no job: it is not looked up.
    ids = [f["job_id"] for f in hits if not isinstance(f["job_id"], reads.Partial)]
    records = dict(zip(ids, reads.jobs(client, settings, ids, _RECORD_FIELDS), strict=True))
    found: list[dict[str, Any]] = []
    for fields in hits:
        job: dict[str, Any] = {name: _shown(fields.get(name, "")) for name in _EVENT_FIELDS}
        job["retryable"], job["needs_force"] = _retryable(fields["job_id"], records.get(fields["job_id"]))
        found.append(job)
    return found


def _shown(value: str) -> str:
    """A value read from an event as shown: redacted, and marked "..." if it was cut."""
    return reads.clip(value, reads.TEXT_BYTES)


def _retryable(job_id: str, record: reads.Job | None) -> tuple[bool, bool]:
    """Whether `retry` takes the job as it is, and whether it takes it only with `--force`."""
    if record is None or not record.found or record.fields.get("kind") not in KINDS:
        return False, False  # expired, not a job, or of a kind this version doesn't know: `retry` refuses it
    if not JOB_ID_PATTERN.fullmatch(f"{job_id}-retry-1"):
        return False, False  # too long for `retry`'s own new id: `retry --job-id NEW_ID` takes it
    refused = Retried.refusal(job_id, record.fields)
    if refused is None:
        return True, False
    return False, refused.result == "unknown_start"


#: The event fields shown, and the bytes read at most of each.
_EVENT_FIELDS = {
    "job_id": reads.MAX_ID_BYTES,
    "kind": reads.SHORT_BYTES,
    "status": reads.SHORT_BYTES,
    "error": reads.TEXT_BYTES,
    "finished_at": reads.SHORT_BYTES,
}

#: What `Retried.refusal` reads of a job's record.
_RECORD_FIELDS = dict.fromkeys(("state", "kind", "start_sent", "progress_id"), reads.SHORT_BYTES)


def report(client: redis.Redis, settings: Settings, *, since_s: float, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Dead letters and failed jobs of the last `since_s` seconds as one JSON-serialisable dict."""
    now_ms = server_ms(client)
    since_ms = max(0, now_ms - int(since_s * 1000))
    return {
        "generated_at": iso_from_ms(now_ms),
        "since": iso_from_ms(since_ms),
        "dead_letters": dead_letters(client, settings, since_ms, limit),
        "failed_jobs": failed_jobs(client, settings, since_ms, limit),
    }


def _cell(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= DEFAULT_CELL_CHARS else flat[: DEFAULT_CELL_CHARS - 3] + "..."


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    rows = [[_cell(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def render_table(data: dict[str, Any]) -> str:
    """The report as plain text for a terminal."""
    dead = data["dead_letters"]
    lines = [f"cekura-worker dead list at {data['generated_at']} (since {data['since']})", ""]
    shown = len(dead["messages"])
    lines.append(f"Dead-lettered messages in queue {dead['queue']}: {dead['total']} in all, {shown} shown")
    if dead["messages"]:
        rows = [
            [m["dead_lettered_at"], m["actor"], m["job_id"], str(m["retries"]), m["error"]] for m in dead["messages"]
        ]
        lines += _table(["DEAD-LETTERED AT", "ACTOR", "JOB ID", "RETRIES", "LAST ERROR"], rows)
    jobs = data["failed_jobs"]
    lines += ["", f"Failed and timed-out jobs: {len(jobs)} shown"]
    if jobs:
        rows = [[j["finished_at"], j["job_id"], j["kind"], j["status"], _retry_cell(j), j["error"]] for j in jobs]
        lines += _table(["FINISHED AT", "JOB ID", "KIND", "STATUS", "RETRYABLE", "ERROR"], rows)
    return "\n".join(lines)


def _retry_cell(job: dict[str, Any]) -> str:
    if job["retryable"]:
        return "yes"
    return "needs --force" if job["needs_force"] else "no"
