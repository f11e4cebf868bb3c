"""A request far over `CEKURA_REQUEST_MAX_BYTES` on the stream, read by a real `cekura-worker run`: it is rejected
without being parsed (parsed, 30 MB of JSON took a worker process to about 830 MB), and the worker goes on."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import System

pytestmark = pytest.mark.slow

#: The oversized request's size: what a producer's bug might send.
HUGE_BYTES = 30_000_000

#: The most a worker process may reach while handling it: the entry's bytes a couple of times over and the
#: interpreter, nowhere near the JSON objects parsing it would build.
PEAK_LIMIT_BYTES = 200 * 1024 * 1024


def test_an_oversized_request_is_rejected_without_being_parsed_and_the_worker_goes_on(system: System) -> None:
    server = system.redis()
    sim = system.simulator("--duration", "0.3")
    worker = system.worker(system.worker_env(server, sim), processes=1, threads=2)
    before = worker.peak_rss_bytes()
    blob = "x" * HUGE_BYTES
    huge = {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "huge-1", "metadata": {"blob": blob}}
    payload = json.dumps(huge).encode()
    size = len(payload)
    with server.client() as raw:
        raw.xadd("cekura:requests", {"request": payload})
        del blob, huge, payload
        system.submit_via_stream(raw, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "after-huge"})
        finished = system.wait_all_finished(raw, {"after-huge"}, timeout=60, worker=worker)
        events = system.result_events(raw)
        assert raw.xlen("cekura:requests") == 0
    peak = worker.peak_rss_bytes()
    assert finished["after-huge"]["status"] == "completed"
    [rejected] = [e for e in events if e["status"] == "rejected"]
    # Nothing in it was read: not its job id, not its kind.
    assert (rejected["job_id"], rejected["requested_job_id"], rejected["kind"]) == ("", "", "")
    error = f"request is {size} bytes, over the 131072-byte limit (request entry "
    assert rejected["error"].startswith(error), rejected["error"]
    assert 0 < before < peak < PEAK_LIMIT_BYTES, f"peak RSS {peak / 2**20:.0f} MiB (before: {before / 2**20:.0f} MiB)"
