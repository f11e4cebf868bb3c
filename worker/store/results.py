"""Which job polls which Cekura result (an evaluator run's id), so that a result webhook can find the job.

Kept beside `JobStore`, whose key layout it shares: `<prefix>:result:<result id>` holds the job id, written when
the job learns the result's id (its start answered, or a lost start was found again) and expiring with the job.
"""

from __future__ import annotations

import functools
import uuid

from worker.store import scripts
from worker.store.jobs import JobStore, as_text


class ResultIndex:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    @functools.cached_property
    def _hasten(self) -> scripts.LuaScript:
        """Loaded on first use: the workers make a `ResultIndex` for each run they index and never hasten."""
        return scripts.load(self.store.client, "hasten")

    def key(self, result_id: str) -> str:
        return self.store.settings.key("result", result_id)

    def add(self, result_id: str, job_id: str, ttl_ms: int) -> None:
        """Record that `job_id` polls `result_id`, for `ttl_ms` (the job's time left plus its record's TTL)."""
        self.store.client.set(self.key(result_id), job_id, px=max(1, ttl_ms))

    def hasten(self, result_id: str, *, queue_name: str, namespace: str, poll_actor: str) -> tuple[str, str]:
        """Make the job polling `result_id` poll now (`hasten.lua`); returns (verdict, job_id). The verdict is
        `unknown` when no job polls that result, else the script's (`ok`, `finished`, `busy`, ...)."""
        raw = self.store.client.get(self.key(result_id))
        if raw is None:
            return "unknown", ""
        job_id = as_text(raw)
        message_id = str(uuid.uuid4())
        queue = f"{namespace}:{queue_name}"
        reply = self._hasten(
            keys=[self.store.job_key(job_id), f"{queue}.msgs", queue],
            args=[job_id, queue_name, poll_actor, message_id, f"webhook.{message_id}", result_id],
        )
        return as_text(reply[0]), job_id
