"""The jobs page: active jobs, recent results and rejected requests, filtered by kind, status and job_id prefix,
newest first, paged.

Active jobs come from the schedule (the sorted set of every active job, by due time): at most
`DEFAULT_ACTIVE_SCAN` of its members, each job's fields (and its stored secrets, only to mask them) read in the same
script call, then sorted by submission, newest first. With more active jobs than that, the page says it shows those
due soonest.

Results and rejected requests come from the results stream, newest first: one page reads at most
`DEFAULT_RESULT_SCAN` events and `DEFAULT_PAGE_BUDGET` bytes (a result event's payload is never read: only the
fields a row shows, each cut), filtering as it goes, and its "older" link goes on from the last event it read, so a
filter that matches little never makes one request read the whole stream. Every read is `worker.console.reads`'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import urlencode

import redis

from config.settings import Settings
from worker.console import reads
from worker.console.detail import ACTIVE_STATES, MAX_JOB_ID_CHARS
from worker.console.reads import CELL_BYTES, SHORT_BYTES, clip, ms_of
from worker.redact import redact
from worker.store.jobs import iso_from_ms

#: Rows per table on one page.
DEFAULT_PAGE_SIZE = 50

#: Schedule members read at most for the active jobs table.
DEFAULT_ACTIVE_SCAN = 1000

#: Result events read at most for one page of results.
DEFAULT_RESULT_SCAN = 2000

#: Result events per read.
DEFAULT_BATCH = 500

#: The most bytes of values one page reads from the results stream.
DEFAULT_PAGE_BUDGET = 4 * 1_048_576

#: The longest error text a table cell shows (the job's page has it whole).
DEFAULT_CELL_CHARS = 200

#: The longest kind filter kept (no kind is longer).
DEFAULT_KIND_CHARS = 64

#: Statuses a job ends with; `rejected` is a request's.
FINAL_STATUSES = ("completed", "needs_input", "failed", "timed_out", "cancelled", "rejected")

#: The states an active job is in, in the order it goes through them.
ACTIVE_ORDER = ("queued", "starting", "polling", "waiting")

#: A stream entry id: ASCII digits only (`\d` would take any script's digits), each part at most 2^64 - 1.
_ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_ACTIVE_FIELDS = {
    "kind": CELL_BYTES,
    "state": SHORT_BYTES,
    "cekura_status": CELL_BYTES,
    "current_stage": CELL_BYTES,
    "polls": SHORT_BYTES,
    "submitted_ms": SHORT_BYTES,
    "next_poll_ms": SHORT_BYTES,
}
_RESULT_NAMES = ("job_id", "requested_job_id", "request_id", "kind", "status", "error", "polls", "finished_at")
_RESULT_FIELDS = dict.fromkeys(_RESULT_NAMES, CELL_BYTES)


def _cursor(value: str) -> str:
    """`value` if it is a stream entry id Redis takes, else ""."""
    match = _ENTRY_ID.fullmatch(value)
    parts = [int(part) for part in match.groups()] if match else []
    return value if parts and max(parts) < 2**64 and any(parts) else ""


def _page(value: str) -> int:
    """A page number from 1 to 10,000 (1 for anything that isn't a few ASCII digits)."""
    if value.isascii() and value.isdecimal() and len(value) <= 6:
        return max(1, min(int(value), 10_000))
    return 1


@dataclass(frozen=True, slots=True)
class Filters:
    """What the jobs page shows: a kind, a status (an active state or a final status), a job_id prefix, and where
    each table's page starts."""

    kind: str = ""
    status: str = ""
    prefix: str = ""
    #: Results older than this stream entry id (exclusive); empty for the newest.
    before: str = ""
    #: The active jobs table's page, from 1.
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        """From a query string, dropping what can't be valid (an unknown status, a bad cursor) and cutting an overlong
        text. The kind and the prefix are shown back (in the form and in every paging link): each is masked
        (`worker.redact`) before it is cut, since a cut secret is no longer one `redact` can find."""
        kind = redact(query.get("kind", "")).strip()[:DEFAULT_KIND_CHARS]
        status = query.get("status", "").strip()
        prefix = redact(query.get("prefix", "")).strip()[:MAX_JOB_ID_CHARS]
        before = query.get("before", "").strip()
        page = query.get("page", "1").strip()
        return cls(
            kind=kind,
            status=status if status in (*ACTIVE_ORDER, *FINAL_STATUSES) else "",
            prefix=prefix,
            before=_cursor(before),
            page=_page(page),
        )

    def query(self, **changes: object) -> str:
        """This filter as a query string (with `changes`), for links; empty values left out."""
        values = {**{f.name: getattr(self, f.name) for f in fields(self)}, **changes}
        return urlencode({k: v for k, v in values.items() if v and not (k == "page" and v == 1)})

    def wants(self, kind: str, status: str, job_id: str) -> bool:
        return (
            (not self.kind or kind == self.kind)
            and (not self.status or status == self.status)
            and job_id.startswith(self.prefix)
        )


@dataclass(frozen=True, slots=True)
class ActiveRow:
    job_id: str
    kind: str
    state: str
    cekura_status: str
    current_stage: str
    polls: str
    submitted_at: str
    next_due_at: str


@dataclass
class ActivePage:
    rows: list[ActiveRow] = field(default_factory=list)
    page: int = 1
    has_more: bool = False
    #: Active jobs in the schedule, and how many of them were read (the soonest due).
    scheduled: int = 0
    scanned: int = 0
    #: Why the table is empty whatever the jobs are (a final status was asked for).
    skipped: str = ""


@dataclass(frozen=True, slots=True)
class ResultRow:
    entry_id: str
    job_id: str
    kind: str
    status: str
    error: str
    polls: str
    finished_at: str


@dataclass(frozen=True, slots=True)
class RejectedRow:
    entry_id: str
    request_id: str
    requested_job_id: str
    kind: str
    error: str
    at: str


@dataclass
class ResultPage:
    results: list[ResultRow] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    #: Where the next (older) page starts, or empty when the stream has nothing older.
    next_before: str = ""
    scanned: int = 0
    skipped: str = ""


def _cell(value: str, extra: tuple[str, ...] = ()) -> str:
    return clip(value, DEFAULT_CELL_CHARS, extra, flat=True)


def _iso(value: str | None) -> str:
    ms = ms_of(value)
    return iso_from_ms(ms) if ms else ""


def active_jobs(
    client: redis.Redis, settings: Settings, filters: Filters, page_size: int = DEFAULT_PAGE_SIZE
) -> ActivePage:
    """One page of active jobs matching `filters`, newest first (see the module docstring for the bound)."""
    if filters.status and filters.status not in ACTIVE_STATES:
        return ActivePage(page=filters.page, skipped=f"a job that is {filters.status} has finished: see the results")
    scheduled, scanned, jobs = reads.schedule(client, settings, DEFAULT_ACTIVE_SCAN, _ACTIVE_FIELDS)
    found: list[tuple[int, ActiveRow]] = []
    for job_id, job in jobs:
        f, extra = job.fields, job.secrets
        state = f.get("state", "")
        if not job.found or state not in ACTIVE_STATES or not filters.wants(f.get("kind", ""), state, job_id):
            continue  # a finished job, or a key holding something other than a job
        row = ActiveRow(
            job_id=clip(job_id, MAX_JOB_ID_CHARS, extra),
            kind=_cell(f.get("kind", ""), extra),
            state=state,
            cekura_status=_cell(f.get("cekura_status", ""), extra),
            current_stage=_cell(f.get("current_stage", ""), extra),
            polls=_cell(f.get("polls") or "0", extra),
            submitted_at=_iso(f.get("submitted_ms")),
            next_due_at=_iso(f.get("next_poll_ms")),
        )
        found.append((ms_of(f.get("submitted_ms")), row))
    found.sort(key=lambda item: (item[0], item[1].job_id), reverse=True)  # ties (same ms): by id, for a stable page
    start = (filters.page - 1) * page_size
    return ActivePage(
        rows=[row for _, row in found[start : start + page_size]],
        page=filters.page,
        has_more=len(found) > start + page_size,
        scheduled=scheduled,
        scanned=scanned,
    )


def recent_results(
    client: redis.Redis, settings: Settings, filters: Filters, page_size: int = DEFAULT_PAGE_SIZE
) -> ResultPage:
    """One page of result events (and rejected requests) matching `filters`, newest first."""
    if filters.status in ACTIVE_STATES:
        return ResultPage(skipped=f"a job that is {filters.status} has no result yet: see the active jobs")
    out = ResultPage()
    upper = f"({filters.before}" if filters.before else "+"
    last, exhausted, used = "", False, 0

    def full() -> bool:
        return len(out.results) + len(out.rejected) >= page_size

    while out.scanned < DEFAULT_RESULT_SCAN and not full() and used < DEFAULT_PAGE_BUDGET:
        got = reads.entries(
            client,
            settings.cekura_results_stream,
            _RESULT_FIELDS,
            start=upper,
            end="-",
            count=min(DEFAULT_BATCH, DEFAULT_RESULT_SCAN - out.scanned),
            reverse=True,
            budget=DEFAULT_PAGE_BUDGET - used,
        )
        used += got.used
        for entry_id, f in got.rows:
            out.scanned += 1
            last = entry_id
            status = f.get("status", "")
            job_id = f.get("job_id", "") if status != "rejected" else f.get("requested_job_id", "")
            if filters.wants(f.get("kind", ""), status, job_id):
                _add(out, last, f)
            if full():
                break
        # A read that reached the stream's end, every entry of it looked at: there is no older page.
        if got.ended and (not got.rows or last == got.rows[-1][0]):
            exhausted = True
            break
        upper = f"({last}"
    out.next_before = "" if exhausted else last
    return out


def _add(out: ResultPage, entry: str, f: dict[str, str]) -> None:
    if f.get("status") == "rejected":
        out.rejected.append(
            RejectedRow(
                entry_id=entry,
                request_id=_cell(f.get("request_id", "")),
                requested_job_id=clip(f.get("requested_job_id", ""), MAX_JOB_ID_CHARS),
                kind=_cell(f.get("kind", "")),
                error=_cell(f.get("error", "")),
                at=_cell(f.get("finished_at", "")),
            )
        )
        return
    out.results.append(
        ResultRow(
            entry_id=entry,
            job_id=clip(f.get("job_id", ""), MAX_JOB_ID_CHARS),
            kind=_cell(f.get("kind", "")),
            status=_cell(f.get("status", "")),
            error=_cell(f.get("error", "")),
            polls=_cell(f.get("polls", "")),
            finished_at=_cell(f.get("finished_at", "")),
        )
    )
