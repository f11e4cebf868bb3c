"""`cekura-worker demo` (`make demo`): the whole service on one machine, end to end, in about ten seconds.

It starts the Cekura simulator, a private `redis-server` when `REDIS_URL` is unreachable, the web console and a
real `cekura-worker run`; submits jobs (some through the request stream, as any producer would, some through the
Python client): the four first kinds, an evaluator run that passes Cekura's CI gate and one that fails it, a
generation that asks a question, which the demo answers, and one malformed request; prints each result event as
it arrives; then, at a terminal, leaves the console up until Enter is pressed, and shuts everything down. Demo
keys live under their own prefix (`cekura-demo`) so a real deployment sharing the Redis is not touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis

from config.settings import Settings, load_settings, redact_url
from simulator import SimConfig, start_in_thread
from worker.client import Client
from worker.errors import ConfigError
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
    # Cekura's CI gate: one run that passes, one whose third evaluator fails its checks (simulator: `[fail-run]`).
    ("evaluator.run", {"scenarios": [101, 102, 103], "name": "nightly regression"}, "demo-evaluator-pass"),
    ("evaluator.run", {"scenarios": [101, 102, 103], "name": "release gate [fail-run]"}, "demo-evaluator-fail"),
    # A generation that stops to ask a question (simulator: `[ask]`); the demo answers it below.
    ("scenario.generate", {"num_scenarios": 3, "extra_instructions": "Cover billing disputes [ask]"}, "demo-generate"),
]
ASKING_JOB = "demo-generate"
DEMO_ANSWER = "Impatient callers, and callers who dispute a charge twice."
BAD_REQUEST = '{"kind": "agent.auto_fetch", "params": {"agent_id": "forty-two"}, "job_id": "demo-bad-request"}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(url: str) -> bool:
    from worker.runtime.connection import connect

    try:
        client = connect(load_settings(redis_url=url), socket_connect_timeout=1, socket_timeout=1, retry_on_error=[])
        client.ping()
        client.close()
        return True
    except (redis.RedisError, OSError, ValueError, ConfigError):
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


#: With webhooks on, how often a demo evaluator run polls on its own (a run of 3 s ends long before).
DEMO_SAFETY_NET_S = 30


@contextmanager
def _webhook_receiver(settings: Settings) -> Iterator[str]:
    """`cekura-worker webhooks` in a thread of the demo, on a free port; yields its URL."""
    from worker.webhooks import build

    server, sock = build(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="cekura-webhooks", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/webhooks/cekura"
    finally:
        server.should_exit = True
        thread.join(5)


def _say_webhooks(polls: dict[str, Any], webhooks: dict[str, Any]) -> None:
    """Say how the evaluator runs ended: on the one poll their webhook caused, long before a safety-net poll."""
    for result_id, report in polls.items():
        if report.get("kind") != "evaluator_run" or not report.get("webhook_at"):
            continue
        times, ended = report.get("times") or [], report.get("finishes_at") or 0
        if len(times) == 1 and times[0] - ended < DEMO_SAFETY_NET_S / 2:
            _say(
                f"evaluator result {result_id} ended at Cekura; its webhook came, and the run was polled once, "
                f"{times[0] - ended:.2f} s later, instead of at its next safety-net poll ({DEMO_SAFETY_NET_S} s)"
            )
    _say(f"webhooks sent by the simulator: {webhooks.get('sent', 0)}")


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


def _answer_when_asked(client: Client, job_id: str, stop: threading.Event) -> None:
    """Wait for the job's question, print it and answer it, as a person watching the progress stream would."""
    while not stop.wait(0.2):
        view = client.status(job_id) or {}
        if view.get("state") == "waiting":
            _say(f"{job_id} asks: {view.get('question')!r}")
            client.answer(job_id, DEMO_ANSWER)
            _say(f"cekura-worker answer {job_id} {DEMO_ANSWER!r}")
            return
        if view.get("state") == "finished":
            return


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

        console_token = secrets.token_urlsafe(16)  # the console's actions (cancel, retry, answer) need it
        webhook_secret = secrets.token_urlsafe(24)  # what Cekura sends as X-CEKURA-SECRET
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
            cekura_progress_stream=f"{DEMO_PREFIX}:progress",
            cekura_progress_events=True,
            cekura_poll_initial_s=0.5,
            cekura_poll_max_s=2.0,
            cekura_console_token=console_token,
            cekura_webhooks=True,
            cekura_webhook_secret=webhook_secret,
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
            "CEKURA_PROGRESS_STREAM": settings.cekura_progress_stream,
            "CEKURA_PROGRESS_EVENTS": "true",  # the console shows stages and questions as they happen
            "CEKURA_POLL_INITIAL_S": "0.5",
            "CEKURA_POLL_MAX_S": "2",
            # evaluator runs poll every 30 s by default (Cekura's runs take minutes): the demo's take seconds
            "CEKURA_POLL_OVERRIDES": json.dumps({"evaluator.run": {"initial_s": 0.5, "factor": 1.5, "max_s": 2}}),
            # Result webhooks on: an evaluator run polls only as a safety net (every 30 s here) and ends when its
            # webhook makes it poll (`cekura-worker webhooks`, started below; the simulator sends them).
            "CEKURA_WEBHOOKS": "true",
            "CEKURA_WEBHOOK_SAFETY_NET_S": str(DEMO_SAFETY_NET_S),
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console"),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        }
        from worker.console import serve_in_thread

        console = serve_in_thread(settings)
        stack.callback(console.stop)
        receiver_url = stack.enter_context(_webhook_receiver(settings))
        sim.configure(webhook_url=receiver_url, webhook_secret=webhook_secret)
        _say(f"webhook receiver at {receiver_url}; the simulator sends result webhooks there")
        _say(f"console: open {console.url} in a browser (actions ask for the token {console_token})")
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
        stop = threading.Event()
        stack.callback(stop.set)
        threading.Thread(target=_answer_when_asked, args=(client, ASKING_JOB, stop), daemon=True).start()
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
        _say("every job ended in exactly one result event")
        _say_webhooks(sim.polls(), sim.stats().get("webhooks", {}))
        if sys.stdin.isatty():
            _say(f"the console stays up at {console.url}: press Enter to stop the demo")
            with contextlib.suppress(EOFError):
                input()
        _say("shutting down")
    _say("demo finished")
    return 0
