"""The jobs page: active jobs, recent results and rejected requests, filtered by kind, status and job_id prefix,
newest first, paged.

Active jobs come from the schedule (the sorted set of every active job, by due time): at most
`DEFAULT_ACTIVE_SCAN` of its members, each job's fields read with one pipelined `HMGET`, then sorted by submission,
newest first. With more active jobs than that, the page says it shows those due soonest.

Results and rejected requests come from the results stream, newest first (`XREVRANGE`): one page reads at most
`DEFAULT_RESULT_SCAN` events, filtering as it goes, and its "older" link goes on from the last event it read, so a
filter that matches little never makes one request read the whole stream.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import urlencode

import redis

from config.settings import Settings
from worker.console.detail import ACTIVE_STATES, MAX_JOB_ID_CHARS
from worker.redact import redact
from worker.store.jobs import as_text, iso_from_ms

#: Rows per table on one page.
DEFAULT_PAGE_SIZE = 50

#: Schedule members read at most for the active jobs table.
DEFAULT_ACTIVE_SCAN = 1000

#: Result events read at most for one page of results.
DEFAULT_RESULT_SCAN = 2000

#: Result events per `XREVRANGE`.
DEFAULT_BATCH = 500

#: The longest error text a table cell shows (the job's page has it whole).
DEFAULT_CELL_CHARS = 200

#: Statuses a job ends with; `rejected` is a request's.
FINAL_STATUSES = ("completed", "needs_input", "failed", "timed_out", "cancelled", "rejected")

#: The states an active job is in, in the order it goes through them.
ACTIVE_ORDER = ("queued", "starting", "polling", "waiting")

_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
_ACTIVE_FIELDS = ("kind", "state", "cekura_status", "current_stage", "polls", "submitted_ms", "next_poll_ms")


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
        """From a query string, dropping what can't be valid (an unknown status, an overlong text, a bad cursor)."""
        kind = query.get("kind", "").strip()[:64]
        status = query.get("status", "").strip()
        prefix = query.get("prefix", "").strip()[:MAX_JOB_ID_CHARS]
        before = query.get("before", "").strip()
        page = query.get("page", "1").strip()
        return cls(
            kind=kind,
            status=status if status in (*ACTIVE_ORDER, *FINAL_STATUSES) else "",
            prefix=prefix,
            before=before if _ENTRY_ID.fullmatch(before) else "",
            page=max(1, min(int(page), 10_000)) if page.isdigit() else 1,
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


def _cell(text: str) -> str:
    flat = " ".join(text.split())
    return redact(flat if len(flat) <= DEFAULT_CELL_CHARS else flat[: DEFAULT_CELL_CHARS - 3] + "...")


def _iso(ms: str | None) -> str:
    return iso_from_ms(int(ms)) if ms and ms.isdigit() and ms != "0" else ""


def active_jobs(
    client: redis.Redis, settings: Settings, filters: Filters, page_size: int = DEFAULT_PAGE_SIZE
) -> ActivePage:
    """One page of active jobs matching `filters`, newest first (see the module docstring for the bound)."""
    if filters.status and filters.status not in ACTIVE_STATES:
        return ActivePage(page=filters.page, skipped=f"a job that is {filters.status} has finished: see the results")
    schedule = settings.key("schedule")
    pipe = client.pipeline(transaction=False)
    pipe.zcard(schedule)
    pipe.zrange(schedule, 0, DEFAULT_ACTIVE_SCAN - 1)
    scheduled, members = pipe.execute()
    job_ids = [as_text(m) for m in members]
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(settings.key("job", job_id), *_ACTIVE_FIELDS)
    found: list[tuple[int, ActiveRow]] = []
    for job_id, values in zip(job_ids, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(values, Exception):  # a key holding something other than a job
            continue
        f = dict(zip(_ACTIVE_FIELDS, (as_text(v) if v is not None else "" for v in values), strict=True))
        if f["state"] not in ACTIVE_STATES or not filters.wants(f["kind"], f["state"], job_id):
            continue
        row = ActiveRow(
            job_id=redact(job_id),
            kind=redact(f["kind"]),
            state=f["state"],
            cekura_status=_cell(f["cekura_status"]),
            current_stage=_cell(f["current_stage"]),
            polls=f["polls"] or "0",
            submitted_at=_iso(f["submitted_ms"]),
            next_due_at=_iso(f["next_poll_ms"]),
        )
        found.append((int(f["submitted_ms"]) if f["submitted_ms"].isdigit() else 0, row))
    found.sort(key=lambda item: (item[0], item[1].job_id), reverse=True)  # ties (same ms): by id, for a stable page
    start = (filters.page - 1) * page_size
    return ActivePage(
        rows=[row for _, row in found[start : start + page_size]],
        page=filters.page,
        has_more=len(found) > start + page_size,
        scheduled=int(scheduled),
        scanned=len(job_ids),
    )


def recent_results(
    client: redis.Redis, settings: Settings, filters: Filters, page_size: int = DEFAULT_PAGE_SIZE
) -> ResultPage:
    """One page of result events (and rejected requests) matching `filters`, newest first."""
    if filters.status in ACTIVE_STATES:
        return ResultPage(skipped=f"a job that is {filters.status} has no result yet: see the active jobs")
    out = ResultPage()
    upper = f"({filters.before}" if filters.before else "+"
    last, exhausted = "", False
    while out.scanned < DEFAULT_RESULT_SCAN and len(out.results) + len(out.rejected) < page_size:
        batch = client.xrevrange(settings.cekura_results_stream, max=upper, min="-", count=DEFAULT_BATCH)
        for entry_id, raw in batch:
            out.scanned += 1
            last = as_text(entry_id)
            f = {as_text(k): as_text(v) for k, v in raw.items()}
            status = f.get("status", "")
            job_id = f.get("job_id", "") if status != "rejected" else f.get("requested_job_id", "")
            if filters.wants(f.get("kind", ""), status, job_id):
                _add(out, last, f)
            if len(out.results) + len(out.rejected) >= page_size or out.scanned >= DEFAULT_RESULT_SCAN:
                break
        # A short batch read to its end is the stream's end: there is no older page.
        if len(batch) < DEFAULT_BATCH and (not batch or last == as_text(batch[-1][0])):
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
                request_id=redact(f.get("request_id", "")),
                requested_job_id=redact(f.get("requested_job_id", "")),
                kind=redact(f.get("kind", "")),
                error=_cell(f.get("error", "")),
                at=redact(f.get("finished_at", "")),
            )
        )
        return
    out.results.append(
        ResultRow(
            entry_id=entry,
            job_id=redact(f.get("job_id", "")),
            kind=redact(f.get("kind", "")),
            status=redact(f.get("status", "")),
            error=_cell(f.get("error", "")),
            polls=redact(f.get("polls", "")),
            finished_at=redact(f.get("finished_at", "")),
        )
    )
