"""What the webhook tests share: the real `cekura-worker webhooks` process (`ReceiverProcess`), the evaluator
runs that poll only once a minute unless a webhook hastens them (`SLOW`), and what the simulator counts."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from config.settings import Settings
from simulator import SimulatorHandle
from tests.support import kill_group, service_env, wait_for, wait_for_line
from worker.client import Client

SECRET = "webhook-secret-0123456789"
CEKURA_WORKER = str(Path(sys.executable).with_name("cekura-worker"))
_LISTENING = re.compile(r"listening on (http://\S+)/webhooks/cekura")

#: Evaluator runs poll every minute unless a webhook says otherwise.
SLOW = {"evaluator.run": {"initial_s": 60.0, "factor": 1.0, "max_s": 60.0, "min_s": 60.0}}


class ReceiverProcess:
    def __init__(self, settings: Settings, tmp_path: Path, *, secret: str = SECRET) -> None:
        log_path = tmp_path / "webhooks.log"
        env = service_env(settings, CEKURA_WEBHOOK_SECRET=secret)
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [CEKURA_WORKER, "webhooks", "--port", "0"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=tmp_path,
            )
        match = wait_for_line(self.popen, log_path, _LISTENING, 30)
        assert match is not None, log_path.read_text()
        self.url = match.group(1) + "/webhooks/cekura"
        self.host, self.port = re.match(r"http://([^:/]+):(\d+)", self.url).groups()  # type: ignore[union-attr]
        self.http = httpx.Client(timeout=10, trust_env=False)

    def post(
        self, body: Any, *, secret: str | None = SECRET, raw: bytes | None = None, timeout: float = 10
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-CEKURA-SECRET"] = secret
        content = raw if raw is not None else json.dumps(body).encode()
        return self.http.post(self.url, content=content, headers=headers, timeout=timeout)

    def completed(self, result_id: str | int, status: str = "completed", timeout: float = 10) -> httpx.Response:
        return self.post(
            {"event_type": "result.completed", "data": {"id": result_id, "status": status}}, timeout=timeout
        )

    def flood(self, result_id: str | int, copies: int, threads: int = 32) -> list[httpx.Response]:
        """`copies` of one result's webhook from `threads` threads at once, each thread with its own HTTP client
        (one httpx client shared by many threads may fail a request with EBADF on its side as the server closes
        an idle kept-alive connection: a flake of the sender, not an answer of the receiver)."""
        local = threading.local()
        clients: list[httpx.Client] = []
        lock = threading.Lock()
        body = json.dumps({"event_type": "result.completed", "data": {"id": result_id, "status": "completed"}})
        headers = {"Content-Type": "application/json", "X-CEKURA-SECRET": SECRET}

        def send(_: int) -> httpx.Response:
            if not hasattr(local, "http"):
                local.http = httpx.Client(timeout=10, trust_env=False)
                with lock:
                    clients.append(local.http)
            return local.http.post(self.url, content=body.encode(), headers=headers)

        try:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                return list(pool.map(send, range(copies)))
        finally:
            for http in clients:
                http.close()

    def stop(self) -> None:
        self.http.close()
        kill_group(self.popen)


def polls_made(sim: SimulatorHandle) -> int:
    return int(sim.stats()["polls_total"])


def ended_at_cekura(sim: SimulatorHandle, result_id: str) -> bool:
    ends = sim.polls()[result_id]["finishes_at"]
    return ends is not None and ends <= time.time()


def routes(sim: SimulatorHandle, needle: str) -> int:
    return sum(count for route, count in sim.stats()["by_route"].items() if needle in route)


def started_run(client: Client, name: str = "nightly", job_id: str | None = None) -> tuple[str, str]:
    job_id = client.submit("evaluator.run", {"scenarios": [1], "name": name}, job_id=job_id)
    wait_for(lambda: client.status(job_id).get("progress_id"), 15, "the run to start")
    return job_id, str(client.status(job_id)["progress_id"])
