"""Adversarial reproductions against two guarantees (issue 19), kept as regression tests once each break was fixed.

1. **The start fence** (f913b81): a start that must never repeat (`repeatable_start=False`: evaluator.run,
   scenario.generate, scenario.from_transcript, metric.improve_from_feedback) is marked as sent by
   `mark_start.lua` only while this attempt's claim is the job's latest start claim (`start_claim`, the token
   `<server ms>:<n>` every start claim writes, `_claim.lua`), with an unexpired lease and no other mark; otherwise
   no call is made. An evaluator run whose start answer was lost is looked for by its tag `[cw:<job id>~<check>]`
   (the check: an HMAC, keyed with the Cekura API key, of the job id and its submission time; at the END of the
   run's name) and adopted only when it is the job's own (`worker/cekura/lookup.py`, actors/lookup.py).
2. **Retry of an unknown start needs force** (0cc5b86, 7191f46): `submission.retry(..., force=False)` refuses
   (`unknown_start`) a never-repeat job whose start may have reached Cekura; `dead list` says `needs --force` for
   exactly those jobs, and `retryable` for the jobs `retry` takes as they are.

Every test asserts the guarantee (or what the code documents next to it): a test that FAILS reproduces a break.
A docstring "HELD since <fix>: was BREAK: ..." names the fix and what the attack did before it.
The simulator counts starts per kind and key (`started_by_kind`, `started_by_key`), so "started twice" is read at
Cekura's side. A paused process is played in-process: its claim is taken, and its start step runs later with that
claim, as its thread does on waking (as tests/actors/test_start_fence.py does). Tests wait for states, never for
time to pass.

Run: TEST_REDIS_URL=redis://127.0.0.1:6379/2 .venv/bin/python -m pytest -q tests/system/test_attack_fence_retry.py
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
import redis

import worker.runtime.connection as redis_connection
from actors.step import make_step
from config.settings import Settings, load_settings
from simulator import SimulatorHandle
from tests.support import RedisServer, wait_for
from tests.system.fake_cekura import FakeCekura
from worker.client import Client
from worker.errors import InvalidRequest, TransientError
from worker.intake import requests, submission
from worker.ops import dead
from worker.runtime.app import Runtime, bind_actors, setup
from worker.runtime.reconciler import Reconciler, reconcile_once
from worker.store import scripts
from worker.store.records import Claim, Phase

#: The error of a job whose start must not be repeated and whose outcome is unknown.
UNKNOWN_START = "the start call's outcome is unknown"

TRANSCRIPT = [{"role": "Main Agent", "content": "Hello"}, {"role": "Testing Agent", "content": "Hi"}]


# -- helpers ----------------------------------------------------------------------------------------------------------


@dataclass
class Running:
    rt: Runtime
    client: Client
    settings: Settings


@contextlib.contextmanager
def running(
    settings: Settings, *, workers: bool = True, reconciler: bool = True, **overrides: Any
) -> Iterator[Running]:
    """An in-process runtime on `settings` plus `overrides`, with a dramatiq worker and a reconciler thread."""
    values = {
        **settings.model_dump(),
        "cekura_lease_s": 2.0,
        "cekura_http_timeout_s": 0.5,
        "cekura_reconcile_grace_s": 0.5,
        "cekura_reconcile_interval_s": 0.2,
        **overrides,
    }
    s = load_settings(**values)
    rt = setup(s)
    bind_actors()
    w = dramatiq.Worker(rt.broker, worker_threads=4, worker_timeout=100) if workers else None
    rec = Reconciler(rt) if reconciler else None
    if w is not None:
        w.start()
    if rec is not None:
        rec.start()
    try:
        yield Running(rt, Client(s, client=rt.redis, broker=rt.broker), s)
    finally:
        if rec is not None:
            rec.stop()
        if w is not None:
            w.stop(timeout=10_000)
        if rec is not None:
            rec.join(timeout=5)


def record(rt: Runtime, job_id: str) -> dict[str, str]:
    return rt.store.get(job_id) or {}


def events_of(raw: redis.Redis, job_id: str) -> list[dict[str, str]]:
    out = []
    for _, fields in raw.xrange("cekura:results"):
        event = {k.decode(): v.decode() for k, v in fields.items()}
        if event.get("job_id") == job_id:
            out.append(event)
    return out


def starts_of(sim: SimulatorHandle, sim_kind: str) -> int:
    return int(sim.stats()["started_by_kind"].get(sim_kind, 0))


def cancels_at_cekura(sim: SimulatorHandle) -> int:
    return sum(n for route, n in sim.stats()["by_route"].items() if route.startswith("end_calls"))


def tagged_job(tag: str) -> str:
    """The job id a start's tag `[cw:<job id>~<check>]` names ("" for a start without a tag)."""
    assert not tag or (tag.startswith("[cw:") and tag.endswith("]") and "~" in tag), f"not a job's tag: {tag!r}"
    return tag[len("[cw:") : tag.rindex("~")] if tag else ""


