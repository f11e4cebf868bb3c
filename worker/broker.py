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
actor would otherwise make in a round trip of its own, see `worker/scripts/_claim.lua`); the actor takes the
claim with `take_fetched_claim()`. That is one Redis round trip less per poll.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from worker import scripts

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
    eta_ms: int
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


class _FetchedMessage(MessageProxy):
    """A fetched message, with the reply of the claim the fetch made for it (None if it made none)."""

    def __init__(self, message: Message[Any], claim: list[Any] | None) -> None:
        super().__init__(message)
        self.claim = claim


class _CurrentClaim(Middleware):
    """Hands the claim a message was fetched with to the worker thread that processes it.

    Set before every message (None for one fetched without a claim) and taken by the actor, so nothing
    is left to clear afterwards.
    """

    def __init__(self) -> None:
        self.local = threading.local()

    def before_process_message(self, broker: Any, message: MessageProxy) -> None:
        self.local.claim = getattr(message, "claim", None)


class CekuraBroker(RedisBroker):
    """A `RedisBroker` whose delay queue is a Redis sorted set instead of an in-memory heap."""

    def __init__(self, *, client: redis.Redis, middleware: list[Middleware] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT_MS)
        super().__init__(client=client, middleware=middleware, **kwargs)
        self._fetch_script = scripts.load(client, "fetch", per_thread=True)  # only the consumer thread fetches
        self._schedule_script = scripts.load(client, "schedule", clock=False)
        #: Set to wake this process's consumer early: something was enqueued that is due before it planned to look.
        self.wakeup = threading.Event()
        #: When (epoch ms) this process's consumer next looks at Redis on its own.
        self.next_look_ms = 0
        self._outbox = threading.local()
        #: Set by the app when poll messages' jobs are to be claimed as they are fetched (None: they aren't).
        self.fetch_claims: FetchClaims | None = None
        self._current_claim = _CurrentClaim()
        self.add_middleware(self._current_claim)
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
            if any(item.eta_ms < self.next_look_ms for item in captured):
                self.wakeup.set()

    def take_fetched_claim(self) -> list[Any] | None:
        """In an actor: the raw claim reply the current message was fetched with, once (None if there was none)."""
        local = self._current_claim.local
        claim: list[Any] | None = getattr(local, "claim", None)
        local.claim = None
        return claim

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
        if delay is None or delay <= 0:
            message = super().enqueue(message)
            self.wakeup.set()
            return message
        eta = current_millis() + int(delay)
        redis_message_id = f"{self.broker_id}.{next(self._entry_ids)}"
        message = message.copy(options={"redis_message_id": redis_message_id, "due_ms": eta})
        self.emit_before("enqueue", message, delay)
        captured = getattr(self._outbox, "items", None)
        if captured is not None:
            queue = f"{self.namespace}:{message.queue_name}"
            redis_id = message.options["redis_message_id"]
            captured.append(Scheduled(f"{queue}.msgs", f"{queue}.ZQ", redis_id, eta, message.encode()))
            self.emit_after("enqueue", message, delay)
            return message  # written, and the consumer woken, by the caller (see outbox)
        self._schedule_script(
            keys=[self.namespace],
            args=[message.queue_name, message.options["redis_message_id"], eta, message.encode()],
        )
        self.emit_after("enqueue", message, delay)
        if eta < self.next_look_ms:
            self.wakeup.set()
        return message

    def flush(self, queue_name: str) -> None:
        super().flush(queue_name)
        self.client.delete(f"{self.namespace}:{queue_name}.ZQ")

    def run_maintenance(self) -> None:
        """Requeue dead workers' unacked messages now, instead of on Dramatiq's one-in-a-thousand lottery."""
        dispatch = self.scripts["dispatch"]
        for queue_name in self.queues:
            args = [
                "qsize",
                current_millis(),
                queue_name,
                self.broker_id,
                self.heartbeat_timeout,
                self.dead_message_ttl,
                1,
                self._max_unpack_size(),
            ]
            dispatch(args=args, keys=[self.namespace])

    def fetch(self, queue_name: str, count: int, acks: list[str]) -> tuple[int, list[tuple[bytes, list[Any] | None]]]:
        """Ack `acks`, promote due delayed messages and pop up to `count`, in one round trip.

        Returns (the next eta in ms or -1, [(message data, the claim made for it or None), ...]).
        """
        c = self.fetch_claims
        keys = [self.namespace, c.schedule_key, c.rate_key, c.cooldown_key] if c else [self.namespace, "", "", ""]
        claim_args = [c.actor_name, c.job_prefix, c.lease_ms, c.grace_ms] if c else ["", "", 0, 0]
        reply = self._fetch_script(
            keys=keys,
            args=[queue_name, self.broker_id, current_millis(), count, DEFAULT_PROMOTE_LIMIT, *claim_args, *acks],
        )
        return int(float(reply[0])), list(zip(reply[1::2], reply[2::2], strict=True))


