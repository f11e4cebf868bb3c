"""The Dramatiq broker, and everything in this service that knows Dramatiq's Redis internals.

`redis_broker.py` is `CekuraBroker` (delayed messages in a Redis sorted set, fetches that claim poll messages' jobs,
one clock); `consumer.py` its consumer; `middleware.py` the per-message middleware. Nothing outside this folder
touches a private part of Dramatiq.

Dramatiq internals relied on (Dramatiq is pinned to 2.2.x; the contract was checked on 1.17 to 2.2.1); each is
pinned by the named test in tests/broker/test_dramatiq_contract.py, which fails naming the assumption it broke:

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
- `actor.broker = new` + declare_actor rebinds an actor's sends (worker/runtime/app.py): test_actor_broker_is_rebindable

Documented seams used: the thread boot and shutdown hooks (`ThreadRoster`, for the heartbeat's liveness) instead of
reading `Worker.workers`/`Worker.consumers`: test_seam_thread_boot_hooks. Checked but not needed: `CurrentMessage`
(it returns the fetched proxy, so `_CurrentClaim` could read it there; it only uses public hooks already):
test_seam_current_message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.broker.redis_broker import CekuraBroker, FetchClaims, Scheduled

__all__ = ["CekuraBroker", "FetchClaims", "Scheduled"]


def __getattr__(name: str) -> Any:
    if name in __all__:  # imported on first use, so importing the package costs nothing
        from worker.broker import redis_broker

        return getattr(redis_broker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