def lost_5xx_for(monkeypatch: pytest.MonkeyPatch, rt: Runtime, job_ids: set[str]) -> list[str]:
    """The start of each evaluator job in `job_ids` (named by the tag its start carries) is answered by a gateway's
    502 that never reached Cekura (nothing created there; the worker can't know that: the request was written, so
    its outcome is unknown). Returns the job id of each start call made."""
    real = rt.cekura.start
    calls: list[str] = []

    def start(kind: Any, params: Any, **kwargs: Any) -> Any:
        job_id = tagged_job(kwargs.get("tag", ""))
        calls.append(job_id)
        if job_id in job_ids:
            raise TransientError("POST /start answered HTTP 502", status_code=502)
        return real(kind, params, **kwargs)

    monkeypatch.setattr(rt.cekura, "start", start)
    return calls


def resume_start(rt: Runtime, job_id: str, claim: Claim) -> None:
    """A paused attempt wakes up and carries on with its start step, holding the claim it had."""
    from actors.jobs import _start

    _start(make_step(rt, job_id, Phase.START, claim))


def run_together(*fns: Any) -> None:
    threads = [threading.Thread(target=fn, daemon=True) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)


# =====================================================================================================================
# Guarantee 1: the start fence
# =====================================================================================================================


def test_fence_token_repeats_after_a_redis_restart_loses_the_claim_and_both_attempts_start(
    settings: Settings, sim: SimulatorHandle, tmp_path: Path
) -> None:
    """HELD since the fence token is `<server ms>:<n>`, written anew by every start claim (`_claim.lua`): was BREAK:
    Redis restarts between A's claim and A's mark, and the restart loses A's claim write (the last snapshot
    predates it: an RDB restore, `appendfsync everysec`, or a replica promoted before it received the claim). The job
    is `queued` again with no `start_claim`, so worker B's claim numbered itself 1 again: the very token A held.
    A's `mark_start` (state `starting`, token "1" == start_claim "1", B's lease unexpired) answered `ok`; B's mark
    then found `start_marked_by` == "1" == its own token and took it for a replay of its own lost reply: `ok` too.
    Both attempts called Cekura: two generations for one job. Now the claim counter still restarts at 1, but the
    server time in the token tells A's claim from B's: A's mark is `lost` and only B calls Cekura."""
    server = RedisServer(dir=tmp_path)
    server.start()
    try:
        with running(
            settings,
            workers=False,
            reconciler=False,
            redis_url=server.url,
            cekura_lease_s=10.0,
            cekura_http_timeout_s=2.0,
        ) as r:
            rt = r.rt
            job_id = r.client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "restart"})
            with server.client() as raw:
                raw.save()  # the last snapshot Redis comes back with
            a = rt.store.claim(job_id, Phase.START, 0)
            assert a.verdict == "ok" and a.job is not None and re.fullmatch(r"\d+:1", a.job.start_claim), a.job
            server.kill()  # Redis crashes after acknowledging A's claim...
            server.start()  # ...and comes back without it
            assert record(rt, job_id).get("state") == "queued"
            assert "start_claim" not in record(rt, job_id)
            b = rt.store.claim(job_id, Phase.START, 0)  # the reconciler's attempt (or the queued start message)
            assert b.verdict == "ok" and b.job is not None and re.fullmatch(r"\d+:1", b.job.start_claim), b.job
            assert b.job.start_claim != a.job.start_claim  # the count repeats, the token does not
            sim.set_faults(latency_ms=800)  # both calls would be at Cekura together
            run_together(lambda: resume_start(rt, job_id, a), lambda: resume_start(rt, job_id, b))
            sim.clear_faults()
            starts = starts_of(sim, "scenario_generate")
            rec = record(rt, job_id)
            assert starts == 1, (
                f"one scenario.generate job was started {starts} times at Cekura: A's token {a.job.start_claim}, "
                f"B's token {b.job.start_claim}"
            )
            assert rec.get("start_marked_by") == b.job.start_claim and rec.get("progress_id"), rec
    finally:
        server.stop()


