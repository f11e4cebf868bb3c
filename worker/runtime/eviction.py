"""Redis's `maxmemory-policy`: the one setting under which Redis may delete the service's keys on its own.

Under any policy but `noeviction`, a Redis at `maxmemory` deletes keys to make room: `allkeys-*` any key (an active
job's record, a queued message, the schedule), `volatile-*` keys with a TTL (a job's provider key waiting for its
start, a 429 cooldown, finished jobs' records). Either way jobs are lost without a trace. Under `noeviction` a full
Redis refuses writes with `OOM` instead: the intake leaves requests in their stream, steps fail and are retried, and
everything resumes when memory frees. So `cekura-worker run` refuses to start on an evicting Redis, and readiness
and `status` report it.

The policy is read from `INFO memory`, which managed Redis services answer even where `CONFIG GET` is disabled.
"""

from __future__ import annotations

import redis

from config.settings import Settings
from worker.errors import ConfigError
from worker.runtime.connection import connect

#: The only policy under which Redis never deletes a key by itself.
SAFE_POLICY = "noeviction"


def policy(client: redis.Redis) -> str:
    """The server's `maxmemory-policy` ("" if it does not say)."""
    value = client.info("memory").get("maxmemory_policy", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def problem(client: redis.Redis, found: str | None = None) -> str | None:
    """Why this Redis may silently lose jobs, with the fix; None under `noeviction` (or a server that doesn't say).
    `found`: the policy when the caller read it already (`policy`), else it is read here."""
    if found is None:
        found = policy(client)
    if found in ("", SAFE_POLICY):
        return None
    return (
        f"Redis's maxmemory-policy is {found!r}: when it reaches maxmemory it deletes keys on its own, and jobs, "
        f"their messages or their provider keys vanish without a result event. Set it to {SAFE_POLICY!r} "
        f"(`CONFIG SET maxmemory-policy {SAFE_POLICY}` and in redis.conf, or your provider's parameter group); "
        "under noeviction a full Redis refuses writes instead, and the service waits until memory frees"
    )


def refuse_an_evicting_redis(settings: Settings) -> None:
    """Stop start-up (`ConfigError`) on a Redis whose memory policy may delete jobs. A Redis that can't be reached
    now is not refused: the workers ride out an outage, and readiness reports the policy later."""
    client = connect(settings, retry_on_error=[], socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        found = problem(client)
    except redis.RedisError:
        return
    finally:
        client.close()
    if found is not None:
        raise ConfigError(found)
