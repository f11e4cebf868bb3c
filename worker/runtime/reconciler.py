"""The reconciler: re-sends the message of any active job whose next step is overdue by the grace period.

A job can be stranded by a crash between recording a step and sending the next message, by a worker killed
while holding messages, or by a Redis blip. Every active job carries a due time in the schedule; the Lua
script hands each overdue job to exactly one reconciler and pushes its due time ahead. The re-sent message
carries the job's current `seq`, so if the original was merely late, whichever runs second finds the job
moved on and does nothing. Each pass also runs Dramatiq's queue maintenance, which returns dead workers'
unacked messages, instead of leaving that to chance.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import dramatiq
import redis
import structlog

from actors import names
from worker import tracing
from worker.ops import metrics
from worker.runtime.app import Runtime
from worker.store.jobs import DEFAULT_RECONCILE_BATCH

log = structlog.get_logger(__name__)


class Reconciler(threading.Thread):
    """Runs `reconcile_once` every `CEKURA_RECONCILE_INTERVAL_S` (with jitter) until stopped."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(name="cekura-reconciler", daemon=True)
        self.rt = rt
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        # The wait before each pass is also the backoff after a failed one.
        interval = self.rt.settings.cekura_reconcile_interval_s
        while not self._stopping.wait(interval * random.uniform(0.8, 1.2)):
            try:
                self.rt.broker.run_maintenance()
                reconcile_once(self.rt)
            except redis.RedisError as exc:
                log.warning("reconcile_redis_error", error=str(exc))
            except Exception:  # a bug (or MemoryError) must not end the thread unseen: log it and go on
                log.exception("reconcile_loop_failed", retry_in_s=interval)


def reconcile_once(rt: Runtime) -> int:
    """Re-send the next message of every overdue job; returns how many."""
    queue = rt.settings.cekura_queue
    total = 0
    while True:
        overdue, skipped = rt.store.take_overdue()
        for job_id in skipped:
            log.error("schedule_entry_skipped", job_id=job_id, reason="its key holds something other than a job record")
        for job_id, state, seq in overdue:
            message: dramatiq.Message[Any]
            if state in ("polling", "waiting"):  # a waiting job's poll times it out at its deadline
                message = dramatiq.Message(queue, names.POLL, (job_id, seq), {}, {})
            else:
                message = dramatiq.Message(queue, names.START, (job_id,), {}, {})
            rt.broker.enqueue(message)
            metrics.RECONCILED.labels(state).inc()
            ids = _trace_ids(rt, job_id) if tracing.enabled else {}
            log.warning("job_rescheduled", job_id=job_id, state=state, seq=seq, reason="next step overdue", **ids)
        total += len(overdue)
        if len(overdue) < DEFAULT_RECONCILE_BATCH:
            return total


def _trace_ids(rt: Runtime, job_id: str) -> dict[str, str]:
    """The job span's `trace_id` and `span_id` for the line about a job this pass re-sent (nothing if it has none)."""
    try:
        traceparent = rt.store.client.hget(rt.store.job_key(job_id), "traceparent")
    except redis.RedisError:  # (a key that holds something else answers WRONGTYPE) the line goes out without them
        return {}
    return tracing.log_ids(traceparent.decode()) if isinstance(traceparent, bytes) else {}