def test_fence_token_repeats_when_a_paused_start_outlives_its_record_and_the_job_id_is_reused(
    rt: Runtime, client: Client, sim: SimulatorHandle
) -> None:
    """HELD since the fence token is `<server ms>:<n>` (`_claim.lua`): was BREAK: attempt A claims job X's start
    (token 1) and is frozen before its mark (a VM freeze). X is cancelled, its record expires (CEKURA_JOB_TTL_S,
    emulated here by a PEXPIRE) and a producer submits X again (the id is free again: README, job_id). The new
    record's first claim, B's, was token 1 as well. A woke: its mark passed the fence (state `starting`, start_claim
    "1", B's lease) and A sent the OLD params; B's mark found `start_marked_by` "1", its own token, and also answered
    `ok`. Two starts for one job id, one of them with another job's params. Now B's token differs from A's: A's
    mark is `lost`, and the one start is B's, with the new params."""
    job_id = "reused-x"
    client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "old"}, job_id=job_id)
    a = rt.store.claim(job_id, Phase.START, 0)  # A claims; then A is frozen
    assert a.verdict == "ok" and a.job is not None
    assert client.cancel(job_id).result == "cancelled"
    rt.redis.pexpire(rt.store.job_key(job_id), 1)  # the record's TTL runs out
    wait_for(lambda: not rt.redis.exists(rt.store.job_key(job_id)), 5, "the record to expire")
    client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "new"}, job_id=job_id)
    b = rt.store.claim(job_id, Phase.START, 0)
    assert b.verdict == "ok" and b.job is not None
    assert b.job.start_claim != a.job.start_claim, (a.job.start_claim, b.job.start_claim)
    sim.set_faults(latency_ms=800)
    run_together(lambda: resume_start(rt, job_id, a), lambda: resume_start(rt, job_id, b))
    sim.clear_faults()
    keys = sim.stats()["started_by_key"].get("scenario_generate", {})
    assert sum(keys.values()) == 1, (
        f"job {job_id} (its second life) was started {sum(keys.values())} times at Cekura: {keys} "
        f"(A's token {a.job.start_claim}, B's {b.job.start_claim})"
    )
    rec = record(rt, job_id)
    assert rec.get("start_marked_by") == b.job.start_claim and rec.get("progress_id") in sim.polls(), rec


def test_a_start_paused_between_its_answer_and_its_record_does_not_cancel_the_run_the_lookup_adopted(
    settings: Settings, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HELD since `orphaned()` (actors/lookup.py) leaves alone the run its job adopted: was BREAK: A's run_scenarios
    call succeeds (one run at Cekura), then A is paused before it records the answer (`advance`). Its lease lapses;
    the reconciler's attempt finds `start_sent`, so it sends nothing and looks the run up by its tag: it finds and
    adopts A's run (the job's one and only run) and polls it. A wakes; its `advance` answers `stale` and `_start`
    took that for "another attempt started the job" (`duplicate_start_cancelled`) and sent `cancel_remote` with the
    progress id: end_calls stopped the job's only run, which the job had adopted, and the job ended `cancelled`."""
    job_id = "paused-after-answer"
    with running(settings, cekura_lookup_settle_s=10.0) as r:
        from actors import jobs  # bound to the broker once the runtime is set up

        rt = r.rt
        real = rt.cekura.start
        paused: list[str] = []
        paused_thread: list[int] = []
        a_done = threading.Event()
        cancels: list[tuple[Any, ...]] = []

        def answer_then_pause(kind: Any, params: Any, **kwargs: Any) -> Any:
            started = real(kind, params, **kwargs)
            if not paused:
                paused.append(started.progress_id)
                paused_thread.append(threading.get_ident())
                # frozen until another attempt has found and adopted the run (a SIGSTOP of this process)
                wait_for(lambda: record(rt, job_id).get("progress_id"), 20, "the lookup to adopt the run")
            return started

        real_step = jobs._start

        def start_step(step: Any) -> None:
            try:
                real_step(step)
            finally:
                if paused_thread and paused_thread[0] == threading.get_ident():
                    a_done.set()  # A has recorded (or failed to record) what it saw, and acted on it

        real_cancel = jobs.cancel_remote.send

        def cancel_send(*args: Any, **kwargs: Any) -> Any:
            cancels.append(args)
            return real_cancel(*args, **kwargs)

        monkeypatch.setattr(rt.cekura, "start", answer_then_pause)
        monkeypatch.setattr(jobs, "_start", start_step)
        monkeypatch.setattr(jobs.cancel_remote, "send", cancel_send)
        r.client.submit("evaluator.run", {"scenarios": [1, 2], "name": "nightly [hang]"}, job_id=job_id)
        wait_for(lambda: paused and record(rt, job_id).get("progress_id") == paused[0], 20, "the adoption")
        assert a_done.wait(20), "the paused attempt never finished its start step"
        rec = record(rt, job_id)
        stopped = cancels_at_cekura(sim)
        sent = list(cancels)
        with contextlib.suppress(Exception):
            r.client.cancel(job_id)  # clean-up: the run is [hang]
    assert starts_of(sim, "evaluator_run") == 1
    assert (sent, stopped) == ([], 0) and rec.get("state") == "polling", (
        f"the job's one run ({paused[0]}) was stopped at Cekura by its own paused attempt: cancel_remote {sent}, "
        f"end_calls x{stopped}, job {rec.get('state')}/{rec.get('status')} {rec.get('error', '')[:80]!r}"
    )
    assert rec.get("progress_id") == paused[0]


