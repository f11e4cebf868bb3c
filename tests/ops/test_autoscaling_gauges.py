"""The autoscaling gauges `cekura_steps_due` and `cekura_oldest_due_seconds`, read from real Dramatiq messages in
Redis: start messages the client put on the ready queue, and delayed polls the broker put in `<queue>.ZQ`.

No worker runs, so nothing is taken off the queue; a test makes a delayed message due by moving its eta into the
past on the server's clock, which is what time passing would do.
"""

from __future__ import annotations

import json
from pathlib import Path

import dramatiq
import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from config.settings import Settings
from worker.client import Client
from worker.ops.exposition import build_registry, due_steps
from worker.runtime.app import Runtime
from worker.runtime.connection import server_ms

#: Far enough ahead that a delayed message can't become due while a test runs.
FUTURE_DELAY_MS = 600_000


def _queue_key(settings: Settings) -> str:
    return f"{settings.key('dramatiq')}:{settings.cekura_queue}"


def _send_delayed_poll(rt: Runtime, job_id: str) -> str:
    """A poll message sent with a delay, as the poll actor sends its next poll; returns its Redis message id."""
    message = dramatiq.Message(
        queue_name=rt.settings.cekura_queue, actor_name="cekura.poll", args=(job_id, 1), kwargs={}, options={}
    )
    sent = rt.broker.enqueue(message, delay=FUTURE_DELAY_MS)
    return str(sent.options["redis_message_id"])


def _make_due(redis_client: redis.Redis, settings: Settings, redis_id: str, seconds_ago: float) -> int:
    """Move a delayed message's eta (its score, and the `due_ms` the broker wrote into it) into the past."""
    queue = _queue_key(settings)
    due_ms = server_ms(redis_client) - int(seconds_ago * 1000)
    assert redis_client.zadd(f"{queue}.ZQ", {redis_id: due_ms}, xx=True, ch=True) == 1
    message = json.loads(redis_client.hget(f"{queue}.msgs", redis_id))
    message["options"]["due_ms"] = due_ms
    redis_client.hset(f"{queue}.msgs", redis_id, json.dumps(message))
    return due_ms


def _promote(redis_client: redis.Redis, settings: Settings, redis_id: str) -> None:
    """What `fetch.lua` does to a due message: off the delayed set, onto the tail of the ready queue."""
    queue = _queue_key(settings)
    assert redis_client.zrem(f"{queue}.ZQ", redis_id) == 1
    redis_client.rpush(queue, redis_id)


def _scrape(settings: Settings, tmp_path: Path) -> dict[str, float]:
    text = generate_latest(build_registry(settings, str(tmp_path))).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_nothing_queued_means_nothing_due(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    assert due_steps(redis_client, settings) == (0, 0.0)
    samples = _scrape(settings, tmp_path)
    assert samples["cekura_steps_due"] == 0
    assert samples["cekura_oldest_due_seconds"] == 0


def test_delayed_polls_are_not_due_before_their_eta(rt: Runtime, redis_client: redis.Redis) -> None:
    for i in range(3):
        _send_delayed_poll(rt, f"job-{i}")

    assert redis_client.zcard(f"{_queue_key(rt.settings)}.ZQ") == 3
    assert due_steps(redis_client, rt.settings) == (0, 0.0)


def test_steps_due_adds_the_ready_queue_to_delayed_polls_past_their_eta(
    rt: Runtime, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with Client(rt.settings) as client:  # no worker runs: the start messages wait on the ready queue
        for agent_id in (1, 2, 3):
            client.submit("agent.auto_fetch", {"agent_id": agent_id})
    polls = [_send_delayed_poll(rt, f"job-{i}") for i in range(4)]
    _make_due(redis_client, rt.settings, polls[0], seconds_ago=5)
    _make_due(redis_client, rt.settings, polls[1], seconds_ago=2)
    _make_due(redis_client, rt.settings, polls[2], seconds_ago=0)  # due exactly now counts as due

    steps, oldest_s = due_steps(redis_client, rt.settings)
    assert redis_client.llen(_queue_key(rt.settings)) == 3
    assert steps == 3 + 3  # the fourth poll is still in the future
    assert 5.0 <= oldest_s < 6.0  # the oldest delayed poll, not the start messages sent a moment ago

    samples = _scrape(rt.settings, tmp_path)
    assert samples["cekura_redis_up"] == 1
    assert samples["cekura_steps_due"] == 6
    assert 5.0 <= samples["cekura_oldest_due_seconds"] < 6.0


def test_a_promoted_poll_still_counts_from_when_it_became_due(rt: Runtime, redis_client: redis.Redis) -> None:
    # A fetch moves every due poll onto the ready queue at once; a saturated fleet's backlog waits there.
    late = _send_delayed_poll(rt, "job-late")
    _make_due(redis_client, rt.settings, late, seconds_ago=7)
    _promote(redis_client, rt.settings, late)
    later = _send_delayed_poll(rt, "job-later")
    _make_due(redis_client, rt.settings, later, seconds_ago=1)

    steps, oldest_s = due_steps(redis_client, rt.settings)
    assert steps == 2
    assert 7.0 <= oldest_s < 8.0


def test_start_messages_count_from_when_they_were_sent(settings: Settings, redis_client: redis.Redis) -> None:
    with Client(settings) as client:
        client.submit("agent.auto_fetch", {"agent_id": 1})

    steps, oldest_s = due_steps(redis_client, settings)
    assert steps == 1
    assert 0.0 <= oldest_s < 2.0


@pytest.mark.parametrize("data", [None, b"\xff{", b"[1, 2]", b'{"options": {"due_ms": "soon"}}'])
def test_a_ready_message_without_a_readable_due_time_is_counted_but_not_aged(
    settings: Settings, redis_client: redis.Redis, data: bytes | None
) -> None:
    queue = _queue_key(settings)
    redis_client.rpush(queue, "head", "next")
    if data is not None:  # None: the message was acked and deleted between the two reads
        redis_client.hset(f"{queue}.msgs", "head", data)

    assert due_steps(redis_client, settings) == (2, 0.0)


def test_gauges_are_absent_when_redis_is_unreachable(settings: Settings, tmp_path: Path) -> None:
    unreachable = settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:1/0")})
    samples = _scrape(unreachable, tmp_path)
    assert samples["cekura_redis_up"] == 0
    assert "cekura_steps_due" not in samples
    assert "cekura_oldest_due_seconds" not in samples


@pytest.mark.parametrize("seconds_ago", [0.5, 30.0])
def test_oldest_due_follows_the_server_clock(rt: Runtime, redis_client: redis.Redis, seconds_ago: float) -> None:
    poll = _send_delayed_poll(rt, "job-0")
    _make_due(redis_client, rt.settings, poll, seconds_ago=seconds_ago)

    steps, oldest_s = due_steps(redis_client, rt.settings)
    assert steps == 1
    assert seconds_ago <= oldest_s < seconds_ago + 1.0
