"""The broker's consumer: fetches through `CekuraBroker.fetch` and sleeps until the next message is due.

It subclasses Dramatiq's private `_RedisConsumer` (see `worker/broker/__init__.py` for every part of it relied on).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

if TYPE_CHECKING:
    from worker.broker.redis_broker import CekuraBroker


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class _FetchedMessage(MessageProxy):
    """A fetched message, with the reply of the claim the fetch made for it (None if it made none)."""

    def __init__(self, message: Message[Any], claim: list[Any] | None, fetched_ms: int) -> None:
        super().__init__(message)
        self.claim = claim
        #: When (monotonic ms) the fetch made the claim: the lease started about then.
        self.fetched_ms = fetched_ms


class _ZSetConsumer(_RedisConsumer):
    """Fetches through `CekuraBroker.fetch` and sleeps until the next message is due, an ack, or a local enqueue.

    Acks are buffered and sent with the next fetch (at the latest one idle timeout later, and on close): a
    round trip saved per message. A process killed with acks buffered has those messages redelivered after
    the heartbeat timeout, which the actors' claims already make harmless. Every message popped stays in the
    broker's `held` set until its ack or requeue has reached Redis, which is how `sweep_acks` tells a message
    in hand from one whose fetch reply was lost.

    Every Redis error, not only a lost connection, reaches Dramatiq as `ConnectionClosed`: a failover's `READONLY`,
    an `OOM` or a script error would otherwise escape Dramatiq's `ConsumerThread.close()` (which catches only
    connection errors) and end the consumer thread for good. As `ConnectionClosed`, Dramatiq restarts the
    consumer a second later, and retries an ack until Redis takes it.
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
        try:
            super().requeue(messages)
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None
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
        except redis.RedisError as exc:  # see `_ZSetConsumer`: a Redis error restarts the consumer, never kills it
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
        except redis.RedisError as exc:  # see `_ZSetConsumer`: a Redis error restarts the consumer, never kills it
            raise ConnectionClosed(exc) from None

    def _pop(self) -> MessageProxy:
        data, claim, fetched_ms = self.message_cache.pop(0)
        message = Message.decode(data)
        self._held.add(message.options["redis_message_id"])
        self.queued_message_ids.add(message.message_id)
        return _FetchedMessage(message, claim, fetched_ms)
