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

One clock. Due times, heartbeats and dead-worker maintenance all use the Redis server's clock, never the
host's: a delayed message is stored with its delay and the script scores it `now + delay` on the server; the
fetch returns how long until the next message is due rather than when; heartbeats are written with the
server's time, and maintenance compares them with it. Where Dramatiq's own dispatch script still takes a
timestamp from the caller (ack, nack, requeue), the broker passes its estimate of the server's clock (the host
clock plus the offset measured at each fetch) and never lets that script run maintenance. A worker whose clock
is minutes off therefore polls on time and is never taken for dead by the others.

Dramatiq internals relied on (Dramatiq is pinned to 2.2.x; the contract was checked on 1.17 to 2.2.1); each is
pinned by the named test in tests/worker/test_dramatiq_contract.py, which fails naming the assumption it broke:

- `dramatiq.brokers.redis._RedisConsumer` is `_ZSetConsumer`'s base: test_redis_consumer_base_class
- `_RedisConsumer(broker, queue_name, prefetch, timeout)` keeps all four as attributes: test_redis_consumer_constructor
- `_RedisConsumer`'s own members: __init__, __next__, ack, nack, requeue, the count: test_redis_consumer_members
- `message_cache` (here (data, claim, fetched_ms)) is read only by __next__ and the count: test_message_cache_readers
- `outstanding_message_count` = len(queued_message_ids) + len(message_cache): test_outstanding_message_count
- inherited `nack`: do_nack(queue, options["redis_message_id"]), forgets the message id: test_consumer_nack
- inherited `nack` raises ConnectionClosed on redis.ConnectionError: test_consumer_nack_connection_closed
- inherited `requeue(messages)` (a generator too): do_requeue(queue, *redis_message_ids): test_consumer_requeue
- `consume(queue_name, prefetch, timeout)` builds the `consumer_class` property: test_consume_uses_consumer_class
- ...and so builds CekuraBroker's `_ZSetConsumer`: test_consume_uses_cekura_consumer_class
- kwargs namespace/heartbeat_timeout/maintenance_chance/dead_message_ttl, kept by name: test_broker_constructor_kwargs
- `client=` becomes `broker.client`; `middleware=[]` means none: test_broker_client_and_middleware
- `broker_id`: unique glob-free str, the worker id in ack-set keys and heartbeats: test_broker_id
- `declare_queue` = `queues` set + declare signals + delay-queue signal (copied here minus .DQ): test_declare_queue
- `flush(queue)` = do_purge(queue) + do_purge(queue.DQ): test_flush_uses_do_purge
- purge deletes <q>, <q>.msgs, this broker's ack set, <q>.XQ, <q>.XQ.msgs: test_flush_deletes_queue_keys
- `scripts["dispatch"]` callable as script(keys=, args=), next to "maxstack": test_dispatch_script_registered
- `_max_unpack_size()`, passed as dispatch's ARGV[8]: test_max_unpack_size
- `__getattr__` maps do_<cmd>(queue, *args) to `_dispatch(cmd)`: test_do_command_routes_through_dispatch
- `_dispatch`'s argument list, which `CekuraBroker._dispatch` rebuilds: test_dispatch_argument_order
- dispatch.lua ARGV: cmd, ts, queue, worker, hb_timeout, dead_ttl, maintain, max_unpack: test_dispatch_lua_argv_layout
- dispatch.lua command arguments start at ARGV[9]: test_dispatch_lua_command_args_at_argv_9
- keys <ns>:__heartbeats__, <ns>:__acks__.<worker>.<q>, <ns>:<q>[.msgs|.XQ|.XQ.msgs]: test_dispatch_lua_key_layout
- every dispatch command ZADDs <ns>:__heartbeats__ ARGV[2] (epoch ms) ARGV[4]: test_dispatch_heartbeat
- `ack`: SREM from the worker's ack set, then HDEL the data: test_dispatch_ack
- `requeue`: RPUSH only ids removed from the worker's ack set whose data still exists: test_dispatch_requeue
- `nack`: to <q>.XQ scored by ARGV[2], data to <q>.XQ.msgs: test_dispatch_nack
- maintenance requeues acked ids of workers with heartbeat <= ARGV[2]-ARGV[5]: test_maintenance_requeues_dead_workers
- maintenance covers only the queue in ARGV[3] (run_maintenance loops): test_maintenance_is_per_queue
- maintenance drops dead letters older than ARGV[6]: test_maintenance_expires_dead_letters
- ARGV[7] == 0 means no maintenance, whatever the command: test_maintenance_only_when_argv7_is_1
- `qsize` (run_maintenance's vehicle) changes nothing itself: test_dispatch_qsize_is_side_effect_free
- `fetch` (fetch.lua's model): LPOP <= min(n, ARGV[8]) into the worker's ack set: test_dispatch_fetch
- `enqueue` = HSET <q>.msgs + RPUSH <q> (schedule/finish/advance.lua's model): test_dispatch_enqueue
- what fetch.lua leaves is what Dramatiq's ack, requeue and maintenance expect: test_fetch_lua_state_suits_dispatch
- `Message` has exactly its 7 fields (finish.lua builds one in Lua): test_message_fields
- `Message.copy(options=...)` merges, original untouched; MessageProxy delegates it: test_message_copy_merges_options
- `Message.encode()` is JSON cjson reads actor_name/args/options from: test_message_encode_is_cjson_readable
- `Message.decode` accepts a cjson-built message: test_message_decode_takes_cjson_output
- `MessageProxy(message)` subclassable with extra attributes; `.options` is the message's: test_message_proxy_subclass
- emit_before/emit_after("enqueue", message, delay) reach before/after_enqueue: test_enqueue_signals
- `send_with_options(delay=ms)`/`send()` call enqueue(message, delay=ms|None), no eta: test_send_with_options_delay
- `Retries` re-enqueues the MessageProxy itself with delay=, options changed in place: test_retries_reenqueue_the_proxy
- `Worker` calls consume(queue_name=, prefetch=2 x threads, timeout=worker_timeout): test_worker_consume_arguments
- consumers start only on after_declare_(delay_)queue, so no .DQ one: test_worker_consumers_from_declare_signals
- an `eta` option makes ConsumerThread hold a message in memory (never set one): test_eta_is_held_in_worker_memory
- the proxy __next__ returns reaches middleware and consumers[queue_name].ack: test_proxy_reaches_middleware_and_ack
- a failed message goes to consumer.nack: test_failed_message_is_nacked
- `Worker.stop`: work queue to consumer.requeue, then consumer.close() last: test_worker_stop_requeues_then_closes
- ConnectionClosed (or any error) from __next__: close, then consume() again: test_next_error_reconnects
- post-reconnect acks reach the new consumer (hence `held` per broker): test_ack_after_reconnect_goes_to_new_consumer
- `Worker.workers` and `Worker.consumers` (worker/process.py's threads_alive): test_worker_thread_attributes
- `actor.broker = new` + declare_actor rebinds an actor's sends (worker/app.py): test_actor_broker_is_rebindable

Documented seams checked but not needed: `CurrentMessage` (the fetched proxy, so `_CurrentClaim` could read it;
it only uses public middleware hooks already) and the thread-boot hooks: test_seam_current_message,
test_seam_thread_boot_hooks.
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
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from worker import scripts

#: How many due delayed messages one fetch moves onto the queue at most.
DEFAULT_PROMOTE_LIMIT = 1000

#: Milliseconds without a heartbeat after which a worker's unacked messages go back to the queue.
DEFAULT_HEARTBEAT_TIMEOUT_MS = 20_000


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


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


class _FetchedMessage(MessageProxy):
    """A fetched message, with the reply of the claim the fetch made for it (None if it made none)."""

    def __init__(self, message: Message[Any], claim: list[Any] | None, fetched_ms: int) -> None:
        super().__init__(message)
        self.claim = claim
        #: When (monotonic ms) the fetch made the claim: the lease started about then.
        self.fetched_ms = fetched_ms


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
        dispatch = self.scripts["dispatch"]
        keys = [self.namespace]

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            head = [command, self.redis_now_ms(), queue_name, self.broker_id, self.heartbeat_timeout]
            tail = [self.dead_message_ttl, 0, self._max_unpack_size(), *args]
            return dispatch(args=[*head, *tail], keys=keys)

        return do_dispatch

    def flush(self, queue_name: str) -> None:
        super().flush(queue_name)
        self.client.delete(f"{self.namespace}:{queue_name}.ZQ")

    def run_maintenance(self) -> None:
        """Requeue dead workers' unacked messages now, on the server's clock, instead of on Dramatiq's
        one-in-a-thousand lottery with the host's; then sweep this worker's own ack sets (`sweep_acks`)."""
        dispatch = self.scripts["dispatch"]
        seconds, micros = self.client.time()
        server_ms = int(seconds) * 1000 + int(micros) // 1000
        for queue_name in self.queues:
            args = [
                "qsize",
                server_ms,
                queue_name,
                self.broker_id,
                self.heartbeat_timeout,
                self.dead_message_ttl,
                1,
                self._max_unpack_size(),
            ]
            dispatch(args=args, keys=[self.namespace])
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


class _ZSetConsumer(_RedisConsumer):
    """Fetches through `CekuraBroker.fetch` and sleeps until the next message is due, an ack, or a local enqueue.

    Acks are buffered and sent with the next fetch (at the latest one idle timeout later, and on close): a
    round trip saved per message. A process killed with acks buffered has those messages redelivered after
    the heartbeat timeout, which the actors' claims already make harmless. Every message popped stays in the
    broker's `held` set until its ack or requeue has reached Redis, which is how `sweep_acks` tells a message
    in hand from one whose fetch reply was lost.
    """

    broker: CekuraBroker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks = self.broker.pending_acks.setdefault(self.queue_name, [])
        self._acks_lock = self.broker.acks_lock
        self._closed = False
        self._held = self.broker.held.setdefault(self.queue_name, set())

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
            acks = self._acks[:]
            self._acks.clear()
        return acks

    def _return_acks(self, acks: list[str]) -> None:
        with self._acks_lock:  # not sent: they ride on the next fetch, this consumer's or the next one's
            self._acks[:0] = acks

    def _flush_acks(self) -> None:
        acks = self._take_acks()
        for i, redis_message_id in enumerate(acks):
            try:
                self.broker.do_ack(self.queue_name, redis_message_id)
            except redis.RedisError:
                self._return_acks(acks[i:])
                raise
            self._held.discard(redis_message_id)

    def requeue(self, messages: Any) -> None:
        messages = list(messages)
        super().requeue(messages)
        self._held.difference_update(m.options["redis_message_id"] for m in messages)

    def close(self) -> None:
        self._closed = True
        try:
            self._flush_acks()  # first: should Redis be away, they wait for the next consumer's fetch
            # Fetched but never handed to a worker thread: back onto the queue for another consumer now.
            unstarted = [Message.decode(data).options["redis_message_id"] for data, _, _ in self.message_cache]
            self.message_cache = []
            if unstarted:
                self.broker.do_requeue(self.queue_name, *unstarted)
                self._held.difference_update(unstarted)
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)
        self._held.discard(message.options["redis_message_id"])
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
                next_due, fetched = self.broker.fetch(
                    self.queue_name, self.prefetch - self.outstanding_message_count, acks
                )
            except redis.RedisError:
                self._return_acks(acks)  # a script error included
                raise
            self._held.difference_update(acks)
            fetched_ms = _monotonic_ms()
            self.message_cache = [(data, claim, fetched_ms) for data, claim in fetched]
            if self.message_cache:
                return self._pop()
            wait_ms = self.timeout if next_due < 0 else min(self.timeout, next_due)
            self.broker.next_look_ms = fetched_ms + wait_ms
            if wait_ms > 0:
                self.broker.wakeup.wait(wait_ms / 1000)
            return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def _pop(self) -> MessageProxy:
        data, claim, fetched_ms = self.message_cache.pop(0)
        message = Message.decode(data)
        self._held.add(message.options["redis_message_id"])
        self.queued_message_ids.add(message.message_id)
        return _FetchedMessage(message, claim, fetched_ms)
