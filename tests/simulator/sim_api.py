"""The client the simulator's operation tests share: progress helpers over an API-key `httpx.Client`."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx

from simulator import SimulatorHandle

OPS_KEY = "sim-key"
#: The default job duration of these tests (seconds); most tests use polls_to_complete instead.
OPS_DURATION = 0.2
SSL_CONTEXT = ssl.create_default_context()


class Api:
    """An API-key client of the simulator with the progress helpers the operation tests share."""

    def __init__(self, handle: SimulatorHandle, http: httpx.Client) -> None:
        self.sim = handle
        self.http = http

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.http.post(path, json=body) if body is not None else self.http.post(path)

    def get(self, path: str, progress_id: str | None = None) -> Any:
        """GET a progress path (or a result path when `progress_id` is None); asserts a 200 and returns the JSON."""
        response = self.http.get(path, params={"progress_id": progress_id} if progress_id else None)
        assert response.status_code == 200, response.text
        return response.json()

    def poll(self, path: str, progress_id: str | None, done: Callable[[Any], bool], limit_s: float = 30.0) -> list[Any]:
        """GET until `done(answer)`; returns every answer in order."""
        answers: list[Any] = []
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            answers.append(self.get(path, progress_id))
            if done(answers[-1]):
                return answers
            time.sleep(0.02)
        raise AssertionError(f"not done within {limit_s}s: {answers[-1]}")

    def start(self, path: str, body: Any, status: int = 200) -> str:
        """POST a start call, assert its status and return its progress id."""
        response = self.post(path, body)
        assert response.status_code == status, response.text
        return str(response.json()["progress_id"])