@pytest.mark.parametrize(
    "name",
    ["rerun of nightly [cw:victim-a]", "rerun of nightly [cw:victim-a~0123456789]"],
    ids=["old-tag", "forged-check"],
)
def test_a_lookup_does_not_adopt_another_jobs_run_whose_name_carries_its_tag(
    rt: Runtime,
    worker: dramatiq.Worker,
    client: Client,
    sim: SimulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    """HELD since the tag carries an HMAC check and must END the run's name (`lookup.choose`): was BREAK: job B's
    run is named by its producer "rerun of nightly [cw:victim-a]" (a name copied from Cekura's dashboard, or chosen
    by anyone who can submit). Job victim-a's start is answered by a gateway's 502 before Cekura created anything.
    Its lookup searched `[cw:victim-a]`, found exactly one result carrying that text, B's (created a moment before
    victim-a was submitted, well within the 60 s skew allowance), and adopted it. victim-a then reported B's
    verdict as its own (a CI gate passed by another job's run), and its record had a progress_id, so a retry
    needed no force although victim-a never ran. Now B's name ends with B's own tag, and a check guessed without
    the API key is not victim-a's: nothing is adopted, victim-a fails "outcome unknown"."""
    b_job = client.submit("evaluator.run", {"scenarios": [1, 2], "name": name})
    b_event = client.wait(b_job, timeout=30)
    assert b_event["status"] == "completed"
    calls = lost_5xx_for(monkeypatch, rt, {"victim-a"})
    client.submit("evaluator.run", {"scenarios": [3], "name": "victim-a"}, job_id="victim-a")
    event = client.wait("victim-a", timeout=30)
    assert calls == ["victim-a"], calls
    assert event["progress_id"] != b_event["progress_id"], (
        f"victim-a adopted job {b_job}'s run {b_event['progress_id']} and ended {event['status']} with it"
    )
    assert event["status"] == "failed" and event["error"].startswith(UNKNOWN_START), event
    assert submission.retry(rt.store, rt.broker, "victim-a").result == "unknown_start"


def test_a_lookup_does_not_adopt_a_stale_run_of_a_reused_job_id(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HELD since the tag's check covers the job's submission time (`lookup.tag(job_id, submitted_ms, key)`): was
    BREAK: job X ran (result R1, named "... [cw:X]") and its record expired (emulated by DEL, as CEKURA_JOB_TTL_S
    would); X is submitted again and its start is answered by a 502 before Cekura created anything. The lookup
    found R1, the one result carrying `[cw:X]`, and adopted it: the only guard was "created no more than 60 s before
    the job was submitted" (DEFAULT_CLOCK_SKEW_S), on Cekura's clock against Redis's, which R1 passes (a short TTL,
    a Cekura clock a little ahead, or an old start that reached Cekura late). The new X reported R1's verdict as its
    own. Now the second X's tag differs from R1's: nothing is adopted, and the second X fails "outcome unknown"."""
    client.submit("evaluator.run", {"scenarios": [1, 2], "name": "X [fail-run]"}, job_id="X")
    first = client.wait("X", timeout=30)
    assert first["status"] == "failed" and first["progress_id"]
    rt.redis.delete(rt.store.job_key("X"))  # the record expired
    calls = lost_5xx_for(monkeypatch, rt, {"X"})
    client.submit("evaluator.run", {"scenarios": [1, 2], "name": "X"}, job_id="X")
    wait_for(lambda: len(events_of(rt.redis, "X")) == 2, 30, "the second X to end")
    second = events_of(rt.redis, "X")[-1]
    assert calls == ["X"], calls
    assert second["progress_id"] != first["progress_id"], (
        f"the second job X adopted the first X's run {first['progress_id']} and ended {second['status']}: "
        f"{second['error'][:100]!r}"
    )
    assert second["status"] == "failed" and second["error"].startswith(UNKNOWN_START), second


@pytest.mark.parametrize(
    ("victim", "other"),
    [("a", "a:b"), ("a:b", "a"), ("a", "A"), ("run.1", "run.10"), ("x" * 60 + ":y." + "z" * 65, "x" * 60 + ":y.")],
)
def test_a_lookup_tells_apart_ids_that_are_prefixes_or_case_variants_of_each_other(
    rt: Runtime,
    worker: dramatiq.Worker,
    client: Client,
    sim: SimulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    victim: str,
    other: str,
) -> None:
    """HELD. A name must end with the job's whole tag `[cw:<job id>~<check>]`: `[cw:a~...]` is not the end of
    `[cw:a:b~...]`, Cekura's case-insensitive search may return `[cw:A~...]` for `[cw:a~...]` but `choose` compares
    case-sensitively (and the checks differ); 128-character ids with `:` and `.` work the same."""
    assert len(victim) <= 128 and len(other) <= 128
    client.submit("evaluator.run", {"scenarios": [1, 2], "name": "other"}, job_id=other)
    assert client.wait(other, timeout=30)["status"] == "completed"
    calls = lost_5xx_for(monkeypatch, rt, {victim})
    client.submit("evaluator.run", {"scenarios": [1, 2], "name": "victim"}, job_id=victim)
    event = client.wait(victim, timeout=30)
    assert calls == [victim], calls
    assert event["progress_id"] == "", f"{victim!r} adopted {other!r}'s run {event['progress_id']}"
    assert event["status"] == "failed" and event["error"].startswith(UNKNOWN_START), event


def test_a_lost_start_of_a_128_char_id_with_colons_and_dots_is_found_by_its_tag(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    """HELD. The start is processed at Cekura and its answer lost (closed connection); the 128-character id
    full of `:` and `.` is found by its tag and its one run polled to the end."""
    job_id = ("a:b." * 32)[:128]
    sim.set_faults(lost_start_rate=1.0, hang_s=0.2)
    client.submit("evaluator.run", {"scenarios": [1, 2], "name": "n" * 300}, job_id=job_id)
    event = client.wait(job_id, timeout=30)
    sim.clear_faults()
    assert starts_of(sim, "evaluator_run") == 1
    assert event["status"] == "completed" and event["progress_id"], event


def test_a_mark_whose_reply_is_lost_is_replayed_as_its_own_and_the_job_starts_once(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HELD. Redis runs `mark_start.lua`, its reply is lost, redis-py re-sends it: `ok` (its own mark)."""
    sha = hashlib.sha1(scripts.source("mark_start").encode()).hexdigest()
    real = redis_connection._round_trip
    lost: list[Any] = []

    def lossy(connection: Any, args: tuple[Any, ...]) -> Any:
        reply = real(connection, args)
        if not lost and len(args) > 1 and args[0] == "EVALSHA" and args[1] == sha:
            lost.append(reply)
            connection.disconnect()
            raise redis.ConnectionError("injected: the reply was lost after Redis ran the script")
        return reply

    monkeypatch.setattr(redis_connection, "_round_trip", lossy)
    job_id = client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "lost-mark"})
    event = client.wait(job_id, timeout=30)
    assert lost, "the injection never fired"
    assert starts_of(sim, "scenario_generate") == 1
    assert event["status"] == "completed", event


