"""The Dramatiq broker: Dramatiq's Redis broker with delayed messages kept in Redis, in a sorted set.

Stock Dramatiq stores a delayed message in a `<queue>.DQ` list; a worker prefetches up to threads x 1000 of
them into memory, holds them until their eta, then re-enqueues a copy and acks the original. Every poll of a
Cekura job is a delayed message, so that path is this service's hot path, and it has known costs: a crash
between copy and ack duplicates the message (Dramatiq #431), a lost connection drops the held messages until
the process restarts (#527), messages past the prefetch window wait behind far-future ones, and an idle
consumer only looks again after its idle timeout (up to a second late).

`CekuraBroker` keeps the Dramatiq model (actors, messages, `send_with_options(delay=...)`, acks, dead
workers' messages requeued by Dramatiq's maintenance) and changes only where a delayed message waits: in
`<queue>.ZQ`, a sorted set scored by eta. `fetch.lua` moves due messages onto the queue and pops a batch in
one atomic round trip, and the consumer sleeps exactly until the next eta (or until this process enqueues
something sooner), so polls run on time without holding anything in memory.

With `fetch_claims` set, the fetch also *claims* the job of every poll message it pops (the same claim the
actor would otherwise make in a round trip of its own, see `worker/store/scripts/_claim.lua`); the actor takes the
claim with `take_fetched_claim()`. That is one Redis round trip less per poll.

One clock. Due times, heartbeats and dead-worker maintenance all use the Redis server's clock, never the
host's: a delayed message is stored with its delay and the script scores it `now + delay` on the server; the
fetch returns how long until the next message is due rather than when; heartbeats are written with the
server's time, and maintenance compares them with it. Where Dramatiq's own dispatch script still takes a
timestamp from the caller (ack, nack, requeue), the broker passes its estimate of the server's clock (the host
clock plus the offset measured at each fetch) and never lets that script run maintenance. A worker whose clock
is minutes off therefore polls on time and is never taken for dead by the others.

Every private part of Dramatiq this folder relies on is listed in `worker/broker/__init__.py`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from worker.broker.consumer import _monotonic_ms, _ZSetConsumer
from worker.broker.middleware import ThreadRoster
from worker.runtime.connection import server_ms
from worker.store import scripts

#: How many due delayed messages one fetch moves onto the queue at most.
DEFAULT_PROMOTE_LIMIT = 1000

#: Milliseconds without a heartbeat after which a worker's unacked messages go back to the queue.
DEFAULT_HEARTBEAT_TIMEOUT_MS = 20_000


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A delayed message captured by `CekuraBroker.outbox()`, for the caller to write in its own script."""

    messages_key: str
    delayed_key: str
    redis_message_id: str
    #: Due this many ms after the script that writes it runs (on the server's clock).
    delay_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class FetchClaims:
    """What the fetch needs to claim a poll message's job as it pops it (built by `JobStore.fetch_claims`)."""

    actor_name: str
    job_prefix: str
    schedule_key: str
    rate_key: str
    cooldown_key: str
    lease_ms: int
    grace_ms: int


class _CurrentClaim(Middleware):
    """Hands the claim a message was fetched with to the worker thread that processes it.

    Set before every message (None for one fetched without a claim) and taken by the actor, so nothing
    is left to clear afterwards.
    """

    def __init__(self) -> None:
        self.local = threading.local()

    def before_process_message(self, broker: Any, message: MessageProxy) -> None:
        self.local.claim = getattr(message, "claim", None)
        self.local.fetched_ms = getattr(message, "fetched_ms", 0)
        self.local.owner = message.options.get("redis_message_id", "")


