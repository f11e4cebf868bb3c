"""Dramatiq's side of the contract `worker/broker/redis_broker.py` and `worker/store/scripts/fetch.lua` rely on.

`CekuraBroker` extends Dramatiq's Redis broker through parts Dramatiq neither documents nor promises to keep: the
private `_RedisConsumer`, the `dispatch.lua` script's positional arguments and commands, `_dispatch` and the
`do_<command>` routing, the Redis key layout (which `fetch.lua`, `schedule.lua` and `finish.lua` write directly),
the way Dramatiq's `Worker` drives a consumer, and message internals. Each test here pins one such assumption
against Dramatiq itself (its source, its packaged Lua, its behaviour on a real Redis) and fails with
"Dramatiq contract broken: ..." naming it, so that an upgrade that breaks one says which.

Redis: db 10 of `DRAMATIQ_CONTRACT_REDIS_URL` (default redis://127.0.0.1:6379/10), flushed before and after each
test that uses it (never db 0). The Worker tests need no Redis: they run Dramatiq's real `Worker` over a
scripted consumer.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

import dramatiq
import pytest
import redis
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import BrokerError, ConnectionClosed
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage, Middleware, Retries

from tests.support import free_port

REDIS_URL = os.environ.get("DRAMATIQ_CONTRACT_REDIS_URL", "redis://127.0.0.1:6379/10")
NS = "contract"
QUEUE = "contract-q"
#: Heartbeat timeout and dead-letter TTL (ms) of the brokers built here: distinctive, so a swapped argument shows.
HEARTBEAT_TIMEOUT = 20_000
DEAD_MESSAGE_TTL = 3_600_000

dramatiq_worker = importlib.import_module("dramatiq.worker")


def broken(assumption: str) -> NoReturn:
    pytest.fail(f"Dramatiq contract broken: {assumption}", pytrace=False)


def check(condition: object, assumption: str) -> None:
    if not condition:
        broken(assumption)


def wait_until(probe: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            broken(f"{what} (waited {timeout:.0f} s)")
        time.sleep(0.005)


# -- Redis fixtures and helpers -----------------------------------------------------------------------------------


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    if client.connection_pool.connection_kwargs.get("db", 0) == 0:
        client.close()
        pytest.fail(f"refusing to flush db 0 ({REDIS_URL}); point DRAMATIQ_CONTRACT_REDIS_URL at a scratch db")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def broker(r: redis.Redis) -> RedisBroker:
    """Dramatiq's own Redis broker, configured the way CekuraBroker configures it."""
    return RedisBroker(
        client=r,
        middleware=[],
        namespace=NS,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        dead_message_ttl=DEAD_MESSAGE_TTL,
        maintenance_chance=0,
    )


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


@dataclass(frozen=True)
class Keys:
    """The Redis keys CekuraBroker, fetch.lua and the Cekura scripts assume Dramatiq uses for (queue, worker)."""

    queue: str
    msgs: str
    acks: str
    heartbeats: str
    xq: str
    xq_msgs: str


def keys(queue: str = QUEUE, worker: str = "w", ns: str = NS) -> Keys:
    return Keys(
        queue=f"{ns}:{queue}",
        msgs=f"{ns}:{queue}.msgs",
        acks=f"{ns}:__acks__.{worker}.{queue}",
        heartbeats=f"{ns}:__heartbeats__",
        xq=f"{ns}:{queue}.XQ",
        xq_msgs=f"{ns}:{queue}.XQ.msgs",
    )


def dispatch(
    broker: RedisBroker,
    command: str,
    queue: str,
    *args: Any,
    ts: int,
    worker: str = "w",
    maintenance: int = 0,
    max_unpack: int | None = None,
) -> Any:
    """Call dispatch.lua exactly the way `CekuraBroker._dispatch` and `run_maintenance` do."""
    head = [command, ts, queue, worker, broker.heartbeat_timeout, broker.dead_message_ttl, maintenance]
    unpack = broker._max_unpack_size() if max_unpack is None else max_unpack
    return broker.scripts["dispatch"](keys=[broker.namespace], args=[*head, unpack, *args])


def text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def members(client: redis.Redis, key: str) -> set[str]:
    return {m.decode() for m in client.smembers(key)}


def message(
    tag: str = "m", *, actor: str = "contract_actor", args: tuple[Any, ...] | None = None, **options: Any
) -> Message[Any]:
    return Message(
        queue_name=QUEUE,
        actor_name=actor,
        args=(tag,) if args is None else args,
        kwargs={},
        options={"redis_message_id": f"rid-{tag}", **options},
    )


def dispatch_lua_source(broker: RedisBroker) -> str:
    source = broker.scripts["dispatch"].script
    return source.decode() if isinstance(source, bytes) else source


# -- _RedisConsumer: the private base class of _ZSetConsumer ------------------------------------------------------


def test_redis_consumer_base_class() -> None:
    check(
        inspect.isclass(_RedisConsumer) and issubclass(_RedisConsumer, Consumer),
        "dramatiq.brokers.redis._RedisConsumer is no longer a dramatiq.broker.Consumer subclass "
        "(worker/broker/redis_broker.py's _ZSetConsumer subclasses it)",
    )


def test_redis_consumer_constructor(broker: RedisBroker) -> None:
    params = list(inspect.signature(_RedisConsumer.__init__).parameters)
    check(
        params == ["self", "broker", "queue_name", "prefetch", "timeout"],
        f"_RedisConsumer.__init__ is no longer (broker, queue_name, prefetch, timeout): {params}",
    )
    consumer = _RedisConsumer(broker, QUEUE, 7, 123)
    expected = {"broker": broker, "queue_name": QUEUE, "prefetch": 7, "timeout": 123}
    for name, value in expected.items():
        check(
            getattr(consumer, name, None) == value,
            f"_RedisConsumer no longer stores its constructor argument as `{name}` (_ZSetConsumer reads it)",
        )
    check(
        consumer.message_cache == [] and isinstance(consumer.message_cache, list),
        "_RedisConsumer.message_cache no longer starts as an empty list",
    )
    check(
        consumer.queued_message_ids == set() and isinstance(consumer.queued_message_ids, set),
        "_RedisConsumer.queued_message_ids no longer starts as an empty set",
    )


#: What _RedisConsumer defines itself; _ZSetConsumer overrides __next__, ack and close, and inherits the rest.
REDIS_CONSUMER_MEMBERS = {"__init__", "__next__", "outstanding_message_count", "ack", "nack", "requeue"}


def _own_members(cls: type) -> set[str]:
    return {n for n in vars(cls) if not (n.startswith("__") and n.endswith("__")) or n in {"__init__", "__next__"}}


def test_redis_consumer_members() -> None:
    own = _own_members(_RedisConsumer)
    added, removed = sorted(own - REDIS_CONSUMER_MEMBERS), sorted(REDIS_CONSUMER_MEMBERS - own)
    check(
        not added and not removed,
        f"_RedisConsumer's own members changed (added {added}, removed {removed}); _ZSetConsumer overrides "
        "__next__/ack/close without calling super() and inherits nack/requeue/outstanding_message_count: review it",
    )
    check(
        _RedisConsumer.close is Consumer.close,
        "_RedisConsumer now defines close(); _ZSetConsumer.close does not call super().close()",
    )


