"""Prometheus metrics. Worker processes write to `PROMETHEUS_MULTIPROC_DIR` (the supervisor sets it), and the
supervisor serves the merged view, so counts are right with several processes in one container.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOBS_SUBMITTED = Counter("cekura_jobs_submitted_total", "Jobs accepted (new job ids).", ["kind"])
JOBS_STARTED = Counter("cekura_jobs_started_total", "Jobs whose Cekura start call succeeded.", ["kind"])
JOBS_REJECTED = Counter("cekura_jobs_rejected_total", "Requests rejected as malformed.")
JOBS_FINISHED = Counter("cekura_jobs_finished_total", "Jobs that ended, by outcome.", ["kind", "outcome"])
CEKURA_CALLS = Counter("cekura_api_calls_total", "Calls to the Cekura API.", ["endpoint", "status"])
RETRIES = Counter("cekura_retries_total", "Transient failures retried with backoff.", ["kind", "reason"])
RATE_LIMIT_WAITS = Counter("cekura_rate_limit_waits_total", "Calls deferred by the fleet-wide limit.", ["reason"])
RECONCILED = Counter("cekura_reconciled_total", "Overdue jobs re-scheduled by the reconciler.", ["state"])
POLL_LATENESS = Histogram(
    "cekura_poll_lateness_seconds",
    "How late a delayed message ran after its due time.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOB_DURATION = Histogram(
    "cekura_job_duration_seconds",
    "Time from submission to the result event.",
    ["kind", "outcome"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
