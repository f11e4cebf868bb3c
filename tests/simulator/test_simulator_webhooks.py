"""Tests of the simulator's result webhooks, with a small HTTP receiver: `result.completed` with the secret header
when an evaluator result ends (polled or not), every terminal status, retries, and the loss, duplicate and delay
faults by counts with the fixed seed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from simulator import SimConfig, main, start_in_thread
from tests.simulator.sim_api import OPS_DURATION, Api

RUN = "/test_framework/v1/scenarios/run_scenarios/"
RESULT = "/test_framework/v1/results/{id}/"
END_CALLS = "/test_framework/v1/results/{id}/end_calls/"
SECRET = "whsec-test"
DATA_KEYS = {
    "id",
    "name",
    "agent",
    "status",
    "success_rate",
    "met_expected_outcome_count",
    "total_expected_outcome_count",
    "run_as_text",
    "is_cronjob",
    "runs",
    "created_at",
}


class Receiver:
    """A local webhook endpoint: records every POST (arrival time, headers, JSON) and answers `statuses` in turn,
    then 200."""

    def __init__(self) -> None:
        self.hits: list[tuple[float, dict[str, str], Any]] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.hits.append((time.time(), dict(self.headers.items()), json.loads(body)))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/cekura"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def bodies(self) -> list[Any]:
        with self.lock:
            return [body for _, _, body in self.hits]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(api: Api) -> Iterator[Receiver]:
    hooks = Receiver()
    api.sim.configure(webhook_url=hooks.url, webhook_secret=SECRET)
    yield hooks
    api.sim.configure(webhook_url=None, webhook_secret=None)
    hooks.stop()


def wait_for(check: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def settled(api: Api) -> dict[str, int]:
    """The webhook counters once no delivery is pending."""
    wait_for(lambda: api.sim.stats()["webhooks"]["pending"] == 0)
    stats: dict[str, int] = api.sim.stats()["webhooks"]
    return stats


def run(api: Api, name: str, **body: Any) -> int:
    response = api.post(RUN, {"scenarios": [1, 2], "name": name, **body})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


# -- delivery ---------------------------------------------------------------------------------------------------


def test_a_result_that_ends_is_announced_with_the_secret_and_its_data_without_any_poll(
    api: Api, receiver: Receiver
) -> None:
    result_id = run(api, "nightly cw-42", agent_id=12)
    wait_for(lambda: len(receiver.hits) == 1)
    settled(api)
    arrived, headers, body = receiver.hits[0]
    assert headers["X-CEKURA-SECRET"] == SECRET
    assert headers["Content-Type"] == "application/json"
    assert body["event_type"] == "result.completed"
    data = body["data"]
    assert set(data) == DATA_KEYS
    assert (data["id"], data["name"], data["agent"], data["status"]) == (result_id, "nightly cw-42", 12, "completed")
    assert (data["met_expected_outcome_count"], data["total_expected_outcome_count"]) == (2, 2)
    assert data["run_as_text"] is False and data["is_cronjob"] is False
    for key, one in data["runs"].items():
        assert one["id"] == int(key) and one["success"] is True and one["status"] == "completed"
        assert set(one["scenario"]) == {"id", "name"}
    assert api.sim.stats()["polls_total"] == 0  # nobody polled: Cekura still knew the result ended
    record = api.sim.polls()[str(result_id)]
    assert record["finishes_at"] == pytest.approx(record["started_at"] + OPS_DURATION)
    (sent_at,) = record["webhook_at"]
    assert record["finishes_at"] <= sent_at <= arrived
    assert arrived - record["finishes_at"] < 1.0
    final = api.get(RESULT.format(id=result_id))  # the webhook says what the result says
    assert final["status"] == data["status"] and sorted(final["runs"]) == sorted(data["runs"])
    time.sleep(OPS_DURATION)
    assert settled(api) == {"ended": 1, "lost": 0, "duplicated": 0, "sent": 1, "failed": 0, "retried": 0, "pending": 0}
    assert len(receiver.hits) == 1  # the poll that saw it terminal did not announce it again


@pytest.mark.parametrize(("marker", "status"), [("[failed]", "failed"), ("[timeout]", "timeout")])
def test_every_terminal_status_is_a_result_completed_event(
    api: Api, receiver: Receiver, marker: str, status: str
) -> None:
    run(api, f"ci {marker}")
    wait_for(lambda: len(receiver.hits) == 1)
    body = receiver.bodies()[0]
    assert (body["event_type"], body["data"]["status"]) == ("result.completed", status)
    assert all(one["error_message"] for one in body["data"]["runs"].values())


def test_a_cancelled_result_is_announced_at_end_calls_and_a_hung_one_never(api: Api, receiver: Receiver) -> None:
    hung = run(api, "stuck [hang]")
    time.sleep(OPS_DURATION * 2)
    assert receiver.hits == []
    assert api.post(END_CALLS.format(id=hung)).status_code == 200
    wait_for(lambda: len(receiver.hits) == 1)
    assert receiver.bodies()[0]["data"]["status"] == "cancelled"
    assert api.sim.polls()[str(hung)]["finishes_at"] <= receiver.hits[0][0]


def test_with_polls_to_complete_the_result_ends_on_the_poll_that_sees_it(api: Api, receiver: Receiver) -> None:
    api.sim.configure(polls_to_complete=3, duration_s=3600)
    result_id = run(api, "by polls")
    for _ in range(2):
        assert api.get(RESULT.format(id=result_id))["status"] != "completed"
    time.sleep(0.2)
    assert receiver.hits == []
    assert api.get(RESULT.format(id=result_id))["status"] == "completed"
    wait_for(lambda: len(receiver.hits) == 1)
    assert receiver.bodies()[0]["data"]["id"] == result_id


def test_no_url_no_webhooks_and_no_secret_no_header(api: Api, receiver: Receiver) -> None:
    api.sim.configure(webhook_url=None)
    run(api, "unannounced")
    time.sleep(OPS_DURATION * 2)
    api.sim.configure(webhook_url=receiver.url, webhook_secret=None)  # a result that ended before is not sent
    run(api, "announced")
    wait_for(lambda: len(receiver.hits) == 1)
    time.sleep(0.1)
    assert [body["data"]["name"] for body in receiver.bodies()] == ["announced"]
    assert "X-CEKURA-SECRET" not in receiver.hits[0][1]
    assert api.sim.stats()["webhook_url"] == receiver.url and api.sim.stats()["webhook_secret_set"] is False


def test_a_5xx_is_retried_and_a_4xx_is_not(api: Api, receiver: Receiver) -> None:
    receiver.statuses = [503, 500, 200]
    run(api, "retried")
    assert settled_after(api, 1) == {"ended": 1, "sent": 1, "retried": 2, "failed": 0}
    assert len(receiver.hits) == 3
    receiver.statuses = [400]
    run(api, "rejected")
    assert settled_after(api, 2) == {"ended": 2, "sent": 1, "retried": 2, "failed": 1}
    receiver.statuses = [500, 502, 503]
    run(api, "given up")
    assert settled_after(api, 3) == {"ended": 3, "sent": 1, "retried": 4, "failed": 2}
    assert len(receiver.hits) == 7


def settled_after(api: Api, ended: int) -> dict[str, int]:
    wait_for(lambda: api.sim.stats()["webhooks"]["ended"] == ended)
    stats = settled(api)
    return {key: stats[key] for key in ("ended", "sent", "retried", "failed")}


def test_a_receiver_that_is_down_counts_as_failed_after_retries(api: Api, receiver: Receiver) -> None:
    receiver.stop()
    run(api, "nobody home")
    assert settled_after(api, 1) == {"ended": 1, "sent": 0, "retried": 2, "failed": 1}


def test_webhooks_are_configured_from_the_command_line_config_and_control_route(api: Api) -> None:
    with pytest.raises(ValueError, match="webhook_url"):
        api.sim.configure(webhook_url="ftp://x")
    with pytest.raises(ValueError, match="webhook_url"):
        SimConfig(webhook_url="localhost:9")
    assert main(["--port", "0", "--webhook-url", "localhost:9"]) == 2
    hooks = Receiver()
    try:
        handle = start_in_thread(SimConfig(duration_s=0.05, webhook_url=hooks.url, webhook_secret="s"))
        try:
            with httpx.Client(base_url=handle.url, headers={"X-CEKURA-API-KEY": handle.api_key}) as http:
                assert http.post(RUN, json={"scenarios": [1]}).status_code == 201
                wait_for(lambda: len(hooks.hits) == 1)
                assert hooks.hits[0][1]["X-CEKURA-SECRET"] == "s"
                changed = http.post("/_sim/config", json={"webhook_url": None})
                assert changed.json()["webhook_url"] is None
        finally:
            handle.stop()
    finally:
        hooks.stop()


# -- faults -----------------------------------------------------------------------------------------------------


def announced(api: Api, receiver: Receiver, count: int) -> tuple[dict[str, int], list[str]]:
    """Start `count` results, wait for all of them to end and their webhooks to settle; the counters and the names
    the receiver got, in arrival order."""
    for i in range(count):
        run(api, f"r{i:02d}")
    wait_for(lambda: api.sim.stats()["webhooks"]["ended"] == count)
    stats = settled(api)
    return stats, [body["data"]["name"] for body in receiver.bodies()]


def test_loss_drops_a_seeded_share_of_webhooks_the_same_ones_after_a_reset(api: Api, receiver: Receiver) -> None:
    api.sim.set_faults(webhook_loss_rate=0.5)
    stats, names = announced(api, receiver, 20)
    assert stats["lost"] == 20 - len(names) and stats["sent"] == len(names)
    assert 4 <= stats["lost"] <= 16  # seed 11
    api.sim.reset()
    receiver.hits.clear()
    again, names_again = announced(api, receiver, 20)
    assert again == stats and sorted(names_again) == sorted(names)


def test_duplicates_send_a_seeded_share_twice(api: Api, receiver: Receiver) -> None:
    api.sim.set_faults(webhook_duplicate_rate=0.5)
    stats, names = announced(api, receiver, 20)
    assert len(names) == stats["sent"] == 20 + stats["duplicated"]
    assert 4 <= stats["duplicated"] <= 16
    assert sum(1 for name in set(names) if names.count(name) == 2) == stats["duplicated"]
    api.sim.set_faults(webhook_duplicate_rate=1.0, webhook_loss_rate=1.0)  # a lost one is not duplicated
    assert api.sim.stats()["webhooks"]["lost"] == 0
    run(api, "lost")
    wait_for(lambda: api.sim.stats()["webhooks"]["lost"] == 1)
    assert settled(api)["duplicated"] == stats["duplicated"]


def test_delay_holds_each_webhook_for_the_set_time_or_a_drawn_one(api: Api, receiver: Receiver) -> None:
    api.sim.set_faults(webhook_delay_s=0.4)
    result_id = run(api, "late")
    wait_for(lambda: len(receiver.hits) == 1)
    ended = api.sim.polls()[str(result_id)]["finishes_at"]
    assert 0.4 <= receiver.hits[0][0] - ended < 1.4
    receiver.hits.clear()
    api.sim.set_faults(webhook_delay_s=0.1, webhook_delay_max_s=0.6)
    ids = [run(api, f"spread {i}") for i in range(10)]
    wait_for(lambda: len(receiver.hits) == 10)
    settled(api)  # `webhook_at` is recorded once the receiver's 2xx is back
    report = api.sim.polls()
    delays = [report[str(i)]["webhook_at"][0] - report[str(i)]["finishes_at"] for i in ids]
    assert all(0.1 - 0.01 <= delay <= 0.6 + 0.2 for delay in delays), delays
    assert max(delays) - min(delays) > 0.1  # drawn, not fixed


def test_a_reset_forgets_the_webhooks_still_waiting(api: Api, receiver: Receiver) -> None:
    api.sim.set_faults(webhook_delay_s=0.5)
    run(api, "forgotten")
    wait_for(lambda: api.sim.stats()["webhooks"]["pending"] == 1)
    api.sim.reset()
    time.sleep(0.8)
    assert receiver.hits == []
    assert api.sim.stats()["webhooks"] == dict.fromkeys(
        ("ended", "lost", "duplicated", "sent", "failed", "retried", "pending"), 0
    )