def test_message_cache_readers() -> None:
    for name in sorted(_own_members(_RedisConsumer) - {"__init__", "__next__", "outstanding_message_count"}):
        member = vars(_RedisConsumer)[name]
        source = inspect.getsource(member.fget if isinstance(member, property) else member)
        check(
            "message_cache" not in source,
            f"_RedisConsumer.{name} now uses message_cache, whose items _ZSetConsumer stores as "
            "(data, claim, fetched_ms) tuples, not the raw message data Dramatiq stores",
        )


def test_outstanding_message_count(broker: RedisBroker) -> None:
    check(
        isinstance(inspect.getattr_static(_RedisConsumer, "outstanding_message_count"), property),
        "_RedisConsumer.outstanding_message_count is no longer a property",
    )
    consumer = _RedisConsumer(broker, QUEUE, 4, 100)
    consumer.queued_message_ids = {"a", "b"}
    consumer.message_cache = [("x", None, 0), ("y", None, 0), ("z", None, 0)]
    check(
        consumer.outstanding_message_count == 5,
        "_RedisConsumer.outstanding_message_count is no longer len(queued_message_ids) + len(message_cache)",
    )


def test_consumer_nack(r: redis.Redis, broker: RedisBroker) -> None:
    k = keys(worker=broker.broker_id)
    proxy = MessageProxy(message("n"))
    r.hset(k.msgs, "rid-n", proxy.encode())
    r.sadd(k.acks, "rid-n")
    consumer = _RedisConsumer(broker, QUEUE, 1, 100)
    consumer.queued_message_ids.add(proxy.message_id)
    consumer.nack(proxy)
    check(
        r.zscore(k.xq, "rid-n") is not None and not r.hexists(k.msgs, "rid-n"),
        "_RedisConsumer.nack(message) no longer dead-letters options['redis_message_id'] on its own queue "
        "through do_nack (_ZSetConsumer.nack calls super().nack)",
    )
    check(
        proxy.message_id not in consumer.queued_message_ids,
        "_RedisConsumer.nack no longer discards message_id from queued_message_ids",
    )


def test_consumer_nack_connection_closed() -> None:
    port = free_port()
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        offline = RedisBroker(client=client, middleware=[], namespace=NS)
        consumer = _RedisConsumer(offline, QUEUE, 1, 100)
        proxy = MessageProxy(message("n"))
        consumer.queued_message_ids.add(proxy.message_id)
        try:
            consumer.nack(proxy)
        except ConnectionClosed:
            pass
        except Exception as exc:
            broken(f"_RedisConsumer.nack raised {type(exc).__name__}, not ConnectionClosed, on a lost connection")
        else:
            broken("_RedisConsumer.nack returned normally with Redis unreachable")
        check(
            proxy.message_id not in consumer.queued_message_ids,
            "_RedisConsumer.nack no longer forgets the message when the connection fails",
        )
    finally:
        client.close()


def test_consumer_requeue(r: redis.Redis, broker: RedisBroker) -> None:
    k = keys(worker=broker.broker_id)
    proxies = [MessageProxy(message(tag)) for tag in ("a", "b")]
    for proxy in proxies:
        r.hset(k.msgs, proxy.options["redis_message_id"], proxy.encode())
        r.sadd(k.acks, proxy.options["redis_message_id"])
    consumer = _RedisConsumer(broker, QUEUE, 2, 100)
    consumer.requeue(iter(proxies))  # Dramatiq passes a generator when it requeues its delay queue
    check(
        [text(i) for i in r.lrange(k.queue, 0, -1)] == ["rid-a", "rid-b"] and r.scard(k.acks) == 0,
        "_RedisConsumer.requeue(messages) no longer requeues options['redis_message_id'] of each message on its "
        "queue via do_requeue (_ZSetConsumer inherits it; Worker.stop calls it)",
    )


# -- RedisBroker: constructor, consume(), declare_queue(), _dispatch and do_<command> ------------------------------


@pytest.mark.parametrize(
    ("kwarg", "value"),
    [("namespace", "ns-x"), ("heartbeat_timeout", 12_345), ("maintenance_chance", 0), ("dead_message_ttl", 67_890)],
)
def test_broker_constructor_kwargs(r: redis.Redis, kwarg: str, value: Any) -> None:
    params = inspect.signature(RedisBroker.__init__).parameters
    check(
        kwarg in params and params[kwarg].kind is inspect.Parameter.KEYWORD_ONLY,
        f"RedisBroker.__init__ no longer takes the keyword argument `{kwarg}` (CekuraBroker passes it)",
    )
    built = RedisBroker(client=r, middleware=[], **{kwarg: value})
    check(
        getattr(built, kwarg, None) == value,
        f"RedisBroker no longer stores `{kwarg}` as the attribute of that name (CekuraBroker reads it)",
    )


def test_broker_client_and_middleware(r: redis.Redis) -> None:
    built = RedisBroker(client=r, middleware=[])
    check(built.client is r, "RedisBroker(client=...) no longer uses that client as `broker.client`")
    check(built.middleware == [], "RedisBroker(middleware=[]) no longer means no middleware")


def test_broker_id(r: redis.Redis) -> None:
    a, b = RedisBroker(client=r, middleware=[]), RedisBroker(client=r, middleware=[])
    check(
        isinstance(a.broker_id, str) and a.broker_id and a.broker_id != b.broker_id,
        "RedisBroker.broker_id is no longer a unique string per broker (the worker id in ack sets and heartbeats)",
    )
    check(
        not set("*?[]") & set(a.broker_id),
        "RedisBroker.broker_id may now contain glob characters (maintenance runs KEYS __acks__.<id>*)",
    )


def test_consume_uses_consumer_class(r: redis.Redis) -> None:
    class Recording(_RedisConsumer):
        pass

    class Custom(RedisBroker):
        @property
        def consumer_class(self) -> type[_RedisConsumer]:
            return Recording

    check(
        isinstance(inspect.getattr_static(RedisBroker, "consumer_class"), property),
        "RedisBroker.consumer_class is no longer a property",
    )
    params = list(inspect.signature(RedisBroker.consume).parameters)
    check(
        params[:4] == ["self", "queue_name", "prefetch", "timeout"],
        f"RedisBroker.consume is no longer (queue_name, prefetch, timeout): {params}",
    )
    built = Custom(client=r, middleware=[], namespace=NS)
    consumer = built.consume(queue_name=QUEUE, prefetch=4, timeout=321)  # as Dramatiq's ConsumerThread calls it
    check(type(consumer) is Recording, "RedisBroker.consume() no longer instantiates self.consumer_class")
    check(
        (consumer.broker, consumer.queue_name, consumer.prefetch, consumer.timeout) == (built, QUEUE, 4, 321),
        "RedisBroker.consume() no longer passes (self, queue_name, prefetch, timeout) to consumer_class",
    )


def test_consume_uses_cekura_consumer_class(r: redis.Redis) -> None:
    from worker.broker.redis_broker import CekuraBroker, _ZSetConsumer

    cekura = CekuraBroker(client=r, middleware=[], namespace=NS)
    consumer = cekura.consume(queue_name=QUEUE, prefetch=4, timeout=100)
    check(type(consumer) is _ZSetConsumer, "RedisBroker.consume() no longer honours CekuraBroker.consumer_class")
    check(cekura.maintenance_chance == 0, "CekuraBroker's maintenance_chance=0 no longer reaches the broker")