class CekuraBroker(RedisBroker):
    """A `RedisBroker` whose delay queue is a Redis sorted set instead of an in-memory heap."""

    def __init__(self, *, client: redis.Redis, middleware: list[Middleware] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT_MS)
        # Maintenance runs only from `run_maintenance`, on the server's clock; never inside ack/nack/requeue.
        kwargs["maintenance_chance"] = 0
        super().__init__(client=client, middleware=middleware, **kwargs)
        self._fetch_script = scripts.load(client, "fetch", per_thread=True)  # only the consumer thread fetches
        self._schedule_script = scripts.load(client, "schedule")
        #: Set to wake this process's consumer early: something was enqueued that is due before it planned to look.
        self.wakeup = threading.Event()
        #: When (monotonic ms) this process's consumer next looks at Redis on its own.
        self.next_look_ms = 0
        #: The Redis server's clock minus this host's, in ms, as measured by the last fetch.
        self.clock_offset_ms = 0
        #: Per queue: Redis ids of messages this broker's consumers popped and have not yet acked or requeued.
        self.held: dict[str, set[str]] = {}
        #: Per queue: acks not yet sent, which ride on the next fetch. Kept here rather than in a consumer, so the
        #: acks of a consumer closed by a lost connection are sent by the one Dramatiq builds next.
        self.pending_acks: dict[str, list[str]] = {}
        self.acks_lock = threading.Lock()
        #: Ids found in this broker's ack sets but held by no consumer at the last sweep (see `sweep_acks`).
        self._orphan_suspects: set[str] = set()
        self._outbox = threading.local()
        #: Set by the app when poll messages' jobs are to be claimed as they are fetched (None: they aren't).
        self.fetch_claims: FetchClaims | None = None
        self._current_claim = _CurrentClaim()
        self.add_middleware(self._current_claim)
        #: The worker's Dramatiq threads, from Dramatiq's documented thread boot and shutdown hooks.
        self.threads = ThreadRoster()
        self.add_middleware(self.threads)
        #: Ids for delayed messages' Redis entries: unique per broker, and free (uuid4 costs a system call).
        self._entry_ids = itertools.count()

    @contextmanager
    def outbox(self) -> Iterator[list[Scheduled]]:
        """Capture this thread's delayed enqueues instead of writing them.

        The caller writes the captured messages inside the `with` block, in the same Lua script as its own
        state change (`JobStore.advance`), so "record this poll" and "schedule the next one" are one atomic
        step: a crash can't leave a job recorded but unscheduled, and a superseded step schedules nothing.
        Leaving the block wakes this process's consumer if a captured message is due before it next looks.
        """
        captured: list[Scheduled] = []
        self._outbox.items = captured
        try:
            yield captured
        finally:
            self._outbox.items = None
            now = _monotonic_ms()
            if any(now + item.delay_ms < self.next_look_ms for item in captured):
                self.wakeup.set()

    def take_fetched_claim(self) -> tuple[list[Any] | None, float, str]:
        """In an actor: the raw claim reply the current message was fetched with (once; None if there was none),
        the claim's age in seconds, and the message's Redis id (the claim's owner)."""
        local = self._current_claim.local
        claim: list[Any] | None = getattr(local, "claim", None)
        local.claim = None
        owner: str = getattr(local, "owner", "")
        if claim is None:
            return None, 0.0, owner
        return claim, max(0.0, (_monotonic_ms() - getattr(local, "fetched_ms", 0)) / 1000), owner

    def redis_now_ms(self) -> int:
        """This process's estimate of the Redis server's clock in epoch ms: the host's plus the measured offset."""
        return int(time.time() * 1000) + self.clock_offset_ms

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _ZSetConsumer

    def declare_queue(self, queue_name: str) -> None:
        # No delay queue: delayed messages are fetched by the queue's own consumer.
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        delay_ms = max(0, int(delay or 0))
        redis_message_id = f"{self.broker_id}.{next(self._entry_ids)}"
        # `due_ms` is for the lateness metric only: when the message is due, on this process's estimate of the server
        # clock (None for an immediate message, also when a retried one carried one before).
        options: dict[str, Any] = {
            "redis_message_id": redis_message_id,
            "due_ms": self.redis_now_ms() + delay_ms if delay_ms else None,
        }
        message = message.copy(options=options)
        self.emit_before("enqueue", message, delay)
        captured = getattr(self._outbox, "items", None) if delay_ms else None
        if captured is not None:
            queue = f"{self.namespace}:{message.queue_name}"
            captured.append(Scheduled(f"{queue}.msgs", f"{queue}.ZQ", redis_message_id, delay_ms, message.encode()))
            self.emit_after("enqueue", message, delay)
            return message  # written, and the consumer woken, by the caller (see outbox)
        self._schedule_script(
            keys=[self.namespace], args=[message.queue_name, redis_message_id, delay_ms, message.encode()]
        )
        self.emit_after("enqueue", message, delay)
        if _monotonic_ms() + delay_ms < self.next_look_ms or not delay_ms:
            self.wakeup.set()
        return message

    def _dispatch(self, command: str) -> Any:
        """Dramatiq's dispatch script (ack, nack, requeue, ...) with the server's clock and no maintenance.

        Dramatiq passes the host's clock as the heartbeat of every command and may run maintenance with it;
        this broker passes its estimate of the server's clock and runs maintenance only in `run_maintenance`.
        """

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            return self._run_dispatch(command, queue_name, self.redis_now_ms(), False, *args)

        return do_dispatch

    def _run_dispatch(self, command: str, queue_name: str, now_ms: int, maintenance: bool, *args: Any) -> Any:
        """Call Dramatiq's dispatch.lua with its positional ARGV (pinned by the contract tests)."""
        head = [command, now_ms, queue_name, self.broker_id, self.heartbeat_timeout, self.dead_message_ttl]
        tail = [1 if maintenance else 0, self._max_unpack_size(), *args]
        return self.scripts["dispatch"](args=[*head, *tail], keys=[self.namespace])

    def flush(self, queue_name: str) -> None:
        super().flush(queue_name)
        self.client.delete(f"{self.namespace}:{queue_name}.ZQ")

    def run_maintenance(self) -> None:
        """Requeue dead workers' unacked messages now, on the server's clock, instead of on Dramatiq's
        one-in-a-thousand lottery with the host's; then sweep this worker's own ack sets (`sweep_acks`)."""
        now_ms = server_ms(self.client)
        for queue_name in self.queues:
            self._run_dispatch("qsize", queue_name, now_ms, True)
        self.sweep_acks()

    def sweep_acks(self) -> list[str]:
        """Requeue messages stuck in this worker's ack sets: popped by a fetch whose reply never arrived.

        A fetch that runs in Redis but whose reply is lost (a dropped connection, a Redis restart) leaves its
        messages in this live worker's ack set, where Dramatiq's maintenance never looks (it only requeues
        dead workers' sets). An id that is in the set but held by none of this broker's consumers at two sweeps
        in a row (a fetch in flight is seen by the next sweep) is requeued. Returns the ids requeued.
        """
        requeued: list[str] = []
        suspects: set[str] = set()
        for queue_name in list(self.queues):
            key = f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"
            members = {m.decode() if isinstance(m, bytes) else str(m) for m in self.client.smembers(key)}
            orphans = members - self.held.get(queue_name, set())
            confirmed = sorted(orphans & self._orphan_suspects)
            suspects |= orphans - set(confirmed)
            if confirmed:
                self.do_requeue(queue_name, *confirmed)
                requeued.extend(confirmed)
        self._orphan_suspects = suspects
        return requeued

    def fetch(self, queue_name: str, count: int, acks: list[str]) -> tuple[int, list[tuple[bytes, list[Any] | None]]]:
        """Ack `acks`, promote due delayed messages and pop up to `count`, in one round trip.

        Returns (ms until the next delayed message is due or -1, [(message data, its claim or None), ...]) and
        updates `clock_offset_ms` from the server time the script saw.
        """
        c = self.fetch_claims
        keys = [self.namespace, c.schedule_key, c.rate_key, c.cooldown_key] if c else [self.namespace, "", "", ""]
        claim_args = [c.actor_name, c.job_prefix, c.lease_ms, c.grace_ms] if c else ["", "", 0, 0]
        sent = time.time()
        reply = self._fetch_script(
            keys=keys, args=[queue_name, self.broker_id, count, DEFAULT_PROMOTE_LIMIT, *claim_args, *acks]
        )
        self.clock_offset_ms = int(reply[0]) - int((sent + time.time()) * 500)
        return int(float(reply[1])), list(zip(reply[2::2], reply[3::2], strict=True))
