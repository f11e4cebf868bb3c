"""Helpers for `test_failover.py`: a key prefix of its own, a submitter that knows which jobs were really accepted,
and readers of the result stream, schedule and Dramatiq keys under that prefix (the shared helpers in `conftest.py`
read the default `cekura:` names).

"Accepted" here means more than "`submit` returned": replication is asynchronous, so a job a primary acknowledged
and then lost in a failover (it never reached the replica) is gone, as the README's *Redis persistence* says. So
after each submission the submitter asks, on one connection and in one round trip, whether the job's record is on
the primary that answers and `WAIT 1 1000` for a replica to hold everything written so far (a `SET` of a marker key
first makes the connection's replication offset cover the job: `WAIT` waits for this connection's own writes). A
job counts as accepted only when both say yes; a job whose submission raised, or whose check said no, may end once
or never. The service's own `CEKURA_REDIS_MIN_REPLICAS` (0 by default) is left alone: the test does the `WAIT`
itself, so what it calls accepted does not depend on that setting.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.client import Client

#: The machine's own Redis, which these tests must never reach.
MACHINE_REDIS_PORT = 6379

#: Each submission is tried this many times on a Redis error, as a producer would (same job id: no duplicate).
SUBMIT_TRIES = 3


def unique_prefix() -> str:
    """A key prefix no other test (and no deployment) uses: `failover-<random>`."""
    return f"failover-{secrets.token_hex(4)}"


def isolated_env(prefix: str) -> dict[str, str]:
    """Settings that put every key the service writes under `prefix`, the streams included (their default names
    don't follow `CEKURA_KEY_PREFIX`)."""
    return {
        "CEKURA_KEY_PREFIX": prefix,
        "CEKURA_REQUESTS_STREAM": f"{prefix}:requests",
        "CEKURA_RESULTS_STREAM": f"{prefix}:results",
        "CEKURA_PROGRESS_STREAM": f"{prefix}:progress",
    }


def isolated_settings(prefix: str) -> dict[str, str]:
    """`isolated_env` as `load_settings` keyword arguments."""
    return {name.lower(): value for name, value in isolated_env(prefix).items()}


def entry_ms(entry_id: bytes | str) -> int:
    """The server time (epoch ms) a stream entry id was made at."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def results(raw: redis.Redis, prefix: str) -> list[tuple[int, dict[str, str]]]:
    """Every result event under `prefix`: (entry time in ms, fields)."""
    out = []
    for entry_id, fields in raw.xrange(f"{prefix}:results"):
        out.append((entry_ms(entry_id), {k.decode(): v.decode() for k, v in fields.items()}))
    return out


def answered(event: dict[str, str]) -> str:
    return event["job_id"] or event.get("requested_job_id", "")


def first_event_after(raw: redis.Redis, prefix: str, after_ms: int) -> int | None:
    """The entry time of the first result event made after `after_ms` (server clock), if any yet."""
    entries = raw.xrange(f"{prefix}:results", min=f"{after_ms + 1}-0", count=1)
    return entry_ms(entries[0][0]) if entries else None


@dataclass
class Submissions:
    """What a `Submitter` did: jobs accepted (recorded, and on a replica too) and jobs whose fate is open."""

    accepted: dict[str, Any] = field(default_factory=dict)
    unconfirmed: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    #: Submissions that hit a Redis error at least once, and how long the slowest one took.
    retried: int = 0
    slowest_s: float = 0.0

    @property
    def attempted(self) -> set[str]:
        return set(self.accepted) | self.unconfirmed

    def merge(self, other: Submissions) -> None:
        self.accepted.update(other.accepted)
        self.unconfirmed |= other.unconfirmed
        self.errors.update(other.errors)
        self.retried += other.retried
        self.slowest_s = max(self.slowest_s, other.slowest_s)


class Submitter(threading.Thread):
    """Submits `specs` (system `JobSpec`s) one every `interval_s` as jobs `<id_prefix>-<n>`, every `stream_every`-th
    through the request stream (XADD) and the rest through `client`; records which were accepted (see the module
    docstring). `start()` runs it in the background, `run()` right here."""

    def __init__(
        self,
        client: Client,
        specs: list[Any],
        *,
        prefix: str,
        interval_s: float,
        deadline_s: float,
        stream_every: int = 3,
        id_prefix: str | None = None,
    ) -> None:
        super().__init__(name="failover-submitter", daemon=True)
        self.client = client
        self.specs = specs
        self.id_prefix = id_prefix or prefix
        self.interval_s = interval_s
        self.deadline_s = deadline_s
        self.stream_every = stream_every
        self.done = Submissions()
        self.count = 0  # submissions made so far (read by the test while this runs)
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            for i, spec in enumerate(self.specs):
                job_id = f"{self.id_prefix}-{i:04d}"
                started = time.monotonic()
                if self._submit(i, job_id, spec):
                    self.done.accepted[job_id] = spec
                else:
                    self.done.unconfirmed.add(job_id)
                self.done.slowest_s = max(self.done.slowest_s, time.monotonic() - started)
                self.count = i + 1
                time.sleep(self.interval_s)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.failure = exc

    def _submit(self, i: int, job_id: str, spec: Any) -> bool:
        params = spec.params_for(job_id)
        via_stream = bool(self.stream_every) and i % self.stream_every == 0
        for attempt in range(SUBMIT_TRIES):
            try:
                if via_stream:
                    request = {"kind": spec.kind, "params": params, "job_id": job_id, "deadline_s": self.deadline_s}
                    return self._xadd_confirmed(json.dumps(request))
                self.client.submit(spec.kind, params, job_id=job_id, deadline_s=self.deadline_s)
                return self._confirmed(job_id)
            except redis.RedisError as exc:
                self.done.errors[type(exc).__name__] += 1
                if attempt == 0:
                    self.done.retried += 1
        return False

    def _confirmed(self, job_id: str) -> bool:
        """The job's record is on the primary that answers, and a replica has all this connection wrote."""
        pipe = self.client.redis.pipeline(transaction=False)
        pipe.exists(self.client.settings.key("job", job_id))
        pipe.set(self.client.settings.key("test-wait-marker"), job_id)
        pipe.execute_command("WAIT", 1, 1000)
        try:
            exists, _, replicas = pipe.execute()
        except redis.RedisError as exc:
            self.done.errors[f"confirm:{type(exc).__name__}"] += 1
            return False
        return bool(exists) and int(replicas) >= 1

    def _xadd_confirmed(self, request: str) -> bool:
        """XADD the request and `WAIT` on the same connection: accepted once a replica holds the entry."""
        pipe = self.client.redis.pipeline(transaction=False)
        pipe.xadd(self.client.settings.cekura_requests_stream, {"request": request})
        pipe.execute_command("WAIT", 1, 1000)
        _, replicas = pipe.execute()  # a Redis error here is retried by `_submit` (the same job id: harmless)
        return int(replicas) >= 1


def count_events(raw: redis.Redis, prefix: str, done: Submissions) -> Counter[str]:
    """Exactly one result event per accepted job; at most one for a job whose acceptance is unknown; none for a
    job nobody submitted. Returns the events per job id."""
    counts = Counter(answered(event) for _, event in results(raw, prefix))
    missing = sorted(set(done.accepted) - set(counts))
    twice = {job_id: n for job_id, n in counts.items() if n > 1}
    strangers = sorted(set(counts) - done.attempted)
    assert not missing, f"{len(missing)} accepted jobs have no result event: {missing[:10]}"
    assert not twice, f"{len(twice)} jobs have more than one result event: {dict(list(twice.items())[:10])}"
    assert not strangers, f"result events for jobs nobody submitted: {strangers[:10]}"
    return counts


def wait_accepted_finished(raw: redis.Redis, prefix: str, done: Submissions, timeout: float, tail: str = "") -> None:
    """Wait until every accepted job has a result event on `raw` (the current primary), and every other job there
    has ended too (one whose acceptance is unknown but which reached this primary runs like any other)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {answered(event) for _, event in results(raw, prefix)}
        missing = set(done.accepted) - seen
        if not missing and raw.zcard(f"{prefix}:schedule") == 0:
            return
        if time.monotonic() > deadline:
            import pytest

            states = Counter(_state(raw, prefix, job_id) for job_id in missing)
            scheduled = raw.zrange(f"{prefix}:schedule", 0, 4, withscores=True)
            pytest.fail(
                f"{len(missing)} of {len(done.accepted)} accepted jobs have no result event after {timeout:g}s "
                f"(their states: {dict(states)}), e.g. {sorted(missing)[:5]}; still scheduled: {scheduled}\n{tail}"
            )
        time.sleep(0.25)


def _state(raw: redis.Redis, prefix: str, job_id: str) -> str:
    value = raw.hget(f"{prefix}:job:{job_id}", "state")
    return value.decode() if value else "absent"


def assert_nothing_left_behind(raw: redis.Redis, prefix: str, queue: str = "cekura") -> None:
    """Once every job ended: none is still scheduled or unfinished, no secret is left, and no Dramatiq message is
    stored without being queued, delayed or in some worker's ack set."""
    assert raw.zcard(f"{prefix}:schedule") == 0, raw.zrange(f"{prefix}:schedule", 0, 10, withscores=True)
    states = Counter(raw.hget(key, "state") for key in raw.scan_iter(f"{prefix}:job:*"))
    assert set(states) <= {b"finished"}, states
    assert not list(raw.scan_iter(f"{prefix}:secret:*"))
    namespace = f"{prefix}:dramatiq"
    stored = set(raw.hkeys(f"{namespace}:{queue}.msgs"))
    referenced = set(raw.lrange(f"{namespace}:{queue}", 0, -1)) | set(raw.zrange(f"{namespace}:{queue}.ZQ", 0, -1))
    for acks in raw.scan_iter(f"{namespace}:__acks__.*"):
        referenced |= raw.smembers(acks)
    orphans = sorted(stored - referenced)
    assert not orphans, f"{len(orphans)} Dramatiq messages are stored but queued nowhere: {orphans[:5]}"


def live_members(raw: redis.Redis, prefix: str, within_ms: int) -> set[str]:
    """Heartbeat members (`<host>:<pid>`) that beat within `within_ms` on this server's clock."""
    seconds, micros = raw.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    return {m.decode() for m in raw.zrangebyscore(f"{prefix}:workers", now - within_ms, "+inf")}


def member_of(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def assert_machine_redis_untouched(prefix: str) -> None:
    """No key under `prefix` exists in any database (0..15) of the machine's Redis on 6379: the test's URLs named
    only its private servers. A machine without a Redis there can't have been reached either."""
    for db in range(16):
        with redis.Redis(
            host="127.0.0.1", port=MACHINE_REDIS_PORT, db=db, socket_timeout=5, socket_connect_timeout=2
        ) as machine:
            try:
                found = list(machine.scan_iter(match=f"{prefix}*", count=1000))
            except redis.ConnectionError:
                return
            assert not found, f"keys under {prefix!r} reached the machine's Redis (db {db}): {found[:5]}"


def log_events_after(lines: list[str], start: int, names: frozenset[str]) -> list[dict[str, Any]]:
    """The JSON log records from line `start` on whose event is one of `names`."""
    out = []
    for line in lines[start:]:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") in names:
                out.append(record)
    return out