def test_declare_queue(r: redis.Redis) -> None:
    class Signals(Middleware):
        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []

        def before_declare_queue(self, broker: Broker, queue_name: str) -> None:
            self.calls.append(("before_declare_queue", queue_name))

        def after_declare_queue(self, broker: Broker, queue_name: str) -> None:
            self.calls.append(("after_declare_queue", queue_name))

        def after_declare_delay_queue(self, broker: Broker, queue_name: str) -> None:
            self.calls.append(("after_declare_delay_queue", queue_name))

    signals = Signals()
    built = RedisBroker(client=r, middleware=[signals], namespace=NS)
    built.declare_queue(QUEUE)
    built.declare_queue(QUEUE)
    check(
        signals.calls
        == [
            ("before_declare_queue", QUEUE),
            ("after_declare_queue", QUEUE),
            ("after_declare_delay_queue", f"{QUEUE}.DQ"),
        ],
        f"RedisBroker.declare_queue's signals changed: {signals.calls}; CekuraBroker.declare_queue replicates all "
        "of it but the delay queue",
    )
    check(
        built.queues == {QUEUE} and isinstance(built.queues, set) and built.delay_queues == {f"{QUEUE}.DQ"},
        "RedisBroker.declare_queue no longer just adds to the `queues` set (and `delay_queues`)",
    )
    check(r.dbsize() == 0, "RedisBroker.declare_queue now writes to Redis; CekuraBroker.declare_queue does not")


def test_dispatch_script_registered(broker: RedisBroker) -> None:
    for name in ("dispatch", "maxstack"):
        check(name in broker.scripts, f"RedisBroker.scripts has no `{name}` script any more")
    check(
        "keys" in inspect.signature(broker.scripts["dispatch"].__call__).parameters,
        "RedisBroker.scripts['dispatch'] is no longer callable as script(keys=[...], args=[...])",
    )


def test_max_unpack_size(broker: RedisBroker) -> None:
    check(callable(getattr(broker, "_max_unpack_size", None)), "RedisBroker._max_unpack_size() is gone")
    size = broker._max_unpack_size()
    check(
        isinstance(size, int) and size > 0,
        f"RedisBroker._max_unpack_size() no longer returns a positive int: {size!r}",
    )


@pytest.mark.parametrize("command", ["ack", "nack", "requeue", "purge", "qsize"])
def test_do_command_routes_through_dispatch(r: redis.Redis, command: str) -> None:
    class Spy(RedisBroker):
        def _dispatch(self, command: str) -> Callable[..., Any]:
            def spy(queue_name: str, *args: Any) -> Any:
                return ("spy", command, queue_name, args)

            return spy

    for klass in RedisBroker.__mro__:
        check(
            f"do_{command}" not in vars(klass),
            f"{klass.__name__} now defines do_{command} itself, bypassing CekuraBroker._dispatch",
        )
    built = Spy(client=r, middleware=[], namespace=NS)
    check(
        getattr(built, f"do_{command}")(QUEUE, "x") == ("spy", command, QUEUE, ("x",)),
        f"RedisBroker.__getattr__ no longer maps do_{command}(queue, *args) to self._dispatch('{command}')",
    )


def test_flush_uses_do_purge(r: redis.Redis) -> None:
    purged: list[str] = []

    class Spy(RedisBroker):
        def _dispatch(self, command: str) -> Callable[..., Any]:
            return lambda queue_name, *args: purged.append(f"{command}:{queue_name}")

    Spy(client=r, middleware=[], namespace=NS).flush(QUEUE)
    check(
        sorted(purged) == [f"purge:{QUEUE}", f"purge:{QUEUE}.DQ"],
        f"RedisBroker.flush(queue) no longer purges the queue and its .DQ through do_purge: {purged}",
    )


def test_dispatch_argument_order(r: redis.Redis) -> None:
    """CekuraBroker._dispatch rebuilds the argument list of RedisBroker._dispatch, with the server's clock."""
    built = RedisBroker(
        client=r, middleware=[], namespace=NS, heartbeat_timeout=1234, dead_message_ttl=5678, maintenance_chance=0
    )
    calls: list[tuple[list[Any], list[Any]]] = []
    built.scripts["dispatch"] = lambda keys, args: calls.append((keys, args))
    before = int(time.time() * 1000)
    built.do_ack(QUEUE, "rid-1")
    after = int(time.time() * 1000)
    check(len(calls) == 1, "RedisBroker._dispatch no longer calls scripts['dispatch'](keys=..., args=...) once")
    keys_sent, args = calls[0]
    check(keys_sent == [NS], f"RedisBroker._dispatch no longer passes keys=[namespace]: {keys_sent}")
    expected = [
        ("ARGV[1] command", "ack"),
        ("ARGV[2] timestamp (epoch ms)", None),
        ("ARGV[3] queue_name", QUEUE),
        ("ARGV[4] worker_id (broker_id)", built.broker_id),
        ("ARGV[5] heartbeat_timeout", 1234),
        ("ARGV[6] dead_message_ttl", 5678),
        ("ARGV[7] do_maintenance", 0),
        ("ARGV[8] max_unpack_size", built._max_unpack_size()),
        ("ARGV[9] first command argument", "rid-1"),
    ]
    check(len(args) == len(expected), f"RedisBroker._dispatch now sends {len(args)} ARGV entries, not 9: {args}")
    for i, (name, value) in enumerate(expected):
        if value is None:
            check(
                isinstance(args[i], int) and before <= args[i] <= after,
                f"RedisBroker._dispatch's {name} is no longer the host clock in epoch ms: {args[i]!r}",
            )
        else:
            check(args[i] == value, f"RedisBroker._dispatch's {name} is now {args[i]!r}, not {value!r}")


# -- dispatch.lua: its text -----------------------------------------------------------------------------------------

DISPATCH_ARGV = {
    1: "command",
    2: "timestamp",
    3: "queue_name",
    4: "worker_id",
    5: "heartbeat_timeout",
    6: "dead_message_ttl",
    7: "do_maintenance",
    8: "max_unpack_size",
}


@pytest.mark.parametrize(
    ("index", "name"), sorted(DISPATCH_ARGV.items()), ids=[f"ARGV{i}-{n}" for i, n in sorted(DISPATCH_ARGV.items())]
)
def test_dispatch_lua_argv_layout(broker: RedisBroker, index: int, name: str) -> None:
    found = dict((int(i), n) for n, i in re.findall(r"local\s+(\w+)\s*=\s*ARGV\[(\d+)\]", dispatch_lua_source(broker)))
    check(
        found.get(index) == name,
        f"dispatch.lua ARGV[{index}] is no longer `{name}` (it is {found.get(index)!r}); CekuraBroker._dispatch "
        "and run_maintenance pass it positionally",
    )


def test_dispatch_lua_command_args_at_argv_9(broker: RedisBroker) -> None:
    check(
        re.search(r"for\s+i\s*=\s*9\s*,\s*#ARGV", dispatch_lua_source(broker)),
        "dispatch.lua's command arguments no longer start at ARGV[9]",
    )


