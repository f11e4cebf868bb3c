"""The Redis primary found through Sentinel: which Sentinels to believe, and following the primary when it moves.

redis-py's `Sentinel.master_for` gives a client whose connections ask the Sentinels where the primary is when they
open, and reconnect on `READONLY`. Two things are added here:
- **Agreement.** redis-py takes the first Sentinel that answers and moves it to the front for good, and a listed
  host that is not a Sentinel (an error reply) stops the search. `Sentinels.discover_master` asks the Sentinels in
  turn, skips any that fail in any way, and takes the primary as soon as a majority of the listed Sentinels name the
  same one; short of a majority, the one named by the Sentinel with the newest view (the highest `config-epoch`).
  So one Sentinel whose view is stale (cut off from the others) can't move a process to a server that is no longer
  the primary.
- **Following a move.** A connection asks only when it opens. After `SENTINEL FAILOVER` the old primary keeps
  taking writes for about 10 s before it steps down, so each heartbeat asks again
  (`worker.runtime.heartbeat.follow_primary`) and moves the process's connections when the primary moved.

The Sentinel clients never retry (the search moves on to the next Sentinel) and get at most
`DEFAULT_SENTINEL_TIMEOUT_S` to answer, so a hung Sentinel costs one short timeout, not a retry schedule: readiness
answers within its probe's time, and a heartbeat is not held up for long.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from config.settings import Settings, sentinel_parts

#: Seconds a Sentinel gets to answer (it answers from memory, in well under a millisecond): the search asks them in
#: turn, so hung Sentinels cost at most this each when a connection opens.
DEFAULT_SENTINEL_TIMEOUT_S = 1.0


class Sentinels(Sentinel):  # type: ignore[misc]  # redis-py types Sentinel as Any
    def discover_master(self, service_name: str) -> tuple[str, int]:
        """The primary's (host, port) that a majority of the listed Sentinels name; short of a majority, the one
        named by the Sentinel with the newest view (the highest `config-epoch`: the latest failover it knows)."""
        majority = len(self.sentinels) // 2 + 1
        answers: Counter[tuple[str, int]] = Counter()
        newest: tuple[int, tuple[str, int]] | None = None
        for sentinel in self.sentinels:
            try:
                masters = sentinel.sentinel_masters()
            except (redis.RedisError, OSError):
                continue  # down, hung past its timeout, refusing, or not a Sentinel at all
            state = masters.get(service_name) if isinstance(masters, dict) else None
            if not state or not self.check_master_state(state, service_name):
                continue
            address = (str(state["ip"]), int(state["port"]))
            answers[address] += 1
            if answers[address] >= majority:
                return address
            epoch = int(state.get("config-epoch") or 0)
            if newest is None or epoch > newest[0]:
                newest = (epoch, address)
        if newest is None:
            raise MasterNotFoundError(f"no Sentinel answered with a primary for service {service_name!r}")
        return newest[1]


def sentinel_primary(settings: Settings, kwargs: dict[str, Any]) -> redis.Redis:
    """A client of the primary the Sentinels named in `settings.redis_url` agree on; `kwargs`: the connection's."""
    parts = sentinel_parts(settings.redis_url.get_secret_value())
    tls = {key: value for key, value in kwargs.items() if key.startswith("ssl_")}
    password = settings.redis_sentinel_password
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": min(kwargs["socket_timeout"], DEFAULT_SENTINEL_TIMEOUT_S),
        "socket_connect_timeout": min(kwargs["socket_connect_timeout"], DEFAULT_SENTINEL_TIMEOUT_S),
        "retry": Retry(NoBackoff(), 0),
        "password": password.get_secret_value() if password else None,
        **({"ssl": True, **tls} if parts.tls else {}),
    }
    sentinels = Sentinels(list(parts.sentinels), sentinel_kwargs=sentinel_kwargs)
    return sentinels.master_for(
        parts.service,
        redis_class=redis.Redis,
        db=parts.db,
        username=parts.username,
        password=parts.password,
        check_connection=True,
        **({"ssl": True} if parts.tls else {}),
        **kwargs,
    )
