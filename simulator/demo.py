"""`cekura-worker demo` (`make demo`): the whole service on one machine, end to end, in about ten seconds.

It starts the Cekura simulator, a private `redis-server` when `REDIS_URL` is unreachable, and a real
`cekura-worker run`; submits one job of each kind (some through the request stream, as any producer would,
some through the Python client) plus one malformed request; prints each result event as it arrives; then
shuts everything down. Demo keys live under their own prefix (`cekura-demo`) so a real deployment sharing
the Redis is not touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis

from config.settings import Settings, load_settings, redact_url
from simulator import SimConfig, start_in_thread
from worker.client import Client
from worker.runtime.supervisor import run_in_subprocess

#: How long the demo waits for all result events before giving up.
DEFAULT_DEMO_TIMEOUT_S = 60.0

DEMO_PREFIX = "cekura-demo"
DEMO_API_KEY = "demo-key"

STREAM_REQUESTS = [
    {
        "kind": "agent.auto_fetch",
        "params": {"agent_id": 42},
        "job_id": "demo-auto-fetch",
        "metadata": {"via": "stream"},
    },
    {
        "kind": "scenario.agent",
        "params": {"user_message": "Make the scenario instructions more detailed", "scenarios": [101, 102]},
        "job_id": "demo-scenario-agent",
        "metadata": {"via": "stream"},
    },
]
CLIENT_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("agent.toggle_mock_tools", {"agent_id": 42, "enabled": True}, "demo-toggle-mock-tools"),
    (
        "metric.clean_description",
        {"agent": 42, "metric_description": "did the agent greet the caller", "eval_type": "boolean"},
        "demo-clean-description",
    ),
]
BAD_REQUEST = '{"kind": "agent.auto_fetch", "params": {"agent_id": "forty-two"}, "job_id": "demo-bad-request"}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
        return True
    except (redis.RedisError, OSError, ValueError):
        return False


@contextmanager
def _private_redis() -> Iterator[str]:
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="cekura-demo-redis-")
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _reachable(url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def _show(event: dict[str, str]) -> None:
    line = f"{event['job_id'] or '(no job id)'}: {event['kind'] or '?'} -> {event['status']}"
    if event.get("cekura_status"):
        line += f" (cekura status {event['cekura_status']}, {event['polls']} polls)"
    if event.get("error"):
        line += f"\n      error: {event['error']}"
    _say("result " + line)
    print("    " + json.dumps(event, ensure_ascii=False), flush=True)


def run_demo(base: Settings) -> int:
    """Run the demo; returns the process exit code."""
    # SIGTERM (a `timeout`, a closed terminal) unwinds like Ctrl-C, so the worker and Redis it started are stopped
    # rather than left running, consuming the demo's queue.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with ExitStack() as stack:
        redis_url = base.redis_url.get_secret_value()
        if _reachable(redis_url):
            _say(f"using Redis at {redact_url(redis_url)} (demo keys under '{DEMO_PREFIX}:')")
        elif shutil.which("redis-server"):
            redis_url = stack.enter_context(_private_redis())
            _say(f"no Redis at {redact_url(base.redis_url.get_secret_value())}; started a private one at {redis_url}")
        else:
            print(
                f"cekura-worker demo: no Redis answers at {redact_url(redis_url)} and redis-server is not installed.\n"
                "Install Redis 7 (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set "
                "REDIS_URL to a Redis you can use, then run `make demo` again.",
                file=sys.stderr,
            )
            return 1

        sim = start_in_thread(SimConfig(api_key=DEMO_API_KEY, duration_s=3.0))
        stack.callback(sim.stop)
        _say(f"Cekura simulator listening on {sim.url}")

        settings = load_settings(
            redis_url=redis_url,
            cekura_api_url=sim.url,
            cekura_api_key=DEMO_API_KEY,
            cekura_key_prefix=DEMO_PREFIX,
            cekura_queue=DEMO_PREFIX,
            cekura_requests_stream=f"{DEMO_PREFIX}:requests",
            cekura_results_stream=f"{DEMO_PREFIX}:results",
            cekura_poll_initial_s=0.5,
            cekura_poll_max_s=2.0,
        )
        client = Client(settings)
        stack.callback(client.close)
        stale = list(client.redis.scan_iter(match=f"{DEMO_PREFIX}:*", count=1000))
        if stale:
            client.redis.delete(*stale)

        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "CEKURA_API_URL": sim.url,
            "CEKURA_API_KEY": DEMO_API_KEY,
            "CEKURA_KEY_PREFIX": DEMO_PREFIX,
            "CEKURA_QUEUE": DEMO_PREFIX,
            "CEKURA_REQUESTS_STREAM": settings.cekura_requests_stream,
            "CEKURA_RESULTS_STREAM": settings.cekura_results_stream,
            "CEKURA_POLL_INITIAL_S": "0.5",
            "CEKURA_POLL_MAX_S": "2",
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console"),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        }
        _say("starting `cekura-worker run --processes 1 --threads 4` (its log lines follow)")
        stack.enter_context(run_in_subprocess(env, processes=1, threads=4))

        expected: set[str] = set()
        for request in STREAM_REQUESTS:
            client.redis.xadd(settings.cekura_requests_stream, {"request": json.dumps(request)})
            expected.add(str(request["job_id"]))
            _say(f"XADD {settings.cekura_requests_stream} request='{json.dumps(request)}'")
        for kind, params, job_id in CLIENT_REQUESTS:
            expected.add(client.submit(kind, params, job_id=job_id, metadata={"via": "python client"}))
            _say(f"client.submit({kind!r}, {params}) -> {job_id}")
        client.redis.xadd(settings.cekura_requests_stream, {"request": BAD_REQUEST})
        expected.add("demo-bad-request")
        _say(f"XADD a malformed request: {BAD_REQUEST}")

        deadline = time.monotonic() + DEFAULT_DEMO_TIMEOUT_S
        events = client.results(after="0", follow=True, block_ms=500)
        while expected and time.monotonic() < deadline:
            event = next(events)
            # A rejected request never became a job: its event names the id it asked for in `requested_job_id`.
            answers = event["job_id"] or event.get("requested_job_id", "")
            if answers in expected:
                expected.discard(answers)
                _show(event)
        if expected:
            print(
                f"cekura-worker demo: no result within {DEFAULT_DEMO_TIMEOUT_S:g}s for {sorted(expected)}",
                file=sys.stderr,
            )
            return 1
        _say("every job ended in exactly one result event; shutting down")
    _say("demo finished")
    return 0