DISPATCH_KEYS = {
    "heartbeats": 'local heartbeats = namespace .. ":__heartbeats__"',
    "acks": 'local acks = namespace .. ":__acks__." .. worker_id',
    "queue_acks": 'local queue_acks = acks .. "." .. queue_name',
    "queue": 'local queue_full_name = namespace .. ":" .. queue_name',
    "msgs": 'local queue_messages = queue_full_name .. ".msgs"',
    "xq": 'local xqueue_full_name = namespace .. ":" .. queue_canonical_name .. ".XQ"',
    "xq_msgs": 'local xqueue_messages = xqueue_full_name .. ".msgs"',
}


@pytest.mark.parametrize("line", DISPATCH_KEYS.values(), ids=DISPATCH_KEYS.keys())
def test_dispatch_lua_key_layout(broker: RedisBroker, line: str) -> None:
    squash = re.compile(r"\s+")
    source = {squash.sub(" ", raw.strip()) for raw in dispatch_lua_source(broker).splitlines()}
    check(
        line in source,
        f"dispatch.lua no longer builds its key as `{line}`; fetch.lua, schedule.lua, finish.lua, advance.lua, "
        "sweep_acks and the summary/exposition code build the same key names by hand",
    )


# -- dispatch.lua: its behaviour on Redis -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ack", "nack", "requeue", "qsize", "purge"])
def test_dispatch_heartbeat(r: redis.Redis, broker: RedisBroker, command: str) -> None:
    k = keys(worker="w-hb")
    dispatch(
        broker, command, QUEUE, *(["x"] if command in {"ack", "nack", "requeue"} else []), ts=1_234_567, worker="w-hb"
    )
    check(
        r.zscore(k.heartbeats, "w-hb") == 1_234_567,
        f"dispatch.lua `{command}` no longer records ZADD <ns>:__heartbeats__ ARGV[2] ARGV[4] (heartbeats in ms on "
        "the caller's clock, the same set fetch.lua writes with the server's)",
    )


def test_dispatch_ack(r: redis.Redis, broker: RedisBroker) -> None:
    k = keys(worker="w")
    other = keys(worker="other")
    r.hset(k.msgs, mapping={"a": b"A", "b": b"B", "c": b"C"})
    r.sadd(k.acks, "a")
    r.sadd(other.acks, "c")
    for rid in ("a", "b", "c"):
        dispatch(broker, "ack", QUEUE, rid, ts=server_ms(r), worker="w")
    check(
        not r.sismember(k.acks, "a") and not r.hexists(k.msgs, "a"),
        "dispatch.lua `ack` no longer does SREM <ns>:__acks__.<worker>.<queue> id, then HDEL <queue>.msgs id",
    )
    check(
        r.hexists(k.msgs, "b") and r.hexists(k.msgs, "c") and r.sismember(other.acks, "c"),
        "dispatch.lua `ack` now deletes a message that is not in the calling worker's ack set",
    )


def test_dispatch_requeue(r: redis.Redis, broker: RedisBroker) -> None:
    k = keys(worker="w")
    r.hset(k.msgs, mapping={"a": b"A", "c": b"C"})
    r.sadd(k.acks, "a", "b")  # b: held, but its data is gone; c: not held by this worker
    dispatch(broker, "requeue", QUEUE, "a", "b", "c", ts=server_ms(r), worker="w")
    check(
        [text(i) for i in r.lrange(k.queue, 0, -1)] == ["a"],
        "dispatch.lua `requeue` no longer RPUSHes exactly the ids it removed from the worker's ack set whose data "
        f"still exists: queue is {r.lrange(k.queue, 0, -1)}",
    )
    check(r.scard(k.acks) == 0, "dispatch.lua `requeue` no longer removes the ids from the worker's ack set")


def test_dispatch_nack(r: redis.Redis, broker: RedisBroker) -> None:
    k = keys(worker="w")
    r.hset(k.msgs, "a", b"A")
    r.sadd(k.acks, "a")
    dispatch(broker, "nack", QUEUE, "a", ts=1_700_000_000_000, worker="w")
    check(
        r.zscore(k.xq, "a") == 1_700_000_000_000 and r.hget(k.xq_msgs, "a") == b"A",
        "dispatch.lua `nack` no longer moves the message to <queue>.XQ (scored by ARGV[2]) and <queue>.XQ.msgs",
    )
    check(
        not r.hexists(k.msgs, "a") and not r.sismember(k.acks, "a"),
        "dispatch.lua `nack` no longer removes the message from the queue's hash and the worker's ack set",
    )


def _dead_and_live_workers(r: redis.Redis, now: int) -> tuple[Keys, Keys]:
    dead, live = keys(worker="dead"), keys(worker="live")
    r.zadd(dead.heartbeats, {"dead": now - HEARTBEAT_TIMEOUT - 1, "live": now - HEARTBEAT_TIMEOUT + 1000})
    r.hset(dead.msgs, mapping={"d1": b"D1", "d2": b"D2", "l1": b"L1"})
    r.sadd(dead.acks, "d1", "d2", "gone")  # gone: its data was already deleted
    r.sadd(live.acks, "l1")
    return dead, live


def test_maintenance_requeues_dead_workers(r: redis.Redis, broker: RedisBroker) -> None:
    now = server_ms(r)
    dead, live = _dead_and_live_workers(r, now)
    dispatch(broker, "qsize", QUEUE, ts=now, worker="maintainer", maintenance=1)
    check(
        sorted(text(i) or "" for i in r.lrange(dead.queue, 0, -1)) == ["d1", "d2"],
        "dispatch.lua maintenance (ARGV[7] == 1) no longer RPUSHes a dead worker's acked ids that still have data "
        "(dead: heartbeat <= ARGV[2] - ARGV[5] ms)",
    )
    check(not r.exists(dead.acks), "dispatch.lua maintenance no longer deletes a dead worker's ack set")
    check(
        r.zscore(dead.heartbeats, "dead") is None,
        "dispatch.lua maintenance no longer drops a dead worker's heartbeat once it has no ack sets left",
    )
    check(
        members(r, live.acks) == {"l1"} and r.zscore(live.heartbeats, "live") is not None,
        "dispatch.lua maintenance now touches a live worker (heartbeat within ARGV[5] ms of ARGV[2])",
    )


def test_maintenance_is_per_queue(r: redis.Redis, broker: RedisBroker) -> None:
    now = server_ms(r)
    q1, q2 = keys("q1", "dead"), keys("q2", "dead")
    r.zadd(q1.heartbeats, {"dead": now - HEARTBEAT_TIMEOUT - 1})
    r.hset(q1.msgs, "a", b"A")
    r.hset(q2.msgs, "b", b"B")
    r.sadd(q1.acks, "a")
    r.sadd(q2.acks, "b")
    dispatch(broker, "qsize", "q1", ts=now, worker="maintainer", maintenance=1)
    check(
        r.lrange(q1.queue, 0, -1) == [b"a"] and members(r, q2.acks) == {"b"},
        "dispatch.lua maintenance no longer requeues only the queue named in ARGV[3] (run_maintenance loops over "
        "every declared queue)",
    )
    check(
        r.zscore(q1.heartbeats, "dead") is not None,
        "dispatch.lua maintenance now forgets a dead worker that still has ack sets on other queues",
    )
    dispatch(broker, "qsize", "q2", ts=now, worker="maintainer", maintenance=1)
    check(
        r.lrange(q2.queue, 0, -1) == [b"b"] and r.zscore(q1.heartbeats, "dead") is None,
        "dispatch.lua maintenance no longer requeues the dead worker's other queue and then forgets the worker",
    )


