"""The `/metrics` endpoint of `cekura-worker run`: counters and histograms merged across the worker processes,
plus gauges read from Redis at scrape time.

Worker processes write their counters and histograms to files in `PROMETHEUS_MULTIPROC_DIR`
(`worker/ops/metrics.py` defines them); `MultiProcessCollector` adds them up per label set, so the numbers are
right however many processes there are, and a restarted process's counts are kept. What is *in flight* (jobs,
queued messages, overdue work, live workers) is state in Redis, not in any process, so `RedisCollector` reads it
when Prometheus scrapes, with the same code as `cekura-worker status`; every replica reports the same fleet-wide
values, so aggregate those gauges with `max`, not `sum`.

Two of those gauges exist for autoscalers (KEDA, see `deploy/`): `cekura_steps_due`, the Dramatiq messages due
now that no worker has taken, and `cekura_oldest_due_seconds`, how long the oldest of them has waited. A fleet
that keeps up holds both near zero whatever its load, so they say "add workers" without knowing the cadence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis
import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.settings import Settings
from worker.errors import ConfigError
from worker.ops.summary import ACTIVE_STATES, summarize
from worker.runtime.connection import connect, time_ms

log = structlog.get_logger(__name__)

#: Address the metrics server binds: all interfaces, since in a container Prometheus scrapes from outside.
DEFAULT_METRICS_ADDR = "0.0.0.0"

#: Socket timeouts of the scrape-time Redis reads: a slow Redis must not hang the scrape.
DEFAULT_SCRAPE_TIMEOUT_S = 2.0


class RedisCollector(Collector):
    """Gauges of fleet-wide state read from Redis on every scrape; `cekura_redis_up` is 0 when that read fails."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or connect(
            settings,
            socket_timeout=DEFAULT_SCRAPE_TIMEOUT_S,
            socket_connect_timeout=DEFAULT_SCRAPE_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
        )

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("cekura_redis_up", "1 when the scrape-time read of Redis succeeded, else 0.")
        try:
            summary = summarize(self.client, self.settings)
            due = due_steps(self.client, self.settings)
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics_redis_read_failed", error=f"{type(exc).__name__}: {exc}")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from gauges(summary)
        yield from due_gauges(due)


def gauges(summary: dict[str, Any]) -> Iterable[Metric]:
    """Prometheus gauges for a `worker.ops.summary.summarize` snapshot."""
    from actors.kinds import KINDS  # plain declarations: no Dramatiq, no broker

    in_flight = GaugeMetricFamily(
        "cekura_jobs_in_flight", "Jobs submitted and not yet finished, by kind and state.", labels=["kind", "state"]
    )
    by_kind: dict[str, dict[str, int]] = summary["jobs_in_flight"]["by_kind"]
    for kind in sorted(set(KINDS) | set(by_kind)):
        counts = by_kind.get(kind, {})
        for state in sorted(set(ACTIVE_STATES) | set(counts)):
            in_flight.add_metric([kind, state], counts.get(state, 0))
    yield in_flight

    queued = GaugeMetricFamily(
        "cekura_queue_messages",
        "Dramatiq messages by queue and state: ready, delayed (polls and retries waiting for their time), "
        "unacked (held by a worker) and dead (dead-lettered).",
        labels=["queue", "state"],
    )
    for queue, depths in summary["queues"].items():
        for state, count in depths.items():
            queued.add_metric([queue, state], count)
    yield queued

    schedule = summary["schedule"]
    yield GaugeMetricFamily(
        "cekura_jobs_overdue", "Active jobs past their next step's due time plus grace.", value=schedule["overdue"]
    )
    oldest = schedule["oldest_overdue"]
    yield GaugeMetricFamily(
        "cekura_oldest_overdue_seconds",
        "How far past due (plus grace) the most overdue active job is; 0 when none is.",
        value=oldest["overdue_s"] if oldest else 0.0,
    )

    streams = summary["streams"]
    length = GaugeMetricFamily("cekura_stream_length", "Entries in the results and request streams.", labels=["stream"])
    length.add_metric(["results"], streams["results"]["length"])
    length.add_metric(["requests"], streams["requests"]["length"])
    yield length
    group = streams["requests"]["group"] or {}
    yield GaugeMetricFamily(
        "cekura_requests_pending",
        "Request-stream entries read by a worker and not yet acknowledged.",
        value=group.get("pending", 0),
    )
    if group.get("lag") is not None:
        yield GaugeMetricFamily(
            "cekura_requests_lag", "Request-stream entries not yet read by any worker.", value=group["lag"]
        )

    yield GaugeMetricFamily(
        "cekura_live_worker_processes", "Worker processes with a fresh heartbeat.", value=summary["workers"]["live"]
    )


