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
from worker.ops.summary import ACTIVE_STATES
from worker.redact import redact
from worker.store.jobs import as_text

#: How far back outcomes are counted, in seconds.
DEFAULT_WINDOW_S = 3600

#: The most result events read back when counting starts.
DEFAULT_SCAN = 10_000

#: Result events per `XREVRANGE` while counting.
DEFAULT_BATCH = 1000

#: The outcome columns, in the order a reader wants them; any other status gets a column after these.
STATUSES = ("completed", "needs_input", "failed", "timed_out", "cancelled", "rejected")

#: The label of a rejected request's row when it named no kind.
NO_KIND = "(none)"

_BUCKET_MS = 60_000

Table = dict[str, Any]


def table(header: list[str], rows: list[list[Any]]) -> Table:
    """A small table as the template and the script both render it."""
    return {"header": header, "rows": [[redact(str(cell)) for cell in row] for row in rows]}


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
        "in_flight": summary["jobs_in_flight"]["total"],
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
        "figures": {name: redact(str(value)) for name, value in figures.items()},
        "tables": {"in-flight": in_flight, "queues": queues},
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
        with self._lock:
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
            batch = client.xrevrange(stream, max=upper, min=f"{since}-0", count=DEFAULT_BATCH)
            for entry_id, raw in batch:
                fields = {as_text(k): as_text(v) for k, v in raw.items() if as_text(k) in ("kind", "status")}
                self.add(int(as_text(entry_id).split("-")[0]), fields.get("kind", ""), fields.get("status", ""))
            scanned += len(batch)
            if len(batch) < DEFAULT_BATCH:
                return
            upper = f"({as_text(batch[-1][0])}"
        self.partial = True
