"""A snapshot of the service read from Redis: jobs in flight by kind and state, queue depths, overdue work,
stream lengths, live workers and each kind's polling schedule (learned or declared). `cekura-worker status`
prints it; the metrics endpoint turns it into gauges.

Everything comes from Redis, so the answer is the same whichever process or container asks. Job hashes are
read with pipelined `HMGET` in batches, so a large backlog costs a few round trips per thousand jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis

from config.settings import Settings
from worker.cekura.polling import PollingBook
from worker.runtime import eviction
from worker.runtime.connection import server_ms
from worker.runtime.heartbeat import live_workers
from worker.store.jobs import as_text, iso_from_ms

#: Job ids read from the schedule per pipelined batch of `HMGET`s.
DEFAULT_BATCH = 1000

#: The states of a job that has not finished, in the order a job goes through them.
ACTIVE_STATES = ("queued", "starting", "polling", "waiting")


def _batches(client: redis.Redis, key: str) -> Iterator[list[str]]:
    batch: list[str] = []
    for member, _ in client.zscan_iter(key, count=DEFAULT_BATCH):
        batch.append(as_text(member))
        if len(batch) >= DEFAULT_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def jobs_in_flight(client: redis.Redis, settings: Settings, *, limit: int | None = None) -> dict[str, dict[str, int]]:
    """Active jobs as {kind: {state: count}}; jobs whose record is gone or already finished are not counted, nor is
    a schedule member whose key holds something else. With `limit`, at most that many jobs are read (the console's
    overview bounds its cost so; `status` and the metrics count them all)."""
    prefix = settings.key("job") + ":"
    counts: dict[str, dict[str, int]] = {}
    seen: set[str] = set()  # ZSCAN may return a member twice while the set changes
    for batch in _batches(client, settings.key("schedule")):
        if limit is not None and len(seen) >= limit:
            break
        fresh = [job_id for job_id in batch if job_id not in seen]
        seen.update(fresh)
        pipe = client.pipeline(transaction=False)
        for job_id in fresh:
            pipe.hmget(prefix + job_id, "kind", "state")
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):  # WRONGTYPE: a stray key where a job would be
                continue
            kind, state = reply
            if state is None or as_text(state) == "finished":
                continue
            by_state = counts.setdefault(as_text(kind) if kind is not None else "", {})
            by_state[as_text(state)] = by_state.get(as_text(state), 0) + 1
    return counts


def queue_depths(client: redis.Redis, settings: Settings) -> dict[str, dict[str, int]]:
    """Per Dramatiq queue: ready, delayed (`.ZQ`), unacked (held by live consumers) and dead-lettered (`.XQ`)."""
    ns = settings.key("dramatiq")
    queue = settings.cekura_queue
    consumers = [as_text(m) for m in client.zrange(f"{ns}:__heartbeats__", 0, -1)]
    pipe = client.pipeline(transaction=False)
    pipe.llen(f"{ns}:{queue}")
    pipe.zcard(f"{ns}:{queue}.ZQ")
    pipe.zcard(f"{ns}:{queue}.XQ")
    for consumer in consumers:
        pipe.scard(f"{ns}:__acks__.{consumer}.{queue}")
    ready, delayed, dead, *unacked = pipe.execute()
    return {queue: {"ready": int(ready), "delayed": int(delayed), "unacked": sum(unacked), "dead": int(dead)}}


def schedule_view(client: redis.Redis, settings: Settings, now_ms: int) -> dict[str, Any]:
    """How many active jobs are scheduled, how many are overdue, and the most overdue one.

    A job's score is when its next step is due plus the reconcile grace, so a job past its score is one the
    reconciler will re-send: a sign of a stalled or overloaded fleet when it stays above zero.
    """
    key = settings.key("schedule")
    pipe = client.pipeline(transaction=False)
    pipe.zcard(key)
    pipe.zcount(key, "-inf", now_ms)
    pipe.zrange(key, 0, 0, withscores=True)
    active, overdue, head = pipe.execute()
    oldest = None
    if head and head[0][1] <= now_ms:
        job_id, score = head[0]
        oldest = {"job_id": as_text(job_id), "overdue_s": round((now_ms - score) / 1000, 3)}
    return {"active": int(active), "overdue": int(overdue), "oldest_overdue": oldest}


def stream_view(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """Lengths of the results and request streams, and the intake consumer group's pending entries and lag."""
    results = settings.cekura_results_stream
    requests = settings.cekura_requests_stream
    pipe = client.pipeline(transaction=False)
    pipe.xlen(results)
    pipe.xlen(requests)
    results_len, requests_len = pipe.execute()
    group: dict[str, Any] | None = None
    try:
        groups = client.xinfo_groups(requests)
    except redis.ResponseError:  # the stream doesn't exist yet: no worker has started its intake
        groups = []
    for info in groups:
        if as_text(info["name"]) == settings.cekura_intake_group:
            lag = info.get("lag")  # None when Redis can't tell (entries deleted inside the unread range)
            group = {
                "name": settings.cekura_intake_group,
                "consumers": int(info["consumers"]),
                "pending": int(info["pending"]),
                "lag": None if lag is None else int(lag),
                "last_delivered_id": as_text(info["last-delivered-id"]),
            }
    return {
        "results": {"name": results, "length": int(results_len)},
        "requests": {"name": requests, "length": int(requests_len), "group": group},
    }