def test_maintenance_expires_dead_letters(r: redis.Redis, broker: RedisBroker) -> None:
    now = server_ms(r)
    k = keys()
    r.zadd(k.xq, {"old": now - DEAD_MESSAGE_TTL - 1, "new": now - DEAD_MESSAGE_TTL + 60_000})
    r.hset(k.xq_msgs, mapping={"old": b"O", "new": b"N"})
    dispatch(broker, "qsize", QUEUE, ts=now, worker="maintainer", maintenance=1)
    check(
        [text(i) for i in r.zrange(k.xq, 0, -1)] == ["new"] and list(r.hkeys(k.xq_msgs)) == [b"new"],
        "dispatch.lua maintenance no longer drops dead letters older than ARGV[6] ms from .XQ and .XQ.msgs",
    )


@pytest.mark.parametrize("command", ["qsize", "ack", "requeue"])
def test_maintenance_only_when_argv7_is_1(r: redis.Redis, broker: RedisBroker, command: str) -> None:
    now = server_ms(r)
    dead, _ = _dead_and_live_workers(r, now)
    dispatch(broker, command, QUEUE, *(["zzz"] if command != "qsize" else []), ts=now, worker="maintainer")
    check(
        r.llen(dead.queue) == 0 and members(r, dead.acks) == {"d1", "d2", "gone"},
        f"dispatch.lua `{command}` with ARGV[7] = 0 now runs maintenance; CekuraBroker relies on 0 meaning none, "
        "so that only run_maintenance, on the server's clock, ever requeues",
    )


def test_dispatch_qsize_is_side_effect_free(r: redis.Redis, broker: RedisBroker) -> None:
    now = server_ms(r)
    k = keys(worker="live")
    r.zadd(k.heartbeats, {"live": now})
    r.rpush(k.queue, "a")
    r.hset(k.msgs, mapping={"a": b"A", "l1": b"L1"})
    r.sadd(k.acks, "l1")
    before = {key: r.dump(key) for key in (k.queue, k.msgs, k.acks)}
    reply = dispatch(broker, "qsize", QUEUE, ts=now, worker="maintainer", maintenance=1)
    check(
        {key: r.dump(key) for key in before} == before,
        "dispatch.lua `qsize` (run_maintenance's vehicle for maintenance) now changes the queue's keys",
    )
    check(isinstance(reply, int), f"dispatch.lua `qsize` no longer returns a count: {reply!r}")


def test_dispatch_fetch(r: redis.Redis, broker: RedisBroker) -> None:
    """fetch.lua reimplements this command; it must leave Redis in the state Dramatiq's own fetch would."""
    k = keys(worker="w")
    for i in range(5):
        dispatch(broker, "enqueue", QUEUE, f"m{i}", f"data{i}".encode(), ts=server_ms(r), worker="producer")
    reply = dispatch(broker, "fetch", QUEUE, 10, ts=server_ms(r), worker="w", max_unpack=2)
    check(
        reply == [b"data0", b"data1"],
        f"dispatch.lua `fetch` no longer LPOPs up to min(ARGV[9], ARGV[8]) ids and returns their data: {reply}",
    )
    check(
        members(r, k.acks) == {"m0", "m1"} and r.hexists(k.msgs, "m0"),
        "dispatch.lua `fetch` no longer adds the popped ids to <ns>:__acks__.<worker>.<queue> (keeping the data)",
    )


def test_dispatch_enqueue(r: redis.Redis, broker: RedisBroker) -> None:
    """schedule.lua and finish.lua write a ready message the same way, by hand."""
    k = keys(worker="producer")
    dispatch(broker, "enqueue", QUEUE, "rid-1", b"payload", ts=server_ms(r), worker="producer")
    check(
        r.hget(k.msgs, "rid-1") == b"payload" and r.lrange(k.queue, 0, -1) == [b"rid-1"],
        "dispatch.lua `enqueue` is no longer HSET <queue>.msgs id data + RPUSH <queue> id",
    )
    check(
        {text(key) for key in r.keys("*")} == {k.queue, k.msgs, k.heartbeats},
        f"dispatch.lua `enqueue` now writes other keys too: {sorted(text(key) or '' for key in r.keys('*'))}",
    )


def test_flush_deletes_queue_keys(r: redis.Redis, broker: RedisBroker) -> None:
    mine, other = keys(worker=broker.broker_id), keys(worker="other")
    r.rpush(mine.queue, "a")
    r.hset(mine.msgs, "a", b"A")
    r.sadd(mine.acks, "b")
    r.sadd(other.acks, "c")
    r.zadd(mine.xq, {"x": 1})
    r.hset(mine.xq_msgs, "x", b"X")
    broker.flush(QUEUE)
    check(
        not any(r.exists(key) for key in (mine.queue, mine.msgs, mine.acks, mine.xq, mine.xq_msgs)),
        "RedisBroker.flush(queue) no longer deletes <queue>, .msgs, this broker's ack set, .XQ and .XQ.msgs "
        "(CekuraBroker.flush relies on it and only adds .ZQ)",
    )


def test_fetch_lua_state_suits_dispatch(r: redis.Redis, broker: RedisBroker) -> None:
    """fetch.lua pops like dispatch.lua's fetch; Dramatiq's ack, requeue and maintenance then apply."""
    from worker.store import scripts

    fetch = scripts.load(r, "fetch")
    k = keys(worker="w")
    for tag in "abcd":
        dispatch(broker, "enqueue", QUEUE, tag, message(tag).encode(), ts=server_ms(r), worker="producer")
    reply = fetch(keys=[NS, "", "", ""], args=[QUEUE, "w", 3, 1000, "", "", 0, 0])
    fetched = [Message.decode(data).args[0] for data in reply[2::2]]
    check(fetched == ["a", "b", "c"], f"fetch.lua no longer pops the way dispatch.lua enqueued: {fetched}")
    check(
        members(r, k.acks) == {"a", "b", "c"} and r.zscore(k.heartbeats, "w") is not None,
        "fetch.lua no longer writes Dramatiq's ack set and heartbeat for the worker",
    )
    dispatch(broker, "ack", QUEUE, "a", ts=server_ms(r), worker="w")
    dispatch(broker, "requeue", QUEUE, "b", ts=server_ms(r), worker="w")
    check(
        not r.hexists(k.msgs, "a") and r.lrange(k.queue, 0, -1) == [b"d", b"b"],
        "Dramatiq's `ack`/`requeue` no longer apply to a message fetched by fetch.lua",
    )
    later = server_ms(r) + HEARTBEAT_TIMEOUT + 1000
    dispatch(broker, "qsize", QUEUE, ts=later, worker="maintainer", maintenance=1)
    check(
        r.lrange(k.queue, 0, -1) == [b"d", b"b", b"c"] and r.zscore(k.heartbeats, "w") is None,
        "Dramatiq's maintenance no longer requeues what fetch.lua handed to a worker that died",
    )


# -- Message and MessageProxy -------------------------------------------------------------------------------------

MESSAGE_FIELDS = ["queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp"]


def test_message_fields() -> None:
    names = [f.name for f in fields(Message)]
    check(
        names == MESSAGE_FIELDS,
        f"dramatiq.Message's fields are now {names}; finish.lua builds a message with exactly {MESSAGE_FIELDS}",
    )


