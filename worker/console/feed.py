"""What the live feed reads of the progress and result streams, and the events it makes of them for open pages.

Each read takes the entries after the last one seen, at most `DEFAULT_COUNT` per stream and `DEFAULT_READ_BUDGET`
bytes, and only the fields an event shows, each cut (`worker.console.reads`): a 10 MB result passing through the
results stream costs the feed its first bytes only. An entry is made an event on its own, so one that holds
something unexpected is logged and skipped, never stopping the feed.

Every text an event carries is redacted (the deployment's secrets and, for a running job of a kind with secret
params, the job's own stored secrets) and then cut to `DEFAULT_LINE_CHARS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from actors.kinds import KINDS
from config.settings import Settings
from worker.console import reads
from worker.console.detail import DEFAULT_LINE_CHARS, MAX_JOB_ID_CHARS
from worker.console.reads import CELL_BYTES, Partial, clip
from worker.store.jobs import iso_from_ms

log = structlog.get_logger(__name__)

#: Entries read per stream per read at most.
DEFAULT_COUNT = 1000

#: Bytes of values one read of one stream returns at most.
DEFAULT_READ_BUDGET = 1_048_576

_RESULT_FIELDS = dict.fromkeys(("job_id", "requested_job_id", "kind", "status", "error"), CELL_BYTES)
_PROGRESS_FIELDS = dict.fromkeys(
    ("job_id", "kind", "cekura_status", "current_stage", "polls", "state", "question"), CELL_BYTES
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: `result` (else progress), its id, and its fields (values cut, not yet shown)."""

    result: bool
    entry_id: str
    fields: dict[str, str]

    @property
    def order(self) -> tuple[int, int]:
        ms, _, seq = self.entry_id.partition("-")
        return (_int(ms), _int(seq))

    @property
    def job_id(self) -> str:
        """The job the entry is about, for matching pages ("" when it can't be a job id)."""
        job_id = self.fields.get("job_id", "")
        return "" if isinstance(job_id, Partial) or len(job_id) > MAX_JOB_ID_CHARS else job_id


def _int(digits: str) -> int:
    return int(digits) if digits.isascii() and digits.isdecimal() and len(digits) <= 20 else 0


def last_id(client: redis.Redis, stream: str) -> str:
    """The id of the stream's newest entry ("0-0" when it has none)."""
    got = reads.entries(client, stream, {}, start="+", end="-", count=1, reverse=True)
    return got.last or "0-0"


def read(client: redis.Redis, settings: Settings, ids: dict[str, str]) -> tuple[list[Entry], bool]:
    """The entries after `ids` (stream: last id seen, moved on here), oldest first per stream; and whether a stream
    has more waiting (its read stopped at the count or the budget)."""
    found: list[Entry] = []
    more = False
    for stream, fields in (
        (settings.cekura_results_stream, _RESULT_FIELDS),
        (settings.cekura_progress_stream, _PROGRESS_FIELDS),
    ):
        got = reads.entries(
            client, stream, fields, start=f"({ids[stream]}", end="+", count=DEFAULT_COUNT, budget=DEFAULT_READ_BUDGET
        )
        if got.last:
            ids[stream] = got.last
        more = more or not got.ended
        result = stream == settings.cekura_results_stream
        found.extend(Entry(result, entry_id, values) for entry_id, values in got.rows)
    return found, more


def secrets_of(client: redis.Redis, settings: Settings, entries: Iterable[Entry]) -> dict[str, tuple[str, ...]]:
    """The stored secrets of the jobs `entries` are about, for kinds with secret params (one read for all)."""
    wanted = sorted(
        {
            e.job_id
            for e in entries
            if e.job_id and (kind := KINDS.get(e.fields.get("kind", ""))) is not None and kind.secret_fields
        }
    )
    return {job_id: job.secrets for job_id, job in zip(wanted, reads.jobs(client, settings, wanted, {}), strict=True)}


def at(entry_id: str) -> str:
    """When the entry was written (its id's ms), in ISO 8601 ("" for a time no date holds)."""
    return iso_from_ms(_int(entry_id.partition("-")[0]))


def event(entry: Entry, extra: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """The server-sent event for `entry`: ("result" | "progress", its fields as shown)."""
    f = entry.fields

    def line(name: str) -> str:
        return clip(f.get(name, ""), DEFAULT_LINE_CHARS, extra)

    common = {"entry_id": entry.entry_id, "at": at(entry.entry_id), "job_id": line("job_id"), "kind": line("kind")}
    if entry.result:
        rejected = f.get("status") == "rejected"
        fields = {"requested_job_id": line("requested_job_id") if rejected else "", "status": line("status")}
        return "result", {**common, **fields, "error": line("error")}
    names = ("cekura_status", "current_stage", "polls", "state", "question")
    return "progress", {**common, **{name: line(name) for name in names}}


def events(entries: Iterable[Entry], secrets: dict[str, tuple[str, ...]]) -> list[tuple[Entry, tuple[str, Any]]]:
    """Each entry with its event; an entry that can't be made one is logged and left out."""
    out = []
    for entry in entries:
        try:
            out.append((entry, event(entry, secrets.get(entry.job_id, ()))))
        except Exception as exc:  # data no writer of the service makes: the feed goes on without it
            log.warning("console_live_entry_skipped", entry_id=entry.entry_id, error_type=type(exc).__name__)
    return out
