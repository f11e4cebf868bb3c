"""A worker process's service threads: the intake and reconciler loops outlive a bug (logged, then a short backoff),
and should one die anyway, the heartbeat is withheld so `cekura-worker healthcheck` fails."""

from __future__ import annotations

import json
from typing import Any

import dramatiq
import pytest

from tests.support import wait_for
from worker.intake.stream import Intake
from worker.ops.health import check
from worker.runtime.app import Runtime
from worker.runtime.heartbeat import Heartbeat, workers_key
from worker.runtime.process import threads_alive
from worker.runtime.reconciler import Reconciler


def _logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The structlog event dicts named `event` that reached stdlib logging during the test (a logged exception is
    their `exception` text)."""
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == event]


def test_the_intake_loop_logs_an_unexpected_error_and_goes_on(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    read_once = Intake.read_once
    calls: list[int] = []

    def fails_once(self: Intake, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("injected")
        return read_once(self, **kwargs)

    monkeypatch.setattr(Intake, "read_once", fails_once)
    intake = Intake(rt, name="supervised")
    intake.start()
    try:
        request = {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "after-the-error"}
        rt.redis.xadd(rt.settings.cekura_requests_stream, {"request": json.dumps(request)})
        wait_for(lambda: rt.store.get("after-the-error"), 30, "the intake to read on after the error")
        assert intake.is_alive()
    finally:
        intake.stop()
        intake.join(timeout=10)
    [failure] = _logged(caplog, "intake_loop_failed")
    assert failure["retry_in_s"] > 0
    assert failure["exception"].endswith("MemoryError: injected")


def test_the_reconciler_loop_logs_an_unexpected_error_and_goes_on(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    passes: list[int] = []

    def fails_once(_: Runtime) -> int:
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("injected")
        return 0

    monkeypatch.setattr("worker.runtime.reconciler.reconcile_once", fails_once)
    reconciler = Reconciler(rt)
    reconciler.start()
    try:
        wait_for(lambda: len(passes) >= 2, 30, "a reconciler pass after the failed one")
        assert reconciler.is_alive()
    finally:
        reconciler.stop()
        reconciler.join(timeout=10)
    [failure] = _logged(caplog, "reconcile_loop_failed")
    assert failure["exception"].endswith("RuntimeError: injected")


def test_a_dead_intake_or_reconciler_thread_withholds_the_heartbeat_so_the_healthcheck_fails(
    rt: Runtime, worker: dramatiq.Worker
) -> None:
    intake, reconciler = Intake(rt, name="alive-check"), Reconciler(rt)
    heartbeat = Heartbeat(rt.redis, rt.settings, lambda: threads_alive(rt.broker, intake, reconciler))
    assert not threads_alive(rt.broker, intake, reconciler)  # not started yet
    intake.start()
    reconciler.start()
    try:
        assert threads_alive(rt.broker, intake, reconciler)
        heartbeat.beat()
        ok, summary = check(rt.settings)
        assert ok, summary
        for dead in (intake, reconciler):  # either one alone is enough
            dead.stop()
            dead.join(timeout=10)
            assert not threads_alive(rt.broker, intake, reconciler)
            rt.redis.delete(workers_key(rt.settings))  # as if the last beat had aged out
            heartbeat.beat()
            ok, summary = check(rt.settings)
            assert not ok, summary
    finally:
        intake.stop()
        reconciler.stop()
        intake.join(timeout=10)
        reconciler.join(timeout=10)