def polling_view(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """Per kind: jobs recorded, duration percentiles, and the schedule in use with its expected calls and delays
    (`PollingBook.describe`); one HGETALL per kind."""
    from actors.kinds import KINDS  # plain declarations: no Dramatiq, no broker

    book = PollingBook(client, settings)
    return {
        "learning": settings.cekura_learn_polling,
        "by_kind": {name: book.describe(name, kind.poll_plan) for name, kind in sorted(KINDS.items())},
    }


def summarize(client: redis.Redis, settings: Settings, *, limit: int | None = None) -> dict[str, Any]:
    """The whole snapshot as a JSON-serialisable dict (`limit`: see `jobs_in_flight`; `jobs_in_flight.counted`
    then says how many of `scheduled` were read)."""
    now_ms = server_ms(client)
    in_flight = jobs_in_flight(client, settings, limit=limit)
    workers = sorted(live_workers(client, settings))
    memory_policy = eviction.policy(client)
    return {
        "redis": settings.redis_url_redacted,
        "key_prefix": settings.cekura_key_prefix,
        "generated_at": iso_from_ms(now_ms),
        "jobs_in_flight": {
            "total": sum(sum(states.values()) for states in in_flight.values()),
            **({"scheduled": client.zcard(settings.key("schedule")), "limit": limit} if limit is not None else {}),
            "by_kind": {kind: dict(sorted(states.items())) for kind, states in sorted(in_flight.items())},
        },
        "queues": queue_depths(client, settings),
        "schedule": schedule_view(client, settings, now_ms),
        "streams": stream_view(client, settings),
        "workers": {"live": len(workers), "processes": workers},
        "polling": polling_view(client, settings),
        "redis_memory": {"policy": memory_policy, "problem": eviction.problem(client, memory_policy)},
        "redis_replicas": {
            "connected": int(client.info("replication").get("connected_slaves", 0)),
            "required": settings.cekura_redis_min_replicas,
        },
    }


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render_table(summary: dict[str, Any]) -> str:
    """The snapshot as plain text for a terminal."""
    lines = [f"cekura-worker status at {summary['generated_at']} ({summary['redis']}, prefix {summary['key_prefix']})"]

    in_flight = summary["jobs_in_flight"]
    lines += ["", f"Jobs in flight: {in_flight['total']}"]
    if in_flight["by_kind"]:
        extra = sorted({s for states in in_flight["by_kind"].values() for s in states} - set(ACTIVE_STATES))
        states = [*ACTIVE_STATES, *extra]
        rows = [
            [kind, *(str(counts.get(state, 0)) for state in states), str(sum(counts.values()))]
            for kind, counts in in_flight["by_kind"].items()
        ]
        lines += _table(["KIND", *(state.upper() for state in states), "TOTAL"], rows)

    lines += ["", "Queues:"]
    rows = [
        [name, str(q["ready"]), str(q["delayed"]), str(q["unacked"]), str(q["dead"])]
        for name, q in summary["queues"].items()
    ]
    lines += _table(["QUEUE", "READY", "DELAYED", "UNACKED", "DEAD"], rows)

    schedule = summary["schedule"]
    oldest = schedule["oldest_overdue"]
    overdue = f"oldest: job {oldest['job_id']}, {oldest['overdue_s']:.1f} s overdue" if oldest else "nothing overdue"
    lines += ["", f"Schedule: {schedule['active']} active, {schedule['overdue']} overdue ({overdue})"]

    streams = summary["streams"]
    results, requests = streams["results"], streams["requests"]
    lines.append(f"Results stream {results['name']}: {results['length']} entries")
    group = requests["group"]
    if group is None:
        intake = "no consumer group yet"
    else:
        lag = "unknown" if group["lag"] is None else str(group["lag"])
        intake = f"group {group['name']}: {group['consumers']} consumers, {group['pending']} pending, lag {lag}"
    lines.append(f"Request stream {requests['name']}: {requests['length']} entries; {intake}")

    workers = summary["workers"]
    listed = ", ".join(workers["processes"]) if workers["processes"] else "none"
    lines.append(f"Workers: {workers['live']} live ({listed})")
    replicas = summary.get("redis_replicas")
    if replicas is not None and replicas["required"]:
        short = " (too few: no job can be accepted or ended)" if replicas["connected"] < replicas["required"] else ""
        lines.append(f"Redis replicas: {replicas['connected']} connected, {replicas['required']} required{short}")
    memory = summary.get("redis_memory")
    if memory is not None:
        lines.append(
            f"Redis memory policy: {memory['policy'] or 'unknown'}"
            + (f"; WARNING: {memory['problem']}" if memory["problem"] else "")
        )
    if "polling" in summary:
        lines += ["", *_polling_lines(summary["polling"])]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 1000 else f"{value:.3g}"


def _polling_lines(polling: dict[str, Any]) -> list[str]:
    """Per kind: the schedule in use, durations seen, and the schedule's expected calls and delays (the declared
    one's in brackets), so calls per job on Cekura's usage page can be checked against it; then the poll times."""
    state = "on" if polling["learning"] else "off (CEKURA_LEARN_POLLING)"
    lines = [f"Polling (learning {state}; expected per job, the declared schedule's in brackets):"]
    rows, schedules = [], []
    for kind, view in polling["by_kind"].items():
        durations = view["durations_s"] or {}
        schedule, declared = view["schedule"], view["declared"]
        mine = schedule.get("learned_expected") or schedule.get("declared_expected")
        base = schedule.get("declared_expected")
        expect = ["-", "-", "-"]
        if mine and base:
            expect = [f"{mine[key]:.3g} ({base[key]:.3g})" for key in ("calls", "mean_delay_s", "p95_delay_s")]
        jobs = str(view["jobs"])
        rows.append(
            [schedule["in_use"], kind, jobs, *(_seconds(durations.get(q)) for q in ("p50", "p95", "p99")), *expect]
        )
        if schedule["in_use"] == "learned":
            polls = ", ".join(_seconds(t) for t in schedule["first_polls_s"])
            after = f"every {_seconds(declared['max_s'])} s after {_seconds(schedule['max_s_after'])} s"
            schedules.append(f"  learned {kind}: {polls}, ...; {after}")
        else:
            first, cap = _seconds(declared["initial_s"]), _seconds(declared["max_s"])
            schedules.append(f"  declared {kind}: {first} s x{declared['factor']:g} to {cap} s ({schedule['why']})")
    header = ["SCHEDULE", "KIND", "JOBS", "P50 S", "P95 S", "P99 S", "CALLS/JOB", "DELAY MEAN S", "DELAY P95 S"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    return [*lines, "Poll times in use (seconds after the start call answered):", *schedules]