def test_message_copy_merges_options() -> None:
    original = message("c", retries=2, due_ms=5)
    copy = original.copy(options={"redis_message_id": "new"})
    check(
        copy.options == {"redis_message_id": "new", "retries": 2, "due_ms": 5},
        f"Message.copy(options=...) no longer merges the new options over the old: {copy.options}",
    )
    check(
        original.options == {"redis_message_id": "rid-c", "retries": 2, "due_ms": 5},
        "Message.copy(options=...) now changes the original's options (its redis_message_id is acked afterwards)",
    )
    check(copy.message_id == original.message_id, "Message.copy() no longer keeps the message_id")
    proxied = MessageProxy(original).copy(options={"x": 1})
    check(
        type(proxied) is Message and proxied.options["x"] == 1,
        "MessageProxy.copy() no longer delegates to Message.copy (CekuraBroker.enqueue gets proxies from Retries)",
    )


def test_message_encode_is_cjson_readable(r: redis.Redis) -> None:
    data = message("job-1", actor="cekura.poll", args=("job-1", 7)).encode()
    check(isinstance(data, bytes), "Message.encode() no longer returns bytes")
    decoded = json.loads(data)
    check(
        isinstance(decoded, dict) and sorted(decoded) == sorted(MESSAGE_FIELDS),
        "Message.encode() (the default JSONEncoder) is no longer a JSON object of the message's fields",
    )
    lua = (
        "local m = cjson.decode(ARGV[1]) "
        "return {m.actor_name, m.args[1], type(m.args[2]), m.args[2], m.options.redis_message_id}"
    )
    check(
        r.eval(lua, 0, data) == [b"cekura.poll", b"job-1", b"number", 7, b"rid-job-1"],
        "Redis's cjson no longer reads actor_name, args and options out of Message.encode() (fetch.lua's claims)",
    )


def test_message_decode_takes_cjson_output(r: redis.Redis) -> None:
    lua = (
        "return cjson.encode({queue_name = ARGV[1], actor_name = ARGV[2], args = {ARGV[3], ARGV[4], 5}, "
        "kwargs = {}, options = {redis_message_id = ARGV[5]}, message_id = ARGV[6], message_timestamp = 1700000000123})"
    )
    data = r.eval(lua, 0, QUEUE, "cekura.cancel_remote", "job-1", "kind", "rid-1", "mid-1")
    try:
        decoded = Message.decode(data)
    except Exception as exc:
        broken(f"Message.decode no longer accepts the message JSON finish.lua builds with cjson: {exc!r}")
    check(
        (decoded.args, decoded.kwargs, decoded.options, decoded.message_id, decoded.message_timestamp)
        == (("job-1", "kind", 5), {}, {"redis_message_id": "rid-1"}, "mid-1", 1700000000123),
        f"Message.decode reads finish.lua's message differently: {decoded!r}",
    )


class Tagged(MessageProxy):
    """A MessageProxy subclass with an extra attribute, as CekuraBroker's _FetchedMessage."""

    def __init__(self, message: Message[Any], tag: str) -> None:
        super().__init__(message)
        self.tag = tag


def test_message_proxy_subclass() -> None:
    params = list(inspect.signature(MessageProxy.__init__).parameters)
    check(params == ["self", "message"], f"MessageProxy.__init__ is no longer (message): {params}")
    original = message("p")
    proxy = Tagged(original, "extra")
    check(
        proxy.tag == "extra" and proxy.message_id == original.message_id and not proxy.failed,
        "a MessageProxy subclass can no longer carry its own attributes next to the delegated message ones",
    )
    check(
        proxy.options is original.options,
        "MessageProxy.options is no longer the message's own options dict (Retries mutates it in place)",
    )
    check(
        getattr(MessageProxy(original), "claim", None) is None,
        "a plain MessageProxy now has a `claim` attribute (_CurrentClaim reads getattr(message, 'claim', None))",
    )


# -- Middleware signals --------------------------------------------------------------------------------------------


class FakeBroker(Broker):
    """Dramatiq's base Broker with scripted consumers: enough for the real Worker and middleware."""

    def __init__(self, consumers: Iterable[Consumer], middleware: list[Middleware]) -> None:
        super().__init__(middleware=middleware)
        self.queues = {}
        self.pending = deque(consumers)
        self.consume_calls: list[dict[str, Any]] = []
        self.enqueued: list[tuple[Any, Any]] = []

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
        self.consume_calls.append({"queue_name": queue_name, "prefetch": prefetch, "timeout": timeout})
        return self.pending.popleft() if self.pending else Scripted("idle", [], [])

    def declare_queue(self, queue_name: str) -> None:  # CekuraBroker's: no delay queue
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues[queue_name] = None
            self.emit_after("declare_queue", queue_name)

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        self.enqueued.append((message, delay))
        return message


def test_enqueue_signals() -> None:
    seen: list[tuple[str, Any, Any, Any]] = []

    class Hooks(Middleware):
        def before_enqueue(self, broker: Broker, message: Message[Any], delay: int) -> None:
            seen.append(("before", broker, message, delay))

        def after_enqueue(self, broker: Broker, message: Message[Any], delay: int) -> None:
            seen.append(("after", broker, message, delay))

    fake = FakeBroker([], [Hooks()])
    sent = message("e")
    fake.emit_before("enqueue", sent, 250)
    fake.emit_after("enqueue", sent, 250)
    check(
        seen == [("before", fake, sent, 250), ("after", fake, sent, 250)],
        "Broker.emit_before/emit_after('enqueue', message, delay) no longer call "
        "before_enqueue/after_enqueue(broker, message, delay)",
    )


def test_send_with_options_delay() -> None:
    fake = FakeBroker([], [])
    actor = dramatiq.actor(lambda tag: None, broker=fake, actor_name="contract_send", queue_name=QUEUE)
    actor.send_with_options(args=("later",), delay=250)
    actor.send("now")
    check(
        [delay for _, delay in fake.enqueued] == [250, None],
        "Actor.send_with_options(delay=ms) / send() no longer call broker.enqueue(message, delay=<ms or None>): "
        f"{[delay for _, delay in fake.enqueued]}",
    )
    sent = fake.enqueued[0][0]
    check(
        isinstance(sent, Message) and sent.queue_name == QUEUE and "eta" not in sent.options,
        "Actor.send_with_options now hands the broker something other than a plain Message on the actor's queue, "
        "or sets an eta itself",
    )


def test_actor_broker_is_rebindable() -> None:
    """worker/runtime/app.py moves actors to a new broker with `actor.broker = broker; broker.declare_actor(actor)`."""
    old, new = FakeBroker([], []), FakeBroker([], [])
    actor = dramatiq.actor(lambda tag: None, broker=old, actor_name="contract_rebind", queue_name=QUEUE)
    actor.broker = new
    new.declare_actor(actor)
    actor.send("moved")
    check(
        not old.enqueued and len(new.enqueued) == 1 and new.get_actor("contract_rebind") is actor,
        "Actor.send no longer goes through the actor's `broker` attribute, so setup() cannot rebind actors",
    )