def _due_ms(data: bytes | None) -> int | None:
    """When a message on the ready queue became due: its `due_ms` option if it was delayed, else when it was sent."""
    if data is None:  # acked and deleted between the two round trips
        return None
    try:
        message = json.loads(data)
        due = message.get("options", {}).get("due_ms", message.get("message_timestamp"))
        return int(due)
    except (ValueError, TypeError, AttributeError):
        return None


def due_steps(client: redis.Redis, settings: Settings) -> tuple[int, float]:
    """(Dramatiq messages due now and not yet taken by a worker, seconds the oldest of them has been due).

    Due means on the ready queue (`<namespace>:<queue>`), or in the delayed set (`<queue>.ZQ`) with an eta at or
    before the Redis server's clock, which is what the ZQ scores are written with. Messages a worker has popped
    are not counted: they are running or about to. The oldest is the earlier of the delayed set's head, if due,
    and the ready queue's head (every push is an RPUSH and every fetch pops from the left, so the head waited
    longest). Both matter: each fetch moves up to `DEFAULT_PROMOTE_LIMIT` due messages onto the ready queue, so
    a backlog of a saturated fleet sits there rather than in the delayed set. Two round trips: the count of due
    delayed messages needs the server's time first.
    """
    queue = f"{settings.key('dramatiq')}:{settings.cekura_queue}"
    delayed = f"{queue}.ZQ"
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.llen(queue)
    pipe.lindex(queue, 0)
    pipe.zrange(delayed, 0, 0, withscores=True)
    time_reply, ready, head_id, delayed_head = pipe.execute()
    now_ms = time_ms(time_reply)

    pipe = client.pipeline(transaction=False)
    pipe.zcount(delayed, "-inf", now_ms)
    if head_id is not None:
        pipe.hget(f"{queue}.msgs", head_id)
    delayed_due, *head_data = pipe.execute()

    oldest_ms = now_ms
    if delayed_head and delayed_head[0][1] <= now_ms:
        oldest_ms = min(oldest_ms, int(delayed_head[0][1]))
    head_due = _due_ms(head_data[0]) if head_data else None
    if head_due is not None:
        oldest_ms = min(oldest_ms, head_due)
    return int(ready) + int(delayed_due), round((now_ms - oldest_ms) / 1000, 3)


def due_gauges(due: tuple[int, float]) -> Iterable[Metric]:
    """The autoscaling gauges for a `due_steps` reading."""
    steps, oldest_s = due
    yield GaugeMetricFamily(
        "cekura_steps_due",
        "Dramatiq messages (starts, polls, retries) due now and not yet taken by a worker, fleet-wide.",
        value=steps,
    )
    yield GaugeMetricFamily(
        "cekura_oldest_due_seconds",
        "How long the oldest due message not yet taken by a worker has been due; 0 when none is.",
        value=oldest_s,
    )


def build_registry(settings: Settings, multiproc_dir: str | None = None) -> CollectorRegistry:
    """A registry with the merged per-process metrics and the scrape-time Redis gauges."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]  # untyped upstream
    registry.register(RedisCollector(settings))
    return registry


def _clear_stale_files(directory: str) -> int:
    """Delete metric files a previous run left, as prometheus_client requires before the processes start."""
    stale = list(Path(directory).glob("*.db"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def serve_metrics(settings: Settings) -> None:
    """Serve `/metrics` on `CEKURA_METRICS_PORT` from a background thread; call before starting worker processes."""
    # prometheus_client's multiprocess contract is this environment variable; the supervisor sets it.
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if settings.cekura_metrics_port is None:
        raise ConfigError("CEKURA_METRICS_PORT is not set: there is no port to serve /metrics on")
    cleared = _clear_stale_files(directory)
    start_http_server(
        settings.cekura_metrics_port, addr=DEFAULT_METRICS_ADDR, registry=build_registry(settings, directory)
    )
    log.info("metrics_serving", port=settings.cekura_metrics_port, multiproc_dir=directory, stale_files_cleared=cleared)
