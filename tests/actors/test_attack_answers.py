"""Adversarial reproductions against the "waiting for an answer" guarantees (README, "Waiting for an answer"):

* when Cekura asks a question the job publishes `state: waiting` + `question`, stops polling and waits;
* an answer (request stream, `Client.answer`, `cekura-worker answer`) is recorded once and delivered to Cekura
  exactly once before polling resumes;
* the job's deadline bounds the wait (`timed_out`, the error quoting the question);
* an answer to a job that is unknown / not waiting / already answered / finished / past its deadline is refused
  clearly (a `rejected` event, `InvalidRequest`, a CLI exit code);
* every job ends in exactly one result event; no thread sleeps waiting.

Each test asserts the guarantee, so a test that fails reproduces a defect (its docstring names the cause). The
in-process tests use the shared `rt` / `worker` / `client` / `sim` fixtures (real Redis, a real dramatiq.Worker,
the simulator over HTTP); the SIGKILL and clock-skew tests run real `cekura-worker run` processes through the
`system` fixture of `tests/system/conftest.py`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest

from actors import names
from config.settings import Settings, get_settings
from simulator import SimulatorHandle
from tests.intake.test_answer_values import DEEP_ANSWER, REFUSED
from tests.support import wait_for
from tests.system.conftest import System, system  # noqa: F401  (the `system` fixture, for the process tests)
from worker.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from worker.client import Client
from worker.errors import InvalidRequest
from worker.intake.stream import Intake
from worker.runtime.app import Runtime
from worker.runtime.reconciler import reconcile_once

ASK = {"num_scenarios": 2, "extra_instructions": "[ask]"}
QUESTION = "Which caller personas matter most?"
CLARIFY = "generate-clarify-answer"
FEEDBACK_ANSWER = "process_feedbacks_answer"
CLOCKSHIFT = str(Path(__file__).resolve().parents[1] / "system" / "clockshift")


# -- helpers ----------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads settings from the environment: point it at the test Redis."""
    monkeypatch.setenv("REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("CEKURA_API_URL", settings.cekura_api_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def intake(rt: Runtime) -> Iterator[Intake]:
    reader = Intake(rt, name="attack-answers")
    reader.start()
    yield reader
    reader.stop()
    reader.join(timeout=10)


def _waiting(client: Client, job_id: str) -> dict[str, Any] | None:
    view = client.status(job_id)
    return view if view and view.get("state") == "waiting" else None


def _ask(client: Client, kind: str = "scenario.generate", params: dict[str, Any] | None = None, **kw: Any) -> str:
    """Submit a job that asks a question and wait until it waits for the answer."""
    job_id = client.submit(kind, params or ASK, **kw)
    wait_for(lambda: _waiting(client, job_id), timeout=10, what=f"job {job_id} to ask its question")
    return job_id


def _events(rt: Runtime, job_id: str) -> list[dict[str, str]]:
    out = []
    for _, fields in rt.redis.xrange(rt.settings.cekura_results_stream):
        event = {k.decode(): v.decode(errors="surrogateescape") for k, v in fields.items()}
        if event.get("job_id") == job_id:
            out.append(event)
    return out


def _rejected(rt: Runtime) -> list[dict[str, str]]:
    out = []
    for _, fields in rt.redis.xrange(rt.settings.cekura_results_stream):
        event = {k.decode(): v.decode(errors="surrogateescape") for k, v in fields.items()}
        if event.get("status") == "rejected":
            out.append(event)
    return out


def _progress(rt: Runtime, job_id: str) -> list[dict[str, str]]:
    out = []
    for _, fields in rt.redis.xrange(rt.settings.cekura_progress_stream):
        event = {k.decode(): v.decode(errors="surrogateescape") for k, v in fields.items()}
        if event.get("job_id") == job_id:
            out.append(event)
    return out


def _one_event(rt: Runtime, job_id: str, timeout: float = 15) -> dict[str, str]:
    """Wait for the job's result event, let any straggler step run, and assert it is the only one."""
    wait_for(lambda: _events(rt, job_id), timeout=timeout, what=f"the result event of {job_id}")
    time.sleep(0.3)
    events = _events(rt, job_id)
    assert len(events) == 1, f"job {job_id} has {len(events)} result events: {events}"
    return events[0]


def _route(sim: SimulatorHandle, route: str) -> int:
    return sum(n for key, n in sim.stats()["by_route"].items() if key.rsplit(" ", 1)[0] == route)


def _route_status(sim: SimulatorHandle, route: str, status: str) -> int:
    return int(sim.stats()["by_route"].get(f"{route} {status}", 0))


def _sim_answers(sim: SimulatorHandle, progress_id: str) -> list[Any]:
    """The answers the simulated Cekura operation received, in order (what Cekura heard, whatever the job says)."""
    return sim._call(lambda: list(sim._sim.store.jobs[progress_id].answers))


def _api_key(settings: Settings) -> str:
    assert settings.cekura_api_key is not None
    return settings.cekura_api_key.get_secret_value()


def _progress_id(rt: Runtime, job_id: str) -> str:
    return (rt.store.get(job_id) or {})["progress_id"]


def _redis_now_ms(rt: Runtime) -> int:
    seconds, micros = rt.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _xadd_answer(rt: Runtime, job_id: Any, answer: Any, **dumps: Any) -> str:
    request = {"action": "answer", "job_id": job_id, "answer": answer}
    entry: bytes = rt.redis.xadd(rt.settings.cekura_requests_stream, {"request": json.dumps(request, **dumps)})
    return entry.decode()


def _rejection_of(rt: Runtime, entry: str, timeout: float = 10) -> dict[str, str]:
    return wait_for(
        lambda: next((e for e in _rejected(rt) if e.get("request_id") == entry), None),
        timeout=timeout,
        what=f"the rejected event of request entry {entry}",
    )


def _refused_as_answered(message: str) -> bool:
    return "already has an answer" in message or "is not waiting for an answer" in message


# -- 1. answers racing each other -------------------------------------------------------------------------------


def test_answers_racing_each_other_reach_cekura_once(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle, settings: Settings
) -> None:
    """Eight producers (each its own connection) answer the same question at the same instant: one is recorded,
    seven are refused, Cekura hears exactly one answer, and the job ends once with that answer."""
    job_id = _ask(client)
    clients = [Client(settings) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    outcomes: dict[int, str] = {}

    def answer(i: int) -> None:
        barrier.wait()
        try:
            clients[i].answer(job_id, f"answer number {i}")
            outcomes[i] = "ok"
        except InvalidRequest as exc:
            outcomes[i] = str(exc)

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    for c in clients:
        c.close()
    winners = [i for i, outcome in outcomes.items() if outcome == "ok"]
    assert len(winners) == 1, outcomes
    refused = [o for o in outcomes.values() if o != "ok"]
    assert all(_refused_as_answered(o) for o in refused), refused
    event = _one_event(rt, job_id)
    assert event["status"] == "completed", event
    assert json.loads(event["result"])["answers"] == [f"answer number {winners[0]}"]
    assert _sim_answers(sim, _progress_id(rt, job_id)) == [f"answer number {winners[0]}"]
    assert _route(sim, CLARIFY) == 1


def test_answers_racing_through_the_stream_the_client_and_the_cli_reach_cekura_once(
    cli: None, worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle, intake: Intake
) -> None:
    """The three entry points at once: exactly one is taken; the others get their channel's refusal."""
    job_id = _ask(client)
    barrier = threading.Barrier(3)
    got: dict[str, Any] = {}

    def by_stream() -> None:
        barrier.wait()
        got["stream"] = _xadd_answer(rt, job_id, "via stream")

    def by_client() -> None:
        barrier.wait()
        try:
            client.answer(job_id, "via client")
            got["client"] = "ok"
        except InvalidRequest as exc:
            got["client"] = str(exc)

    def by_cli() -> None:
        barrier.wait()
        got["cli"] = main(["answer", job_id, "via cli"])

    threads = [threading.Thread(target=f) for f in (by_stream, by_client, by_cli)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    event = _one_event(rt, job_id)
    answers = json.loads(event["result"])["answers"]
    assert len(answers) == 1 and answers[0] in ("via stream", "via client", "via cli"), answers
    winner = answers[0].split()[1]
    assert (got["client"] == "ok") == (winner == "client"), got
    assert (got["cli"] == EXIT_OK) == (winner == "cli"), got
    if winner != "cli":
        assert got["cli"] == EXIT_FAILED
    if winner != "stream":
        rejected = _rejection_of(rt, got["stream"])
        assert _refused_as_answered(rejected["error"]) or "has already ended" in rejected["error"], rejected
    assert _route(sim, CLARIFY) == 1


# -- 2. an answer racing a cancel -------------------------------------------------------------------------------


def test_an_answer_racing_a_cancel_ends_the_job_once_and_reaches_cekura_at_most_once(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle, settings: Settings
) -> None:
    """An answer and a cancel at the same instant (a metric improvement: cancellable at Cekura), five times: each
    job ends `cancelled` exactly once, and Cekura hears the answer at most once."""
    for round_ in range(5):
        job_id = _ask(client, "metric.improve_from_feedback", {"metric_id": 333}, job_id=f"race-cancel-{round_}")
        with Client(settings) as other:
            got = _race_answer_and_cancel(client, other, job_id)
        assert got["cancel"] == "cancelled", got
        event = _one_event(rt, job_id)
        assert event["status"] == "cancelled", event
        assert got["answer"] == "ok" or "has already ended (cancelled)" in got["answer"], got
        assert len(_sim_answers(sim, _progress_id(rt, job_id))) <= 1
    wait_for(lambda: _route_status(sim, "process_feedbacks_cancel", "200") >= 5, timeout=10, what="remote cancels")


def _race_answer_and_cancel(client: Client, other: Client, job_id: str) -> dict[str, str]:
    barrier = threading.Barrier(2)
    got: dict[str, str] = {}

    def answer() -> None:
        barrier.wait()
        try:
            client.answer(job_id, json.dumps({"q1": "yes"}))
            got["answer"] = "ok"
        except InvalidRequest as exc:
            got["answer"] = str(exc)

    def cancel() -> None:
        barrier.wait()
        got["cancel"] = other.cancel(job_id).result

    threads = [threading.Thread(target=answer), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return got


# -- 3. an answer racing the deadline ---------------------------------------------------------------------------


@pytest.mark.parametrize("offset_ms", [-250, -60, -15, 0, 40])
def test_an_answer_racing_the_deadline_ends_the_job_once(
    offset_ms: int, worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """An answer sent around the deadline (on the Redis clock), with Cekura slow to answer (0.2 s) so the delivery
    may be in flight when the deadline passes: the answer is either refused (expired / already ended timed_out)
    or taken; the job ends exactly once, `timed_out` or `completed`, and Cekura hears it at most once."""
    job_id = _ask(client, deadline_s=1.5)
    sim.set_faults(latency_ms=200)
    deadline_ms = int((rt.store.get(job_id) or {})["deadline_ms"])
    delay = (deadline_ms + offset_ms - _redis_now_ms(rt)) / 1000
    if delay > 0:
        time.sleep(delay)
    try:
        client.answer(job_id, "just in time?")
        outcome = "ok"
    except InvalidRequest as exc:
        outcome = str(exc)
    event = _one_event(rt, job_id)
    sim.clear_faults()
    heard = _sim_answers(sim, _progress_id(rt, job_id))
    print(f"offset {offset_ms} ms: answer {outcome!r}, job {event['status']} ({event['error']}), Cekura heard {heard}")
    assert event["status"] in ("timed_out", "completed"), event
    if outcome != "ok":
        assert any(why in outcome for why in ("passed its deadline", "ended (timed_out)", "too soon")), outcome
        assert event["status"] == "timed_out"
    assert len(heard) <= 1
    finished_ms = _iso_ms(event["finished_at"])
    assert finished_ms - deadline_ms < 1500, f"ended {finished_ms - deadline_ms} ms after its deadline"


def test_an_answer_taken_shortly_before_the_deadline_is_delivered_not_silently_dropped(
    rt: Runtime, client: Client, sim: SimulatorHandle
) -> None:
    """A worker with `CEKURA_IDLE_WAKE_MS` = 3 s (allowed: up to 60 s; the default 1 s makes the window 1 s): an
    answer sent half a second before the deadline is taken ("answer recorded ...: the worker sends it to Cekura
    and polls on") and must then reach Cekura, or be refused.

    BREAK: answer.lua accepts any answer until `now >= deadline` and RPUSHes its poll onto the queue, but nothing
    wakes a consumer in another process (the client is not the worker): an idle consumer looks again only after
    its idle timeout or at the next due message, here the deadline message. The answer's poll is then claimed
    past the deadline (`_claim.lua`: `expired`) and `time_out` (actors/step.py) ends the job `timed_out` "while
    waiting for an answer": the accepted answer never reaches Cekura and nobody is told."""
    slow = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=3_000)
    slow.start()
    try:
        job_id = _ask(client, deadline_s=2)
        deadline_ms = int((rt.store.get(job_id) or {})["deadline_ms"])
        time.sleep(max(0.0, (deadline_ms - 500 - _redis_now_ms(rt)) / 1000))
        try:
            client.answer(job_id, "half a second early")
            outcome = "ok"
        except InvalidRequest as exc:
            outcome = str(exc)
        event = _one_event(rt, job_id)
    finally:
        rt.broker.wakeup.set()
        slow.stop(timeout=10_000)
    heard = _sim_answers(sim, _progress_id(rt, job_id))
    assert outcome != "ok" or heard == ["half a second early"], (
        f"the answer was accepted 0.5 s before the deadline but Cekura heard {heard}; the job ended "
        f"{event['status']}: {event['error']}"
    )


def _iso_ms(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_an_unanswered_question_times_out_within_about_a_second_of_the_deadline(
    worker: dramatiq.Worker, client: Client, rt: Runtime
) -> None:
    """README: "A job ends timed_out within about a second of its deadline"; the error quotes the question."""
    job_id = _ask(client, deadline_s=2)
    deadline_ms = int((rt.store.get(job_id) or {})["deadline_ms"])
    event = _one_event(rt, job_id)
    assert event["status"] == "timed_out"
    assert event["error"] == f"deadline of 2s passed while waiting for an answer to: {QUESTION}"
    late = _iso_ms(event["finished_at"]) - deadline_ms
    assert 0 <= late < 1200, f"timed out {late} ms after the deadline"


# -- 4. the answer call fails at Cekura -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "statuses"),
    [
        ({"error_rate": 1.0}, ("500", "502", "503")),
        ({"drop_rate": 1.0}, ("dropped",)),
        ({"rate_429": 1.0, "retry_after_s": 1.0}, ("429",)),
    ],
    ids=["5xx", "dropped-connection", "429"],
)
def test_an_answer_call_that_never_reached_cekura_is_retried_and_delivered_once(
    faults: dict[str, float],
    statuses: tuple[str, ...],
    worker: dramatiq.Worker,
    client: Client,
    rt: Runtime,
    sim: SimulatorHandle,
) -> None:
    """A 5xx, a dropped connection or a 429 on `generate-clarify-answer` (the simulator processes none of them):
    retried, delivered once, and the job completes with that answer."""
    job_id = _ask(client)
    sim.set_faults(**faults)
    client.answer(job_id, "after a fault")
    wait_for(
        lambda: sum(_route_status(sim, CLARIFY, s) for s in statuses) >= 1, timeout=10, what="a failed answer call"
    )
    sim.clear_faults()
    event = _one_event(rt, job_id)
    assert event["status"] == "completed", event
    assert json.loads(event["result"])["answers"] == ["after a fault"]
    assert _route_status(sim, CLARIFY, "200") == 1


def test_an_answer_whose_reply_is_lost_is_not_sent_twice_and_does_not_fail_the_job(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """Cekura takes the answer but its reply never arrives (a hang past the call limit; a 502 from a proxy after
    the backend committed is the same): the worker may not know whether Cekura has it.

    BREAK: `_deliver_answer` (actors/jobs.py) treats the timeout as transient and sends the same answer again; the
    operation is no longer waiting, so Cekura answers 400 "This generation is not waiting for an answer.", which
    `_failed_call` turns into a permanent failure: a generation that Cekura is happily completing ends `failed`.
    """
    job_id = _ask(client)
    sim.set_faults(hang_rate=1.0, hang_s=4.0)
    client.answer(job_id, "heard, but the reply is lost")
    wait_for(lambda: _route_status(sim, CLARIFY, "200") >= 1, timeout=10, what="Cekura to take the answer")
    sim.clear_faults()
    event = _one_event(rt, job_id, timeout=20)
    assert _sim_answers(sim, _progress_id(rt, job_id)) == ["heard, but the reply is lost"]
    assert event["status"] == "completed", (
        f"the job ended {event['status']} ({event['error']}); Cekura got the answer "
        f"{_route_status(sim, CLARIFY, '200')}x and refused a re-send {_route_status(sim, CLARIFY, '400')}x"
    )
    assert _route(sim, CLARIFY) == 1, sim.stats()["by_route"]


def test_a_400_on_the_answer_fails_the_job_once_saying_why(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """Cekura refuses the answer itself (a metric improvement's answers must be strings): the job ends `failed`
    exactly once, with Cekura's reason; nothing is re-sent."""
    job_id = _ask(client, "metric.improve_from_feedback", {"metric_id": 333})
    client.answer(job_id, json.dumps({"q1": 5}))
    event = _one_event(rt, job_id)
    assert event["status"] == "failed", event
    assert "HTTP 400" in event["error"] and "must be a string" in event["error"], event["error"]
    assert _route(sim, FEEDBACK_ANSWER) == 1
    assert _sim_answers(sim, _progress_id(rt, job_id)) == []


# -- 5. duplicate polls and the reconciler while waiting --------------------------------------------------------


def test_duplicate_polls_and_the_reconciler_neither_poll_a_waiting_job_nor_send_its_answer_twice(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """While waiting: stray poll messages (current, older and newer seq) and a reconciler that finds the job
    overdue (schedule entry forced due) make no Cekura call. After the answer: more duplicates of the delivering
    poll race it, and Cekura still hears the answer once."""
    job_id = _ask(client)
    seq = int((rt.store.get(job_id) or {})["seq"])
    polls = _route(sim, "generate-progress")
    for s in (seq, seq, seq - 1, seq + 1):
        rt.broker.enqueue(dramatiq.Message(rt.settings.cekura_queue, names.POLL, (job_id, s), {}, {}))
    for _ in range(3):
        rt.redis.zadd(rt.store.schedule_key, {job_id: 0})
        assert reconcile_once(rt) >= 1
        time.sleep(0.2)
    time.sleep(0.5)
    assert _route(sim, "generate-progress") == polls, "a waiting job was polled"
    assert (rt.store.get(job_id) or {})["state"] == "waiting"
    assert _route(sim, CLARIFY) == 0
    client.answer(job_id, "once only")
    for _ in range(5):
        rt.broker.enqueue(dramatiq.Message(rt.settings.cekura_queue, names.POLL, (job_id, seq + 1), {}, {}))
    rt.redis.zadd(rt.store.schedule_key, {job_id: 0})
    reconcile_once(rt)
    event = _one_event(rt, job_id)
    assert event["status"] == "completed"
    assert json.loads(event["result"])["answers"] == ["once only"]
    assert _route(sim, CLARIFY) == 1


def test_an_answer_whose_delivery_message_is_lost_is_still_delivered_once_by_the_reconciler(
    rt: Runtime, client: Client, sim: SimulatorHandle
) -> None:
    """The answer's poll message vanishes before any worker takes it (a worker that popped it and died with its
    ack set gone, an operator flushing the queue): the answer is recorded, the schedule entry answer.lua wrote
    comes due after the grace period, and the reconciler's poll delivers it, once."""
    first = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    first.start()
    try:
        job_id = _ask(client)
    finally:
        first.stop(timeout=10_000)
    client.answer(job_id, "delivered by the reconciler")
    queue = rt.settings.key("dramatiq", rt.settings.cekura_queue)
    lost = [m for m in rt.redis.lrange(queue, 0, -1) if m.startswith(b"answer.")]
    assert len(lost) == 1
    rt.redis.lrem(queue, 0, lost[0])
    rt.redis.hdel(queue + ".msgs", lost[0])
    second = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    second.start()
    try:
        give_up = time.monotonic() + 10
        while not _events(rt, job_id) and time.monotonic() < give_up:
            reconcile_once(rt)
            time.sleep(0.1)
        event = _one_event(rt, job_id)
    finally:
        second.stop(timeout=10_000)
    assert event["status"] == "completed", event
    assert json.loads(event["result"])["answers"] == ["delivered by the reconciler"]
    assert _route(sim, CLARIFY) == 1


# -- 6. hostile answers -----------------------------------------------------------------------------------------


def test_answers_of_10000_characters_are_taken_and_10001_refused_by_every_channel(
    cli: None, worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle, intake: Intake
) -> None:
    """The limit is exactly 10,000 characters (counted as characters, not bytes: astral-plane ones included), the
    same for the stream, the client and the CLI; a refused answer leaves the job waiting."""
    by_client = _ask(client)
    too_long = "x" * 10_001
    with pytest.raises(InvalidRequest, match="10001 characters"):
        client.answer(by_client, too_long)
    assert main(["answer", by_client, too_long]) == EXIT_USAGE
    rejected = _rejection_of(rt, _xadd_answer(rt, by_client, too_long))
    assert "10001 characters" in rejected["error"]
    assert _waiting(client, by_client), "a refused answer changed the job"
    exact = "\U0001f600" * 9_990 + "0123456789"  # 10,000 characters, 39,970 bytes of UTF-8
    client.answer(by_client, exact)
    assert json.loads(_one_event(rt, by_client)["result"])["answers"] == [exact]
    by_stream = _ask(client)
    _xadd_answer(rt, by_stream, exact, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(_one_event(rt, by_stream)["result"])["answers"] == [exact]
    by_cli = _ask(client)
    plain = "y" * 10_000
    assert main(["answer", by_cli, plain]) == EXIT_OK
    assert json.loads(_one_event(rt, by_cli)["result"])["answers"] == [plain]
    assert _route_status(sim, CLARIFY, "200") == 3


def test_a_10000_character_answer_fits_the_stream_as_a_python_producer_sends_it(
    rt: Runtime, client: Client, intake: Intake
) -> None:
    """README: answers of up to 10,000 characters; the client takes a 10,000-emoji answer. A producer XADDing
    `json.dumps(request)` (Python's default escapes non-ASCII: 12 bytes per astral character) sends ~120 KB.

    BREAK (minor): the stream refuses it with "request is 120053 bytes, over the 65536-byte limit"
    (`CEKURA_REQUEST_MAX_BYTES`, worker/intake/requests.py `check_size`), while `Client.answer` never measures an
    answer at all: the two channels disagree on which answers fit. Either size the default limit for the largest
    answer (10,000 x 12 bytes + envelope) or document that answers over the byte limit must be sent unescaped."""
    job_id = client.submit("scenario.generate", ASK, job_id="emoji")  # no worker: it stays queued
    entry = _xadd_answer(rt, job_id, "\U0001f600" * 10_000)
    rejected = _rejection_of(rt, entry)
    assert "not waiting for an answer" in rejected["error"], rejected["error"]


def test_control_characters_and_json_looking_answers_reach_cekura_verbatim(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """Control characters, terminal escapes and JSON-looking text are an answer's text: delivered once, verbatim,
    never parsed into the request (a generation's answer can't set its own `progress_id`)."""
    texts = [
        "\x01\x07\x1b[2J\x1b[31mred\x7f\r\n\t\u2028\u202e",
        '{"progress_id": "999999", "answer": "hijack"}',
        '"; DROP TABLE answers; --',
    ]
    for text in texts:
        job_id = _ask(client)
        client.answer(job_id, text)
        event = _one_event(rt, job_id)
        assert event["status"] == "completed", event
        assert json.loads(event["result"])["answers"] == [text]
    # a metric improvement's JSON-object answer is its answers by question id; extra keys can't move the body
    job_id = _ask(client, "metric.improve_from_feedback", {"metric_id": 333})
    client.answer(job_id, json.dumps({"q1": "yes", "progress_id": "999999"}))
    event = _one_event(rt, job_id)
    assert event["status"] == "completed", event
    assert _sim_answers(sim, _progress_id(rt, job_id)) == [{"q1": "yes", "progress_id": "999999"}]


def test_a_nul_in_an_answer_is_refused_by_the_client_as_by_the_stream(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle, intake: Intake
) -> None:
    """The client "validates exactly as the request stream does" (worker/client.py docstring).

    BREAK: the stream refuses an answer holding NUL (`requests._check_values`, via `parse`), but `Client.answer` ->
    `submission.answer` -> `requests.check_answer` (worker/intake/requests.py) checks only type, blankness and
    length, so the client records it and the worker sends `\\u0000` to Cekura (whose Postgres text columns refuse
    NUL: a real 400 that then fails the job)."""
    job_id = _ask(client)
    rejected = _rejection_of(rt, _xadd_answer(rt, job_id, "a\x00b"))
    assert "NUL" in rejected["error"], rejected
    with pytest.raises(InvalidRequest, match="NUL"):
        client.answer(job_id, "a\x00b")


def test_a_lone_surrogate_in_an_answer_is_refused_cleanly_by_every_channel(
    cli: None, worker: dramatiq.Worker, client: Client, rt: Runtime, intake: Intake
) -> None:
    """A lone surrogate (what Python makes of a command-line argument that is not UTF-8) is refused with
    `InvalidRequest` / a rejected event / exit code 2.

    BREAK: `check_answer` (worker/intake/requests.py) does not look for it, so `JobStore.answer` hands the text to
    redis-py, whose encoder raises `UnicodeEncodeError`: the client raises that instead of `InvalidRequest`, and
    `cekura-worker answer JOB $'\\xff'` dies with a traceback (exit 1) instead of exit code 2."""
    job_id = _ask(client)
    rejected = _rejection_of(rt, _xadd_answer(rt, job_id, "bad \ud800 text"))
    assert "lone surrogate" in rejected["error"], rejected
    code: Any
    try:
        code = main(["answer", job_id, "bad \udcff text"])  # sys.argv's form of the byte 0xff
    except Exception as exc:
        code = repr(exc)
    assert code == EXIT_USAGE, f"cekura-worker answer with a non-UTF-8 argument: {code}"
    with pytest.raises(InvalidRequest):
        client.answer(job_id, "bad \ud800 text")


def test_an_answer_holding_the_api_key_is_masked_in_status_events_and_cli_output(
    cli: None,
    worker: dramatiq.Worker,
    client: Client,
    rt: Runtime,
    sim: SimulatorHandle,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A person pastes the Cekura API key into an answer: Cekura gets what was typed, but the key never shows in
    the job's status, its progress events, its result event (Cekura echoes the answers) or the CLI's output."""
    key = _api_key(settings)
    job_id = _ask(client)
    text = f"use key {key} and {json.dumps(key)}"
    assert main(["answer", job_id, text]) == EXIT_OK
    event = _one_event(rt, job_id)
    assert event["status"] == "completed"
    assert _sim_answers(sim, _progress_id(rt, job_id)) == [text]
    out = capsys.readouterr()
    for where, value in (
        ("result event", json.dumps(event)),
        ("status", json.dumps(client.status(job_id))),
        ("progress events", json.dumps(_progress(rt, job_id))),
        ("CLI output", out.out + out.err),
    ):
        assert key not in value, f"the API key shows in the {where}"
    assert "***" in json.loads(event["result"])["answers"][0]


# -- 7. hostile job ids and jobs that can't be answered ---------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    ["", "a" * 129, "../../etc/passwd", "has space", "line\nbreak", "*", "x" * 128 + "\x00", "caf\u00e9"],
    ids=["empty", "129-chars", "path", "space", "newline", "glob", "nul", "non-ascii"],
)
def test_hostile_job_ids_are_refused_by_every_channel(
    job_id: str, cli: None, rt: Runtime, client: Client, intake: Intake
) -> None:
    with pytest.raises(InvalidRequest, match="job_id must be"):
        client.answer(job_id, "hello")
    if "\x00" not in job_id:  # argv can't carry NUL
        assert main(["answer", job_id, "hello"]) == EXIT_USAGE
    rejected = _rejection_of(rt, _xadd_answer(rt, job_id, "hello"))
    assert "job_id must be" in rejected["error"] or "NUL" in rejected["error"], rejected
    assert not list(rt.redis.scan_iter(rt.settings.key("dramatiq") + "*msgs"))


def test_ids_that_name_no_job_or_a_foreign_key_are_refused_and_write_nothing(
    cli: None, rt: Runtime, client: Client, intake: Intake, settings: Settings
) -> None:
    """Unknown ids, ids whose key holds another program's string or hash (even one shaped like a waiting job's),
    and ids that look like other keys of the service: refused, no message or field written."""
    rt.redis.set(settings.key("job", "a-string"), "not a job")
    rt.redis.hset(settings.key("job", "a-hash"), mapping={"owner": "someone else"})
    cases = {
        "never-submitted": "no job never-submitted is known",
        "a-string": "holds something other than a job",
        "a-hash": "no job a-hash is known",
        "cekura:schedule": "no job cekura:schedule is known",
        "..": "no job .. is known",
    }
    for job_id, message in cases.items():
        with pytest.raises(InvalidRequest, match=message):
            client.answer(job_id, "hello")
        rejected = _rejection_of(rt, _xadd_answer(rt, job_id, "hello"))
        assert message in rejected["error"], rejected
    assert main(["answer", "never-submitted", "hello"]) == EXIT_FAILED
    assert main(["answer", "a-string", "hello"]) == EXIT_USAGE
    assert rt.redis.hgetall(settings.key("job", "a-hash")) == {b"owner": b"someone else"}
    assert not rt.redis.exists(settings.key("dramatiq", settings.cekura_queue) + ".msgs")


def test_a_kind_that_never_waits_refuses_answers_in_every_state(
    cli: None, worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """Answers to a job of a kind that never asks, while queued/starting/polling and once finished: each refused
    saying why; the job ends once, unaffected, and no answer call is made."""
    sim.configure(duration_s=1.0)
    job_id = client.submit("agent.auto_fetch", {"agent_id": 5})
    refusals = set()
    while (rt.store.get(job_id) or {}).get("state") != "finished":
        try:
            client.answer(job_id, "nobody asked")
        except InvalidRequest as exc:
            refusals.add(str(exc).split(" (it is ")[-1].rstrip(")") if "not waiting" in str(exc) else str(exc))
        else:
            pytest.fail("an answer to a job that never asked was taken")
        time.sleep(0.02)
    assert "polling" in refusals, refusals
    with pytest.raises(InvalidRequest, match=r"has already ended \(completed\)"):
        client.answer(job_id, "nobody asked")
    assert main(["answer", job_id, "nobody asked"]) == EXIT_FAILED
    assert _one_event(rt, job_id)["status"] == "completed"
    assert _route(sim, CLARIFY) == 0 and _route(sim, FEEDBACK_ANSWER) == 0


# -- 8. hostile questions ---------------------------------------------------------------------------------------


def _inject_question(monkeypatch: pytest.MonkeyPatch, rt: Runtime, rewrite: Any) -> None:
    """Rewrite what Cekura's progress answers say while it asks (the simulator's question is fixed)."""
    real = rt.cekura.progress

    def progress(kind: Any, params: Any, progress_id: str, **kw: Any) -> tuple[str, dict[str, Any]]:
        status, data = real(kind, params, progress_id, **kw)
        if status in kind.waiting:
            data = rewrite(dict(data))
        return status, data

    monkeypatch.setattr(rt.cekura, "progress", progress)


def test_a_huge_question_with_html_and_the_api_key_is_cut_and_masked_everywhere(
    monkeypatch: pytest.MonkeyPatch, worker: dramatiq.Worker, client: Client, rt: Runtime, settings: Settings
) -> None:
    """A 200,000-character question holding HTML and the API key (one copy straddling the 4,000-character cut):
    the status, the waiting event and the timed_out error carry at most 4,000 characters and never the key."""
    key = _api_key(settings)
    head = f"<script>alert('{key}')</script><b>Which?</b> "
    filler = "q" * (4000 - len(head) - 3)
    huge = head + filler + key + "z" * 200_000

    def rewrite(data: dict[str, Any]) -> dict[str, Any]:
        data["clarification_question"] = huge
        data["questions"] = [huge]
        return data

    _inject_question(monkeypatch, rt, rewrite)
    job_id = _ask(client, deadline_s=2)
    view = client.status(job_id) or {}
    waiting = [e for e in _progress(rt, job_id) if e.get("state") == "waiting"]
    assert len(waiting) == 1
    event = _one_event(rt, job_id)
    assert event["status"] == "timed_out"
    raw = (rt.store.get(job_id) or {}).get("question", "")
    for where, text in (
        ("status", view["question"]),
        ("waiting event", waiting[0]["question"]),
        ("record", raw),
        ("error", event["error"]),
    ):
        assert key not in text, f"the API key shows in the question's {where}"
        assert len(text) <= 4000 + 200, f"the question's {where} is {len(text)} characters"
    assert "<script>" in view["question"]  # kept as text; escaping is the renderer's job


def test_a_question_that_is_not_text_still_makes_the_job_wait(
    monkeypatch: pytest.MonkeyPatch, worker: dramatiq.Worker, client: Client, rt: Runtime
) -> None:
    """Cekura's question list for a metric improvement is unpublished; an item whose `question` is an object
    (e.g. localised text) must not break the job: it waits (with some question) and can be answered.

    BREAK: `question_text` (actors/kinds/base.py) joins the items' `question` values with "\\n".join, which raises
    TypeError on a non-string; `_run` turns that into `internal_error`, ending the job `failed` ("internal error
    while handling the poll step (TypeError)") while Cekura waits for an answer that can no longer be given."""

    def rewrite(data: dict[str, Any]) -> dict[str, Any]:
        data["questions"] = [{"id": "q1", "question": {"en": "Is a transfer a failure?"}}]
        return data

    _inject_question(monkeypatch, rt, rewrite)
    job_id = client.submit("metric.improve_from_feedback", {"metric_id": 333})
    wait_for(
        lambda: (rt.store.get(job_id) or {}).get("state") in ("waiting", "finished"), timeout=10, what="the question"
    )
    record = rt.store.get(job_id) or {}
    assert record["state"] == "waiting", f"the job ended {record.get('status')}: {record.get('error')}"


def test_an_unexpected_paused_status_does_not_leave_a_job_waiting_for_an_answer_to_nothing(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """The simulator's own "unexpected status word" fault answers `{"status": "paused"}` (simulator/faults.py
    `UNEXPECTED_STATUS`), which the worker must treat as still running (README: "Any status word a kind does not
    list keeps polling").

    BREAK: `metric.improve_from_feedback` lists `paused` among its waiting words (actors/kinds/metric_improve.py),
    and `_wait_for_answer` (actors/jobs.py) waits even when the answer carries no question at all (it invents
    "Cekura is waiting for an answer (status 'paused') but sent no question"). One transient `paused` poll stops
    the job polling for good: it ends `timed_out` although Cekura finished the improvement moments later, and an
    answer sent to unstick it is refused by Cekura (400) and fails the job."""
    sim.set_faults(unknown_status_rate=1.0)
    job_id = client.submit("metric.improve_from_feedback", {"metric_id": 5}, deadline_s=3)
    wait_for(lambda: _route(sim, "process_feedbacks_progress") >= 1, timeout=10, what="a poll")
    sim.clear_faults()
    event = _one_event(rt, job_id)
    assert event["status"] == "completed", f"{event['status']}: {event['error']}"


# -- 9. no thread sleeps waiting --------------------------------------------------------------------------------


def test_waiting_jobs_hold_no_worker_thread(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """Three times as many asking jobs as worker threads all wait at once, a job of another kind still runs to
    its end meanwhile, and then each asking job gets exactly its own answer."""
    jobs = [client.submit("scenario.generate", ASK, job_id=f"many-{i}") for i in range(12)]
    wait_for(lambda: all(_waiting(client, j) for j in jobs), timeout=10, what="12 jobs waiting at once")
    other = client.submit("agent.auto_fetch", {"agent_id": 5})
    assert _one_event(rt, other)["status"] == "completed"
    for job_id in jobs:
        client.answer(job_id, f"for {job_id}")
    for job_id in jobs:
        event = _one_event(rt, job_id)
        assert event["status"] == "completed"
        assert json.loads(event["result"])["answers"] == [f"for {job_id}"]
    assert _route(sim, CLARIFY) == len(jobs)


# -- 10. real processes: SIGKILL during delivery, and clock skew ------------------------------------------------


def _answers_in(event: dict[str, str]) -> list[Any]:
    """The answers the simulator reports having received, in a generation's result."""
    return list(json.loads(event["result"]).get("answers", [])) if event.get("result") else []


def test_a_worker_killed_after_cekura_took_the_answer_does_not_fail_the_job(system: System) -> None:  # noqa: F811
    """`cekura-worker run` is SIGKILLed while its answer call is in flight: Cekura has taken the answer, the job's
    record still holds it (`advance` never ran). A new worker takes the step over.

    BREAK: nothing records that the answer may have reached Cekura (compare `start_sent` for starts), so the new
    worker's poll (the reconciler's, once the lease is over) calls `_deliver_answer` again (actors/jobs.py); Cekura
    refuses the duplicate with 400 "not waiting", and the job ends `failed` though Cekura completes the generation.
    At-least-once delivery of answers is not documented in README's "What remains at least once" either."""
    server = system.redis()
    sim = system.simulator()
    env = system.worker_env(server, sim)
    first = system.worker(env, processes=1, threads=2)
    client = system.client(server)
    job_id = client.submit("scenario.generate", ASK, deadline_s=60)
    system.wait_for(lambda: (client.status(job_id) or {}).get("state") == "waiting", timeout=10, what="the question")
    sim.set_faults(hang_rate=1.0, hang_s=60)
    client.answer(job_id, "taken, then the worker died")
    system.wait_for(
        lambda: sim.stats()["by_route"].get(f"{CLARIFY} 200", 0) >= 1, timeout=10, what="Cekura to take the answer"
    )
    os.killpg(first.pid, signal.SIGKILL)  # the group this test started, and only it
    first.popen.wait(timeout=10)
    sim.set_faults(hang_rate=0.0)
    second = system.worker(env, processes=1, threads=2)
    event = client.wait(job_id, timeout=25)
    by_route = sim.stats()["by_route"]
    assert event["status"] == "completed", (
        f"{event['status']}: {event['error']} (answer calls: {by_route.get(f'{CLARIFY} 200', 0)} taken, "
        f"{by_route.get(f'{CLARIFY} 400', 0)} refused)\n{second.tail(5)}"
    )
    assert _answers_in(event) == ["taken, then the worker died"]
    assert system.events_per_job(server.client())[job_id] == 1


@pytest.mark.parametrize("shift_s", [-90.0, 90.0])
def test_a_worker_and_a_cli_with_skewed_clocks_wait_answer_and_time_out_on_redis_time(
    system: System,  # noqa: F811
    shift_s: float,
) -> None:
    """The worker's clock is `shift_s` off and the answering CLI's the other way: one job is answered (delivered
    once, completes); another, unanswered, waits its full deadline (no earlier) and times out within about a
    second of it."""
    server = system.redis()
    sim = system.simulator()
    env = system.worker_env(server, sim)
    skewed = {**env, "PYTHONPATH": CLOCKSHIFT, "TEST_CLOCK_SHIFT_S": str(shift_s)}
    system.worker(skewed, processes=1, threads=2)
    client = system.client(server)
    answered = client.submit("scenario.generate", ASK, deadline_s=30)
    unanswered = client.submit("scenario.generate", ASK, deadline_s=4)
    wait_for(lambda: all(_waiting(client, j) for j in (answered, unanswered)), timeout=10, what="both questions")
    cli_env = {**env, "PYTHONPATH": CLOCKSHIFT, "TEST_CLOCK_SHIFT_S": str(-shift_s)}
    done = system.cli(cli_env, "answer", answered, "answered across skewed clocks")
    assert done.returncode == EXIT_OK, done.stderr
    event = client.wait(answered, timeout=15)
    assert event["status"] == "completed", event
    assert _answers_in(event) == ["answered across skewed clocks"]
    record = client.store.get(unanswered) or {}
    deadline_ms = int(record["deadline_ms"])
    late = client.wait(unanswered, timeout=15)
    assert late["status"] == "timed_out", late
    lag = _iso_ms(late["finished_at"]) - deadline_ms
    assert 0 <= lag < 1500, f"timed out {lag} ms after its deadline"
    refused = system.cli(cli_env, "answer", unanswered, "too late")
    assert refused.returncode == EXIT_FAILED and "already ended (timed_out)" in refused.stderr, refused
    assert sim.stats()["by_route"].get(f"{CLARIFY} 200", 0) == 1


# -- 11. answers that are JSON: checked in full when submitted (issue 19, break 3) -----------------------------


def test_a_metric_answer_json_cannot_carry_is_refused_alike_by_every_channel_and_the_job_waits_on(
    cli: None,
    worker: dramatiq.Worker,
    client: Client,
    rt: Runtime,
    sim: SimulatorHandle,
    intake: Intake,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A paused metric improvement sends an answer that is a JSON object as its answers by question id, so that JSON
    must obey every request value's rules. Each answer below is refused when submitted, with the same message naming
    the problem by the stream (a `rejected` event), the client (`InvalidRequest`) and the CLI (exit 2); the job
    still waits, Cekura hears nothing, and a good answer afterwards completes the job.

    BREAK (issue 19, break 3): all were accepted ("answer recorded"); the 4,010-character nested one then failed the
    job with "internal error while handling the poll step (RecursionError)" and `{"q1": 1e999}` went out as the
    invalid JSON `Infinity`."""
    job_id = _ask(client, "metric.improve_from_feedback", {"metric_id": 333})
    capsys.readouterr()
    for name, (text, problem) in REFUSED.items():
        with pytest.raises(InvalidRequest) as caught:
            client.answer(job_id, text)
        assert str(caught.value) == problem, name
        assert main(["answer", job_id, text]) == EXIT_USAGE, name
        assert capsys.readouterr().err.strip() == f"cekura-worker: rejected: {problem}", name
        entry = _xadd_answer(rt, job_id, text)
        assert _rejection_of(rt, entry)["error"] == f"{problem} (request entry {entry})", name
        assert _waiting(client, job_id), f"a refused answer ({name}) changed the job"
    assert _route(sim, FEEDBACK_ANSWER) == 0
    client.answer(job_id, json.dumps({"q1": "yes", "q2": {"action": "skip"}}))
    event = _one_event(rt, job_id)
    assert event["status"] == "completed", event
    assert _sim_answers(sim, _progress_id(rt, job_id)) == [{"q1": "yes", "q2": {"action": "skip"}}]


def test_a_kind_that_sends_answers_as_text_takes_json_looking_answers_verbatim(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """Only the kind that parses an answer refuses what its parse can't send: a generation's answer is text."""
    for text in (DEEP_ANSWER, '{"q1": 1e999}'):
        job_id = _ask(client)
        client.answer(job_id, text)
        event = _one_event(rt, job_id)
        assert event["status"] == "completed", event
        assert json.loads(event["result"])["answers"] == [text]


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        (DEEP_ANSWER, "answer is nested too deeply (more than 64 levels)"),
        ('{"q1": 1e999}', "answer.q1 is out of range for a JSON number (beyond a 64-bit float)"),
    ],
    ids=["nested_past_the_parser", "overflowing_number"],
)
def test_a_recorded_answer_that_cannot_be_sent_fails_the_job_saying_why_and_sends_nothing(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle, stored: str, problem: str
) -> None:
    """A record written before answers were checked in full (here: recorded past the checks, straight through the
    store) fails its job once, with an error naming the problem, and nothing reaches Cekura.

    BREAK (issue 19, break 3): the nested answer failed the job with "internal error while handling the poll step
    (RecursionError)"; the overflowing one was sent to Cekura as `Infinity`."""
    job_id = _ask(client, "metric.improve_from_feedback", {"metric_id": 333})
    s = rt.settings
    reply = rt.store.answer(
        job_id, stored, queue_name=s.cekura_queue, namespace=s.key("dramatiq"), poll_actor=names.POLL
    )
    assert reply[0] == "ok", reply
    event = _one_event(rt, job_id)
    assert event["status"] == "failed", event
    assert event["error"] == f"the recorded answer can't be sent to Cekura: {problem}", event["error"]
    assert _route(sim, FEEDBACK_ANSWER) == 0