def test_retries_reenqueue_the_proxy() -> None:
    fake = FakeBroker([], [Retries(min_backoff=10, max_backoff=100)])
    dramatiq.actor(lambda tag: None, broker=fake, actor_name="contract_retry", queue_name=QUEUE, max_retries=3)
    proxy = Tagged(message("r", actor="contract_retry", due_ms=5), "r")
    fake.emit_after("process_message", proxy, exception=RuntimeError("boom"))
    check(len(fake.enqueued) == 1, "Retries no longer re-enqueues a failed message through broker.enqueue")
    sent, delay = fake.enqueued[0]
    check(
        sent is proxy and isinstance(delay, int) and delay > 0,
        "Retries no longer calls broker.enqueue(<the MessageProxy>, delay=<ms>): CekuraBroker.enqueue copies it "
        "with a fresh redis_message_id and never adds an eta",
    )
    check(
        proxy.options.get("retries") == 1 and proxy.options["redis_message_id"] == "rid-r" and not proxy.failed,
        "Retries no longer bumps options['retries'] in place, keeping the old redis_message_id for the ack",
    )


# -- Dramatiq's Worker driving a consumer -------------------------------------------------------------------------


class Gate:
    """A consumer step that returns None until `ready()` is true."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.ready = ready


class Scripted(Consumer):
    """A consumer that plays a script of messages, gates and exceptions, and logs what the Worker does to it."""

    def __init__(self, name: str, steps: list[Any], log: list[tuple[str, str, Any]]) -> None:
        self.name = name
        self.steps = deque(steps)
        self.log = log

    def __next__(self) -> MessageProxy | None:
        if self.steps:
            step = self.steps[0]
            if isinstance(step, BaseException):
                self.steps.popleft()
                raise step
            if not isinstance(step, Gate):
                return self.steps.popleft()  # type: ignore[no-any-return]
            if step.ready():
                self.steps.popleft()
                return None
        time.sleep(0.005)
        return None

    def ack(self, message: MessageProxy) -> None:
        self.log.append(("ack", self.name, message))

    def nack(self, message: MessageProxy) -> None:
        self.log.append(("nack", self.name, message))

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        requeued = list(messages)
        if requeued:
            self.log.append(("requeue", self.name, requeued))

    def close(self) -> None:
        self.log.append(("close", self.name, None))


class Recorder(Middleware):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any]] = []

    def after_consumer_thread_boot(self, broker: Broker, thread: Any) -> None:
        self.events.append(("consumer_thread_boot", thread, threading.current_thread()))

    def after_worker_thread_boot(self, broker: Broker, thread: Any) -> None:
        self.events.append(("worker_thread_boot", thread, threading.current_thread()))

    def before_delay_message(self, broker: Broker, message: MessageProxy) -> None:
        self.events.append(("delay_message", message, None))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self.events.append(("process_message", message, None))
        if getattr(message, "tag", "") == "fail":
            message.fail()


@dataclass
class Run:
    broker: FakeBroker
    worker: dramatiq.Worker
    log: list[tuple[str, str, Any]]
    recorder: Recorder
    ran: list[tuple[str, Any]] = field(default_factory=list)
    proxies: dict[str, Tagged] = field(default_factory=dict)
    threads: dict[str, Any] = field(default_factory=dict)

    def logged(self, op: str) -> list[tuple[str, Any]]:
        return [(name, item) for kind, name, item in list(self.log) if kind == op]

    def tags(self, op: str) -> list[str]:
        out: list[str] = []
        for _, item in self.logged(op):
            out.extend(m.tag for m in (item if isinstance(item, list) else [item]))
        return out


def _proxy(tag: str, **options: Any) -> Tagged:
    return Tagged(message(tag, **options), tag)


def _actor(run: Run, started: threading.Semaphore, release: threading.Event) -> None:
    def contract_actor(tag: str) -> None:
        run.ran.append((tag, CurrentMessage.get_current_message()))
        if tag.startswith("block"):
            started.release()
            release.wait(10)

    dramatiq.actor(contract_actor, broker=run.broker, actor_name="contract_actor", queue_name=QUEUE)


WORKER_THREADS = 3
WORKER_TIMEOUT_MS = 50


@pytest.fixture(scope="module")
def run() -> Run:
    """One real Worker (3 threads) over a scripted consumer: an ok message, one a middleware fails, one with an eta,
    then five that block their worker thread, so that two are still in the work queue when the Worker stops."""
    log: list[tuple[str, str, Any]] = []
    ok, fail = _proxy("ok"), _proxy("fail")
    eta = _proxy("eta", eta=int(time.time() * 1000) + 3_600_000)
    blocks = [_proxy(f"block{i}") for i in range(5)]
    first_done = Gate(lambda: {"ok", "fail"} <= {m.tag for kind, _, m in list(log) if kind in {"ack", "nack"}})
    consumer = Scripted("main", [ok, fail, eta, first_done, *blocks], log)
    recorder = Recorder()
    fake = FakeBroker([consumer], [recorder, CurrentMessage()])
    worker = dramatiq.Worker(fake, worker_threads=WORKER_THREADS, worker_timeout=WORKER_TIMEOUT_MS)
    result = Run(fake, worker, log, recorder, proxies={p.tag: p for p in [ok, fail, eta, *blocks]})
    started, release = threading.Semaphore(0), threading.Event()
    _actor(result, started, release)
    worker.start()
    try:
        for _ in range(WORKER_THREADS):
            if not started.acquire(timeout=10):
                broken(f"a Worker over a consumer no longer processes what it yields (ran: {result.ran}, log: {log})")
        wait_until(lambda: not consumer.steps, "the Worker's consumer thread stopped iterating its consumer")
        result.threads = {"workers": list(worker.workers), "consumers": dict(worker.consumers)}
        result.threads["alive"] = [t.is_alive() for t in [*worker.workers, *worker.consumers.values()]]
    finally:
        # The blocked actors return only once Worker.stop has told every worker thread to stop (it does that
        # first), so none of them can take one of the two messages still in the work queue, however slowly
        # Worker.stop gets there.
        threading.Thread(target=_release_once_stopping, args=(worker, release), daemon=True).start()
        worker.stop(timeout=10_000)
    return result


def _release_once_stopping(worker: dramatiq.Worker, release: threading.Event) -> None:
    """Set `release` once every worker thread of `worker` has been told to stop (or after 30 s, whatever happens)."""
    give_up = time.monotonic() + 30
    while any(getattr(t, "running", False) for t in worker.workers) and time.monotonic() < give_up:
        time.sleep(0.005)
    release.set()


def test_worker_consume_arguments(run: Run) -> None:
    check(
        run.broker.consume_calls
        == [{"queue_name": QUEUE, "prefetch": run.worker.queue_prefetch, "timeout": WORKER_TIMEOUT_MS}],
        "Dramatiq's ConsumerThread no longer calls broker.consume(queue_name=, prefetch=<queue_prefetch>, "
        f"timeout=<worker_timeout>) once: {run.broker.consume_calls}",
    )
    if not getattr(dramatiq_worker, "QUEUE_PREFETCH", 0):  # set from the dramatiq_queue_prefetch variable
        check(
            run.worker.queue_prefetch == 2 * WORKER_THREADS,
            f"Dramatiq's queue prefetch is no longer 2 x worker threads: {run.worker.queue_prefetch} "
            "(_ZSetConsumer fetches again at prefetch // 2 outstanding)",
        )


def test_worker_consumers_from_declare_signals(run: Run) -> None:
    check(
        set(run.threads["consumers"]) == {QUEUE},
        "Dramatiq's Worker now starts consumers other than on after_declare_queue / after_declare_delay_queue "
        f"(CekuraBroker emits no delay-queue signal, so must get no .DQ consumer): {set(run.threads['consumers'])}",
    )


def test_worker_thread_attributes(run: Run) -> None:
    check(
        len(run.threads["workers"]) == WORKER_THREADS
        and all(isinstance(t, threading.Thread) for t in run.threads["consumers"].values())
        and all(run.threads["alive"]),
        "dramatiq.Worker no longer exposes its threads as `workers` (list) and `consumers` (dict by queue); "
        "worker/runtime/process.py's threads_alive reads them",
    )


def test_proxy_reaches_middleware_and_ack(run: Run) -> None:
    ok = run.proxies["ok"]
    check(
        any(kind == "process_message" and m is ok for kind, m, _ in run.recorder.events),
        "before_process_message no longer gets the very MessageProxy the consumer returned (_CurrentClaim reads "
        "its claim)",
    )
    check("ok" in [tag for tag, _ in run.ran], "the actor never ran for a message the consumer returned")
    check(
        [(name, m) for name, m in run.logged("ack") if m is ok] == [("main", ok)],
        "Dramatiq no longer acks a processed message by calling consumer.ack(<that same proxy>) on the consumer "
        "of message.queue_name",
    )


def test_failed_message_is_nacked(run: Run) -> None:
    check(
        run.tags("nack") == ["fail"] and "fail" not in run.tags("ack") and "fail" not in [t for t, _ in run.ran],
        f"a message marked failed is no longer nacked through consumer.nack (and not run): {run.log}",
    )


def test_eta_is_held_in_worker_memory(run: Run) -> None:
    eta = run.proxies["eta"]
    check(
        any(kind == "delay_message" and m is eta for kind, m, _ in run.recorder.events)
        and "eta" not in [t for t, _ in run.ran],
        "Dramatiq's ConsumerThread no longer holds a message with an `eta` option in memory until then; "
        "CekuraBroker's 'never set eta' rule exists because it does",
    )
    check(
        "eta" in run.tags("requeue"),
        "a message held for its eta is no longer handed back through consumer.requeue when the Worker stops",
    )


def test_worker_stop_requeues_then_closes(run: Run) -> None:
    acked = sorted(t for t in run.tags("ack") if t.startswith("block"))
    requeued = sorted(t for t in run.tags("requeue") if t.startswith("block"))
    check(
        len(acked) == WORKER_THREADS and sorted(acked + requeued) == [f"block{i}" for i in range(5)],
        "Worker.stop no longer lets worker threads finish their message and requeues the ones still in the work "
        f"queue through consumer.requeue: acked {acked}, requeued {requeued}",
    )
    kinds = [kind for kind, _, _ in run.log]
    check(
        "close" in kinds and kinds.index("close") > max(i for i, k in enumerate(kinds) if k in {"ack", "requeue"}),
        "Worker.stop no longer calls consumer.close() after the last ack and requeue (_ZSetConsumer.close flushes "
        f"its buffered acks and requeues its unstarted messages): {kinds}",
    )


def test_seam_current_message(run: Run) -> None:
    current = dict(run.ran).get("ok")
    check(
        current is run.proxies["ok"] and getattr(current, "tag", None) == "ok",
        "CurrentMessage.get_current_message() no longer returns the consumer's own MessageProxy object "
        "(a documented seam that could replace _CurrentClaim; worker/broker/redis_broker.py does not use it yet)",
    )


def test_seam_thread_boot_hooks(run: Run) -> None:
    consumer_boots = [(t, c) for kind, t, c in run.recorder.events if kind == "consumer_thread_boot"]
    worker_boots = [(t, c) for kind, t, c in run.recorder.events if kind == "worker_thread_boot"]
    check(
        len(consumer_boots) == 1 and all(t is c and t.queue_name == QUEUE for t, c in consumer_boots),
        "after_consumer_thread_boot no longer runs once per queue in the consumer thread itself "
        "(a documented seam; worker/broker/redis_broker.py does not use it)",
    )
    check(
        len(worker_boots) == WORKER_THREADS and all(t is c for t, c in worker_boots),
        "after_worker_thread_boot no longer runs in each worker thread "
        "(a documented seam; worker/broker/redis_broker.py does not use it)",
    )


@pytest.fixture
def fast_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dramatiq_worker, "CONSUMER_RESTART_DELAY_SECS", 0.01, raising=False)


@pytest.mark.parametrize(
    "error",
    [ConnectionClosed(redis.ConnectionError("dropped")), redis.ResponseError("script error")],
    ids=["ConnectionClosed", "RedisError"],
)
def test_next_error_reconnects(fast_restart: None, error: Exception) -> None:
    check(
        issubclass(ConnectionClosed, BrokerError),
        "dramatiq.errors.ConnectionClosed is no longer a BrokerError (the connection error ConsumerThread catches)",
    )
    log: list[tuple[str, str, Any]] = []
    ok = _proxy("ok")
    fake = FakeBroker([Scripted("first", [error], log), Scripted("second", [ok], log)], [])
    dramatiq.actor(lambda tag: None, broker=fake, actor_name="contract_actor", queue_name=QUEUE)
    worker = dramatiq.Worker(fake, worker_threads=1, worker_timeout=WORKER_TIMEOUT_MS)
    worker.start()
    try:
        wait_until(
            lambda: any(kind == "ack" for kind, _, _ in log),
            f"{type(error).__name__} from consumer.__next__ no longer makes Dramatiq's ConsumerThread close that "
            f"consumer and call broker.consume() again (consume calls: {len(fake.consume_calls)}, log: {log})",
        )
    finally:
        worker.stop(timeout=5_000)
    check(("close", "first", None) in log, f"the consumer that raised {type(error).__name__} was never closed")
    check(
        len(fake.consume_calls) >= 2 and fake.consume_calls[0] == fake.consume_calls[1],
        "ConsumerThread no longer reconnects with the same consume() arguments",
    )


def test_ack_after_reconnect_goes_to_new_consumer(fast_restart: None) -> None:
    log: list[tuple[str, str, Any]] = []
    started, release = threading.Event(), threading.Event()
    held = _proxy("held")
    dropped = ConnectionClosed(redis.ConnectionError("dropped"))
    first = Scripted("first", [held, Gate(started.is_set), dropped], log)
    fake = FakeBroker([first, Scripted("second", [], log)], [])

    def contract_actor(tag: str) -> None:
        started.set()
        release.wait(10)

    dramatiq.actor(contract_actor, broker=fake, actor_name="contract_actor", queue_name=QUEUE)
    worker = dramatiq.Worker(fake, worker_threads=1, worker_timeout=WORKER_TIMEOUT_MS)
    worker.start()
    try:
        wait_until(lambda: len(fake.consume_calls) >= 2, "the consumer thread did not reconnect")
        release.set()
        wait_until(lambda: any(kind == "ack" for kind, _, _ in log), "the message in hand was never acked")
    finally:
        release.set()
        worker.stop(timeout=5_000)
    check(
        [(kind, name) for kind, name, m in log if m is held] == [("ack", "second")],
        "a message fetched before a reconnect is no longer acked through the ConsumerThread's current (new) "
        "consumer; CekuraBroker keeps `held` per broker, not per consumer, because it is",
    )