class _ZSetConsumer(_RedisConsumer):
    """Fetches through `CekuraBroker.fetch` and sleeps until the next eta, an ack, or a local enqueue.

    Acks are buffered and sent with the next fetch (at the latest one idle timeout later, and on close): a
    round trip saved per message. A process killed with acks buffered has those messages redelivered after
    the heartbeat timeout, which the actors' claims already make harmless.
    """

    broker: CekuraBroker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: list[str] = []
        self._acks_lock = threading.Lock()
        self._closed = False

    @property
    def low_water(self) -> int:
        """Fetch again only once outstanding messages fall to this many, so fetches come in batches."""
        return int(self.prefetch) // 2

    def ack(self, message: MessageProxy) -> None:
        with self._acks_lock:
            self._acks.append(message.options["redis_message_id"])
        self.queued_message_ids.discard(message.message_id)
        if self._closed:
            self._flush_acks()
        elif self.outstanding_message_count == self.low_water:
            self.broker.wakeup.set()

    def _take_acks(self) -> list[str]:
        with self._acks_lock:
            acks, self._acks = self._acks, []
        return acks

    def _flush_acks(self) -> None:
        acks = self._take_acks()
        for redis_message_id in acks:
            self.broker.do_ack(self.queue_name, redis_message_id)

    def close(self) -> None:
        self._closed = True
        try:
            # Fetched but never handed to a worker thread: back onto the queue for another consumer now.
            unstarted = [Message.decode(data).options["redis_message_id"] for data, _ in self.message_cache]
            self.message_cache = []
            if unstarted:
                self.broker.do_requeue(self.queue_name, *unstarted)
            self._flush_acks()
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)
        self.broker.wakeup.set()

    def __next__(self) -> MessageProxy | None:
        try:
            if self.message_cache:
                return self._pop()
            self.broker.wakeup.clear()
            if self.outstanding_message_count > self.low_water:
                # Nothing to fetch until enough of the outstanding messages are acked: `ack` wakes us then, and
                # an enqueue can't make us fetch sooner, so it must not wake us (at saturation that was one
                # wasted wakeup, and a GIL handoff, per poll).
                self.broker.next_look_ms = 0
                self.broker.wakeup.wait(self.timeout / 1000)
                return None
            acks = self._take_acks()
            try:
                next_due, self.message_cache = self.broker.fetch(
                    self.queue_name, self.prefetch - self.outstanding_message_count, acks
                )
            except redis.ConnectionError:
                with self._acks_lock:
                    self._acks[:0] = acks
                raise
            if self.message_cache:
                return self._pop()
            now = current_millis()
            look = now + self.timeout
            if next_due >= 0:
                look = min(look, next_due)
            self.broker.next_look_ms = look
            if look > now:
                self.broker.wakeup.wait((look - now) / 1000)
            return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def _pop(self) -> MessageProxy:
        data, claim = self.message_cache.pop(0)
        message = Message.decode(data)
        self.queued_message_ids.add(message.message_id)
        return _FetchedMessage(message, claim)