def test_start_messages_resubmits_and_the_reconciler_during_a_lookup_send_no_second_start(
    settings: Settings, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HELD. While a lost evaluator start is being looked up (job `polling`, no progress id), start
    messages, a resubmission of the same id and a forced reconciler pass arrive: none makes a start call."""
    with running(settings, cekura_lookup_settle_s=3.0) as r:
        from actors.jobs import start  # bound to the broker once the runtime is set up

        rt = r.rt
        calls = lost_5xx_for(monkeypatch, rt, {"looked-up"})
        r.client.submit("evaluator.run", {"scenarios": [1], "name": "n"}, job_id="looked-up")
        wait_for(lambda: record(rt, "looked-up").get("state") == "polling", 10, "the lookup")
        for _ in range(3):
            start.send("looked-up")
        r.client.submit("evaluator.run", {"scenarios": [1], "name": "n"}, job_id="looked-up")
        rt.redis.zadd(rt.store.schedule_key, {"looked-up": 0})
        reconcile_once(rt)
        event = r.client.wait("looked-up", timeout=30)
    assert calls == ["looked-up"], calls
    assert event["status"] == "failed" and event["error"].startswith(UNKNOWN_START), event


# =====================================================================================================================
# Guarantee 2: a retry of an unknown start needs force
# =====================================================================================================================


class GatewayStub:
    """A gateway in front of the simulator: forwards every request, but answers the next start POST (after Cekura
    processed it) with `status` and `page` instead of Cekura's answer (a `FakeCekura` whose script relays)."""

    def __init__(self, upstream: str, status: int, page: bytes) -> None:
        self.status, self.page = status, page
        self.fail_next = 1
        self.http = httpx.Client(base_url=upstream, timeout=10)
        self.fake = FakeCekura()
        self.fake.script = self._relay
        self.url = self.fake.url

    def _relay(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        sent = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
        answer = self.http.request(method, path, headers=sent, content=body)
        if method == "POST" and self.fail_next:
            self.fail_next -= 1
            return self.status, [("Content-Type", "text/html")], self.page
        content_type = answer.headers.get("content-type", "application/json")
        return answer.status_code, [("Content-Type", content_type)], answer.content

    def close(self) -> None:
        self.fake.stop()
        self.http.close()


#: A CDN's 5xx error page (Cloudflare's 504 page is several KiB of HTML).
ERROR_PAGE = b"<!DOCTYPE html><html><head><title>504 Gateway Timeout</title></head><body>" + b"x" * 8000 + b"</body>"


@pytest.mark.parametrize(
    ("kind", "params", "sim_kind"),
    [
        ("evaluator.run", {"scenarios": [1, 2], "name": "gw"}, "evaluator_run"),
        ("scenario.generate", {"num_scenarios": 2, "extra_instructions": "gw"}, "scenario_generate"),
    ],
)
@pytest.mark.parametrize(("status", "page"), [(504, ERROR_PAGE), (204, b"")], ids=["504-large-page", "204"])
def test_a_start_answered_by_a_gateway_error_page_over_the_size_limit_needs_force_to_retry(
    settings: Settings,
    sim: SimulatorHandle,
    kind: str,
    params: dict[str, Any],
    sim_kind: str,
    status: int,
    page: bytes,
) -> None:
    """HELD since `PermanentError.refused` (worker/errors.py): only a 4xx refusal clears `start_sent`, and an
    unusable non-2xx answer of a never-repeat start is a lost start: was BREAK: Cekura processed the start (the
    operation runs), but the answer the worker got is a gateway's 504 error page larger than
    CEKURA_MAX_RESPONSE_BYTES (4 KiB here; a CDN's HTML error page is several KiB), or a 204. The client turns an
    oversized answer into `PermanentError(status_code=504)` (`_read`), and any status outside {200, 201, 202} that
    is not 5xx/429 into a `PermanentError` with that status; `_failed_call` took every PermanentError with a status
    other than 200/201/202 for "Cekura refused it: no operation runs there" and cleared `start_sent`. The job failed
    with no word of an unknown outcome (no lookup either), `dead list` called it retryable, and `retry` without
    --force started a second operation. Now an evaluator run is looked up by its tag and its one run adopted and
    polled to the end; a scenario generation fails "outcome unknown", listed `needs --force`, and `retry` without
    --force is refused."""
    stub = GatewayStub(sim.url, status, page)
    try:
        with running(
            settings,
            cekura_api_url=stub.url,
            cekura_max_response_bytes=4096,
            cekura_http_timeout_s=2.0,
            cekura_lease_s=5.0,
        ) as r:
            rt = r.rt
            job_id = r.client.submit(kind, params, job_id=f"gateway-{status}")
            event = r.client.wait(job_id, timeout=30)
            assert stub.fail_next == 0  # the gateway's answer was the one the start got
            assert starts_of(sim, sim_kind) == 1  # Cekura has the operation
            listed = {j["job_id"]: j for j in dead.report(rt.redis, rt.settings, since_s=3600)["failed_jobs"]}
            rec = record(rt, job_id)
            retried = None if kind == "evaluator.run" else submission.retry(rt.store, rt.broker, job_id)
            starts = starts_of(sim, sim_kind)
    finally:
        stub.close()
    assert starts == 1, f"{starts} operations at Cekura for one {kind} job (retry without --force: {retried})"
    if kind == "evaluator.run":  # found again by its tag: the job ends with the one run Cekura has
        (run_id,) = sim.polls()
        assert (event["status"], event["progress_id"]) == ("completed", run_id), (
            f"{kind} answered {status} after Cekura processed it: the job ended {event['status']} "
            f"({event['error'][:90]!r}) with progress id {event['progress_id']!r}, not the run {run_id}"
        )
        assert job_id not in listed
        return
    assert event["status"] == "failed" and event["error"].startswith(UNKNOWN_START), event
    assert rec.get("start_sent") == "1", rec
    assert (listed[job_id]["retryable"], listed[job_id]["needs_force"]) == (False, True), listed[job_id]
    assert retried is not None and retried.result == "unknown_start", (
        f"{kind} answered {status} after Cekura processed it: retry without --force was {retried}"
    )


@pytest.mark.parametrize("unknown", [False, True], ids=["failed-run", "unknown-start"])
def test_dead_list_and_retry_agree_for_a_128_char_job_id(
    rt: Runtime,
    worker: dramatiq.Worker,
    client: Client,
    sim: SimulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    unknown: bool,
) -> None:
    """HELD since `dead list` shows a job whose id is too long for "-retry-N" as not retryable (`dead._retryable`):
    was BREAK: `dead list` said `retryable` ("retry takes it as it is") or `needs --force` from `Retried.refusal`
    alone, but `retry` also refuses what it can't name: a 128-character job id has no room for `-retry-1` and
    `retry JOB_ID --force` raises InvalidRequest. The listing promised a retry the command refused. Now the listing
    says "no", `retry` as it is refuses it too, and `retry --job-id NEW_ID` takes it (with --force for an unknown
    start, as for any job)."""
    job_id = ("j." * 64)[:128]
    calls = lost_5xx_for(monkeypatch, rt, {job_id}) if unknown else []
    client.submit("evaluator.run", {"scenarios": [1, 2], "name": "n [fail-run]"}, job_id=job_id)
    event = client.wait(job_id, timeout=30)
    assert event["status"] == "failed" and event["error"].startswith(UNKNOWN_START) == unknown, event
    assert calls == ([job_id] if unknown else []), calls
    listed = {j["job_id"]: j for j in dead.report(rt.redis, rt.settings, since_s=3600)["failed_jobs"]}[job_id]
    assert (listed["retryable"], listed["needs_force"]) == (False, False), listed
    with pytest.raises(InvalidRequest, match="too long"):
        submission.retry(rt.store, rt.broker, job_id, force=True)
    plain = submission.retry(rt.store, rt.broker, job_id, new_job_id="long-id-retried")
    assert plain.result == ("unknown_start" if unknown else "submitted"), plain
    if unknown:
        forced = submission.retry(rt.store, rt.broker, job_id, new_job_id="long-id-retried", force=True)
        assert forced.result == "submitted" and forced.job_id == "long-id-retried", forced
    assert client.wait("long-id-retried", timeout=30)["status"] == "failed"  # its run fails again: [fail-run]


def test_a_job_cancelled_while_its_lost_start_is_looked_up_stops_its_run_at_cekura(
    settings: Settings, sim: SimulatorHandle
) -> None:
    """HELD since `cancel_remote` looks the run up by its tag and ends it (`find_to_cancel`): was BREAK:
    evaluator.run: "cancel calls end_calls". The start's answer is lost (Cekura created the run), the job is
    `polling` its lookup with no progress id yet, and it is cancelled. finish.lua wrote a `cancel_remote` only for
    a job with a progress id or session, and the lookup's poll was then stale: nobody found the run, and the run the
    job started kept placing calls at Cekura after the job said `cancelled` (the retry, correctly, needs --force)."""
    sim.configure(duration_s=30.0)
    sim.set_faults(lost_start_rate=1.0, hang_s=0.2)
    try:
        with running(settings, cekura_lookup_settle_s=10.0, cekura_http_timeout_s=1.0, cekura_lease_s=4.0) as r:
            rt = r.rt
            job_id = r.client.submit("evaluator.run", {"scenarios": [1, 2], "name": "cancel-me"})
            wait_for(lambda: starts_of(sim, "evaluator_run") == 1, 10, "the run at Cekura")
            wait_for(
                lambda: record(rt, job_id).get("state") == "polling" and not record(rt, job_id).get("progress_id"),
                10,
                "the lookup",
            )
            sim.clear_faults()
            assert r.client.cancel(job_id).result == "cancelled"
            refused = submission.retry(rt.store, rt.broker, job_id).result
            wait_for(lambda: cancels_at_cekura(sim) >= 1, 15, "end_calls for the cancelled job's run")
            stopped = cancels_at_cekura(sim)
    finally:
        sim.configure(duration_s=0.3)
    assert refused == "unknown_start"
    assert stopped == 1, f"end_calls x{stopped} for one run"
    assert starts_of(sim, "evaluator_run") == 1


@pytest.mark.parametrize(
    ("kind", "params", "sim_kind"),
    [
        ("evaluator.run", {"scenarios": [1, 2], "name": "slow"}, "evaluator_run"),
        ("scenario.generate", {"num_scenarios": 2, "extra_instructions": "slow"}, "scenario_generate"),
        ("metric.improve_from_feedback", {"metric_id": 5123}, "metric_improve"),
        ("scenario.from_transcript", {"transcript_json": TRANSCRIPT, "name": "slow"}, "scenario_from_transcript"),
    ],
)
def test_a_job_timed_out_or_cancelled_while_starting_is_refused_without_force_and_listed_needs_force(
    rt: Runtime,
    worker: dramatiq.Worker,
    client: Client,
    sim: SimulatorHandle,
    kind: str,
    params: dict[str, Any],
    sim_kind: str,
) -> None:
    """HELD. (a) a job whose deadline passes while its start hangs at Cekura; (b) a job cancelled after its
    mark, while its start is at Cekura. Both are refused without force; (a) is listed `needs --force`, and a forced
    retry asked for again with the same id returns that job without --force and without a new start."""
    sim.set_faults(hang_rate=1.0, hang_s=2.5)
    timed = client.submit(kind, params, job_id="timed", deadline_s=1)
    timed_event = client.wait(timed, timeout=30)
    sim.clear_faults()
    sim.set_faults(latency_ms=1500)
    cancelled = client.submit(kind, params, job_id="cancelled")
    wait_for(lambda: record(rt, cancelled).get("start_sent") == "1", 10, "the mark")
    assert client.cancel(cancelled).result == "cancelled"
    # Both starts are at Cekura (counted as they arrive): the timed-out one and the cancelled one.
    wait_for(lambda: starts_of(sim, sim_kind) == 2, 10, "the cancelled job's start to reach Cekura")
    sim.clear_faults()
    assert timed_event["status"] in ("timed_out", "failed"), timed_event
    listed = {j["job_id"]: j for j in dead.report(rt.redis, rt.settings, since_s=3600)["failed_jobs"]}
    assert listed[timed]["needs_force"] and not listed[timed]["retryable"], listed[timed]
    for job_id in (timed, cancelled):
        assert submission.retry(rt.store, rt.broker, job_id).result == "unknown_start", record(rt, job_id)
    before = starts_of(sim, sim_kind)
    forced = submission.retry(rt.store, rt.broker, timed, new_job_id="timed-forced", force=True)
    assert forced.result == "submitted"
    again = submission.retry(rt.store, rt.broker, timed, new_job_id="timed-forced")
    assert again.result == "submitted" and again.job_id == "timed-forced"
    client.wait("timed-forced", timeout=30)
    assert starts_of(sim, sim_kind) == before + 1


def test_retry_of_a_retry_and_a_retry_racing_a_lookup_need_force(
    settings: Settings, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HELD. A retry while the lost start is being looked up is refused (`active`); once the lookup gives
    up, retry is refused (`unknown_start`); the forced retry's own unknown start is refused likewise, and the original
    is still refused without force after a forced retry."""
    with running(settings, cekura_lookup_settle_s=2.0) as r:
        rt = r.rt
        calls = lost_5xx_for(monkeypatch, rt, {"orig", "orig-retry-1"})
        r.client.submit("evaluator.run", {"scenarios": [1], "name": "orig"}, job_id="orig")
        wait_for(lambda: record(rt, "orig").get("state") == "polling", 10, "the lookup")
        racing = submission.retry(rt.store, rt.broker, "orig")
        r.client.wait("orig", timeout=30)
        plain = submission.retry(rt.store, rt.broker, "orig")
        forced = submission.retry(rt.store, rt.broker, "orig", force=True)
        r.client.wait("orig-retry-1", timeout=30)
        of_retry = submission.retry(rt.store, rt.broker, "orig-retry-1")
        orig_again = submission.retry(rt.store, rt.broker, "orig")
    assert racing.result == "active"
    assert plain.result == "unknown_start"
    assert forced.result == "submitted" and forced.job_id == "orig-retry-1"
    assert of_retry.result == "unknown_start"
    assert orig_again.result == "unknown_start"
    assert calls == ["orig", "orig-retry-1"], calls


def test_the_request_stream_has_no_retry_action(settings: Settings) -> None:
    """HELD: no path on the request stream retries a job (forced or not)."""
    for body in ({"action": "retry", "job_id": "x"}, {"action": "retry", "job_id": "x", "force": True}):
        with pytest.raises(InvalidRequest, match="unknown action"):
            requests.parse(json.dumps(body), settings)


def test_a_job_cancelled_between_its_claim_and_its_mark_retries_without_force_and_the_paused_attempt_makes_no_call(
    rt: Runtime, client: Client, sim: SimulatorHandle
) -> None:
    """HELD. A claims the start and is frozen before marking; the job is cancelled (nothing was sent, so no
    `start_sent`) and retried without force; A wakes: its mark is `lost` (the job is finished), no call. One start:
    the retry's."""
    job_id = client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "frozen"}, job_id="frozen")
    a = rt.store.claim(job_id, Phase.START, 0)
    assert a.verdict == "ok"
    assert client.cancel(job_id).result == "cancelled"
    retried = submission.retry(rt.store, rt.broker, job_id)
    assert retried.result == "submitted"
    resume_start(rt, job_id, a)
    w = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    w.start()
    try:
        assert client.wait(retried.job_id, timeout=30)["status"] == "completed"
    finally:
        w.stop(timeout=10_000)
    assert starts_of(sim, "scenario_generate") == 1
