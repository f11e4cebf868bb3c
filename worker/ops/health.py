"""`cekura-worker healthcheck`: probes for a container orchestrator, following Kubernetes' split.

- `--liveness`: are this container's worker processes alive and unstuck? It reads only local files (each
  process's `LocalBeat` touches one while its Dramatiq, intake and reconciler threads run), never Redis, so a
  Redis outage, which the workers ride out by themselves, never gets them restarted.
- `--readiness` (the default): does Redis answer, with a memory policy that never deletes keys by itself
  (`worker.runtime.eviction`), and has a worker process on this host beaten there recently?

Both run every few seconds, so they stay cheap: no Dramatiq or actor imports; readiness makes one connection with
short timeouts and no retries, and a few commands. The host is the container's hostname, so each replica reports
only on its own processes.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.settings import Settings
from worker.runtime import eviction
from worker.runtime.connection import connect, server_ms
from worker.runtime.heartbeat import live_local_processes, live_workers, workers_key

#: Connect and read timeout of the healthcheck's Redis connection, in seconds.
DEFAULT_TIMEOUT_S = 2.0


def _connect(settings: Settings) -> redis.Redis:
    return connect(
        settings,
        socket_timeout=DEFAULT_TIMEOUT_S,
        socket_connect_timeout=DEFAULT_TIMEOUT_S,
        socket_keepalive=False,
        health_check_interval=0,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
    )


def _scrub(text: str, settings: Settings) -> str:
    """`text` without the Redis password, should an error message ever quote it."""
    password = urlsplit(settings.redis_url.get_secret_value()).password
    return text.replace(password, "***") if password else text


def _last_beat_ago(client: redis.Redis, settings: Settings, host: str) -> float | None:
    """Seconds since the latest heartbeat of any process on `host`, or None if it has none recorded."""
    latest = None
    for member, score in client.zrange(workers_key(settings), 0, -1, withscores=True):
        name = member.decode() if isinstance(member, bytes) else str(member)
        if name.rsplit(":", 1)[0] == host and (latest is None or score > latest):
            latest = score
    return None if latest is None else max(0.0, (server_ms(client) - latest) / 1000)


def check_liveness(settings: Settings) -> tuple[bool, str]:
    """(True, summary) when a worker process of this container beat locally within three heartbeat intervals."""
    window = 3 * settings.cekura_heartbeat_interval_s
    processes = live_local_processes(settings)
    fresh = [pid for pid, age in processes if age <= window]
    if fresh:
        return True, f"ok: {len(fresh)} live worker process(es) here (pids {', '.join(map(str, sorted(fresh)))})"
    if processes:
        pid, age = processes[0]
        return False, f"worker processes here are stuck: the freshest beat (pid {pid}) is {age:.0f} s old"
    return False, f"no worker process here has beaten (nothing alive in {settings.cekura_health_dir})"


def check(settings: Settings) -> tuple[bool, str]:
    """(True, summary) when Redis answers PING and a worker process on this host beat recently; else (False, why)."""
    host = socket.gethostname()
    where = settings.redis_url_redacted
    try:
        client = _connect(settings)
    except (ValueError, redis.RedisError) as exc:  # a malformed URL or TLS option
        return False, f"redis unreachable at {where}: {_scrub(str(exc), settings)}"
    try:
        client.ping()
        unsafe = eviction.problem(client)
        if unsafe is not None:
            return False, unsafe
        wanted = settings.cekura_redis_min_replicas
        replicas = int(client.info("replication").get("connected_slaves", 0)) if wanted else 0
        if replicas < wanted:
            return False, (
                f"CEKURA_REDIS_MIN_REPLICAS is {wanted} but the primary has {replicas} replica(s) connected: "
                "no job can be accepted or ended until one is back"
            )
        workers = live_workers(client, settings, host=host)
        if workers:
            return True, f"ok: redis at {where} answers; {len(workers)} live worker process(es) on host {host}"
        ago = _last_beat_ago(client, settings, host)
        last = "no heartbeat recorded" if ago is None else f"last heartbeat {ago:.0f} s ago"
        return False, f"no live worker process on host {host} ({last})"
    except (redis.RedisError, OSError) as exc:
        return False, f"redis unreachable at {where}: {_scrub(f'{type(exc).__name__}: {exc}', settings)}"
    finally:
        client.connection_pool.disconnect()  # close() leaves a pool passed in explicitly open
