"""The overview's figures: the `status` summary shaped for a page, and outcomes by kind over the last hour.

The summary is `worker.ops.summary.summarize`, the very figures `cekura-worker status` prints, flattened into named
figures and small tables that the page template and the page's script render alike (the script gets the same
shape in its `summary` events, so a live update and a reload show the same thing).

Outcomes are counted from the results stream, whose entry ids are the Redis server's ms when each event was
written: counted once by reading the last hour back (at most `DEFAULT_SCAN` events, newest first; beyond that the
counts say they are partial), then kept up to date from the events the live feed reads anyway, in one-minute
buckets. So an open overview costs no extra reads for them.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import redis

from config.settings import Settings
from worker.console import reads
from worker.console.reads import SHORT_BYTES, clip, entry_ms
from worker.ops.summary import ACTIVE_STATES

#: How far back outcomes are counted, in seconds.
DEFAULT_WINDOW_S = 3600

#: The most result events read back when counting starts.
DEFAULT_SCAN = 10_000

#: Result events per read while counting.
DEFAULT_BATCH = 1000

#: The most characters a figure or a table cell shows (a kind or a job id can be anything a stray writer left).
DEFAULT_CELL_CHARS = 200

#: The outcome columns, in the order a reader wants them; any other status gets a column after these.
STATUSES = ("completed", "needs_input", "failed", "timed_out", "cancelled", "rejected")

#: The label of a rejected request's row when it named no kind.
NO_KIND = "(none)"

_BUCKET_MS = 60_000

#: What counting reads of each result event: its kind and status, each cut (kinds are short; anything longer is
#: shown cut anyway).
_FIELDS = {"kind": 4 * SHORT_BYTES, "status": SHORT_BYTES}

Table = dict[str, Any]


def table(header: list[str], rows: list[list[Any]]) -> Table:
    """A small table as the template and the script both render it."""
    return {"header": header, "rows": [[clip(str(cell), DEFAULT_CELL_CHARS) for cell in row] for row in rows]}


def _in_flight(counted: dict[str, Any]) -> str:
    """The in-flight figure; "N+" when the console read only its first `limit` jobs (a large backlog)."""
    limit, scheduled = counted.get("limit"), counted.get("scheduled", 0)
    return f"{counted['total']}+" if limit is not None and scheduled > limit else str(counted["total"])


def shape(summary: dict[str, Any]) -> dict[str, Any]:
    """`summarize()`'s answer as named figures and tables (see the module docstring)."""
    schedule = summary["schedule"]
    oldest = schedule["oldest_overdue"]
    requests = summary["streams"]["requests"]
    group = requests["group"] or {}
    lag = group.get("lag")
    workers = summary["workers"]
    figures = {
        "generated_at": summary["generated_at"],
        "in_flight": _in_flight(summary["jobs_in_flight"]),
        "scheduled": schedule["active"],
        "overdue": schedule["overdue"],
        "oldest_overdue": f"job {oldest['job_id']}, {oldest['overdue_s']:.1f} s overdue" if oldest else "none",
        "results_length": summary["streams"]["results"]["length"],
        "requests_length": requests["length"],
        "intake_group": group.get("name", "no consumer group yet"),
        "intake_consumers": group.get("consumers", 0),
        "intake_pending": group.get("pending", 0),
        "request_lag": "n/a" if not group else "unknown" if lag is None else lag,
        "workers_live": workers["live"],
        "workers": ", ".join(workers["processes"]) or "none",
    }
    by_kind = summary["jobs_in_flight"]["by_kind"]
    extra = sorted({state for states in by_kind.values() for state in states} - set(ACTIVE_STATES))
    states = [*ACTIVE_STATES, *extra]
    in_flight = table(
        ["kind", *states, "total"],
        [[kind, *(counts.get(s, 0) for s in states), sum(counts.values())] for kind, counts in by_kind.items()],
    )
    queues = table(
        ["queue", "ready", "delayed", "unacked", "dead"],
        [[name, q["ready"], q["delayed"], q["unacked"], q["dead"]] for name, q in summary["queues"].items()],
    )
    return {
        "figures": {name: clip(str(value), DEFAULT_CELL_CHARS) for name, value in figures.items()},
        "tables": {"in-flight": in_flight, "queues": queues, "polling": polling_table(summary.get("polling"))},
    }


POLLING_HEADER = ["kind", "jobs", "p50 s", "p95 s", "schedule", "calls/job", "p95 delay s", "declared calls/job"]


def polling_table(polling: dict[str, Any] | None) -> dict[str, Any]:
    """Each kind's learned state (`PollingBook.describe`) as a table."""
    rows = []
    for kind, state in ((polling or {}).get("by_kind") or {}).items():
        durations = state.get("durations_s") or {}
        schedule = state.get("schedule") or {}
        in_use = schedule.get("in_use", "?")
        expected = schedule.get(f"{in_use}_expected") or {}
        declared = schedule.get("declared_expected") or {}
        rows.append([
            kind,
            state.get("jobs", 0),
            durations.get("p50", ""),
            durations.get("p95", ""),
            in_use if in_use == "learned" else f"declared ({schedule.get('why', '')})",
            expected.get("calls", ""),
            expected.get("p95_delay_s", ""),
            declared.get("calls", ""),
        ])  # fmt: skip
    return table(POLLING_HEADER, rows)


def unavailable() -> dict[str, Any]:
    """The shape of a summary that could not be made: every figure a "?", every table empty."""
    names = "generated_at in_flight scheduled overdue oldest_overdue results_length requests_length intake_group"
    names += " intake_consumers intake_pending request_lag workers_live workers"
    figures = dict.fromkeys(names.split(), "?")
    in_flight = table(["kind", *ACTIVE_STATES, "total"], [])
    queues = table(["queue", "ready", "delayed", "unacked", "dead"], [])
    return {
        "figures": figures,
        "tables": {"in-flight": in_flight, "queues": queues, "polling": table(POLLING_HEADER, [])},
    }


class Outcomes:
    """Result events of the last `window_s` seconds counted by kind and status, in one-minute buckets; safe to
    share between the live feed's thread and page requests."""

    def __init__(self, window_s: int = DEFAULT_WINDOW_S) -> None:
        self.window_ms = window_s * 1000
        self._buckets: dict[int, Counter[tuple[str, str]]] = {}
        self._latest_ms = 0
        self._lock = threading.Lock()
        #: True when counting started from the newest `DEFAULT_SCAN` events only: older ones of the hour are missing.
        self.partial = False

    def add(self, entry_ms: int, kind: str, status: str) -> None:
        """Count one result event (an id more than the window ahead of the clock is a stray: it would empty the
        counts for good)."""
        kind, status = clip(kind, DEFAULT_CELL_CHARS), clip(status, DEFAULT_CELL_CHARS)
        with self._lock:
            if self._latest_ms and entry_ms > self._latest_ms + self.window_ms:
                return
            bucket = self._buckets.setdefault(entry_ms // _BUCKET_MS, Counter())
            bucket[(kind or NO_KIND, status or "?")] += 1
            self._latest_ms = max(self._latest_ms, entry_ms)

    def advance(self, now_ms: int) -> None:
        """Move the window to end at `now_ms` (Redis clock), even when no event arrived."""
        with self._lock:
            self._latest_ms = max(self._latest_ms, now_ms)

    def table(self) -> Table:
        """The counts as a table: one row per kind, one column per status, and a total."""
        with self._lock:
            oldest = (self._latest_ms - self.window_ms) // _BUCKET_MS
            for minute in [m for m in self._buckets if m < oldest]:
                del self._buckets[minute]
            totals: Counter[tuple[str, str]] = Counter()
            for bucket in self._buckets.values():
                totals.update(bucket)
        statuses = [*STATUSES, *sorted({s for _, s in totals} - set(STATUSES))]
        kinds = sorted({k for k, _ in totals})
        rows = [[kind, *(totals[(kind, s)] for s in statuses)] for kind in kinds]
        return table(["kind", *statuses, "total"], [[*row, sum(row[1:])] for row in rows])

    def load(self, client: redis.Redis, settings: Settings, upto_id: str, now_ms: int) -> None:
        """Count the result events of the window that ends at `now_ms`, up to entry `upto_id` (the live feed reads
        on from there), newest first, at most `DEFAULT_SCAN`."""
        stream = settings.cekura_results_stream
        since = max(0, now_ms - self.window_ms)
        upper, scanned = upto_id, 0
        self.advance(now_ms)
        while scanned < DEFAULT_SCAN:
            got = reads.entries(
                client,
                stream,
                _FIELDS,
                start=upper,
                end=f"{since}-0",
                count=min(DEFAULT_BATCH, DEFAULT_SCAN - scanned),
                reverse=True,
            )
            for entry_id, fields in got.rows:
                self.add(entry_ms(entry_id), fields.get("kind", ""), fields.get("status", ""))
            scanned += got.scanned
            if got.ended:
                return
            upper = f"({got.last}"
        self.partial = True
