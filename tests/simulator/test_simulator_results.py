"""Tests of the simulator's results list (`GET results/?search=`), over real HTTP: filters, DRF pagination, the
`Result` shape; and of lost start answers: a `run_scenarios` whose answer is lost has still created its result."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.simulator.sim_api import OPS_DURATION, OPS_KEY, SSL_CONTEXT, Api

RUN = "/test_framework/v1/scenarios/run_scenarios/"
RESULT = "/test_framework/v1/results/{id}/"
RESULTS = "/test_framework/v1/results/"
METRICS = "/test_framework/v1/metrics/generate_metrics/"
TERMINAL = {"completed", "failed", "timeout", "cancelled"}
ITEM_KEYS = {
    "id",
    "name",
    "agent",
    "status",
    "created_at",
    "updated_at",
    "total_runs_count",
    "success_runs_count",
    "failed_runs_count",
    "completed_runs_count",
    "runs",
}


def run(api: Api, name: str, **body: Any) -> int:
    response = api.post(RUN, {"scenarios": [1, 2], "name": name, **body})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def listing(api: Api, **params: Any) -> dict[str, Any]:
    response = api.http.get(RESULTS, params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- the list ---------------------------------------------------------------------------------------------------


def test_search_pages_newest_first_with_absolute_next_and_previous_links(api: Api) -> None:
    ids = [run(api, f"nightly batch-7f3a run {i}") for i in range(12)]
    others = [run(api, f"other {i}") for i in range(3)]
    first = listing(api, search="BATCH-7F3A", page_size=5)
    assert first["count"] == 12
    assert [item["id"] for item in first["results"]] == ids[::-1][:5]
    assert first["previous"] is None
    assert first["next"] == f"{api.sim.url}{RESULTS}?page=2&page_size=5&search=BATCH-7F3A"
    second = api.http.get(first["next"]).json()  # the link is absolute and followable as it is
    assert [item["id"] for item in second["results"]] == ids[::-1][5:10]
    assert second["previous"] == f"{api.sim.url}{RESULTS}?page_size=5&search=BATCH-7F3A"  # DRF drops page=1
    third = api.http.get(second["next"]).json()
    assert [item["id"] for item in third["results"]] == ids[::-1][10:]
    assert third["next"] is None
    assert third["previous"] == f"{api.sim.url}{RESULTS}?page=2&page_size=5&search=BATCH-7F3A"
    everything = listing(api)
    assert everything["count"] == 15 and len(everything["results"]) == 10  # default page_size
    assert [item["id"] for item in everything["results"]][:3] == others[::-1]
    assert listing(api, page_size=1000)["count"] == 15 and len(listing(api, page_size=1000)["results"]) == 15
    assert len(listing(api, page_size="x")["results"]) == 10


@pytest.mark.parametrize("page", ["4", "0", "-1", "abc", ""])
def test_a_page_out_of_range_or_not_a_number_is_drf_s_invalid_page(api: Api, page: str) -> None:
    for i in range(12):
        run(api, f"r{i}")
    response = api.http.get(RESULTS, params={"page": page, "page_size": 5})
    assert (response.status_code, response.json()) == (404, {"detail": "Invalid page."})


def test_an_empty_list_has_a_first_page_and_nothing_after(api: Api) -> None:
    assert listing(api, search="nothing-named-so") == {"count": 0, "next": None, "previous": None, "results": []}
    assert api.http.get(RESULTS, params={"page": 2}).status_code == 404


def test_search_is_a_case_insensitive_substring_split_into_terms_like_drf(api: Api) -> None:
    ids = {name: run(api, name) for name in ("Release 2.3 smoke", "release 2.4 smoke", "nightly [fail-run]")}
    assert [i["id"] for i in listing(api, search="RELEASE 2.3")["results"]] == [ids["Release 2.3 smoke"]]
    assert {i["id"] for i in listing(api, search="smoke,release")["results"]} == {
        ids["Release 2.3 smoke"],
        ids["release 2.4 smoke"],
    }
    assert listing(api, search='"smoke release"')["count"] == 0  # a quoted phrase stays whole
    assert listing(api, search="[fail-run]")["count"] == 1
    assert listing(api, search="  ")["count"] == 3


def test_agent_project_and_scenario_filters(api: Api) -> None:
    a = run(api, "x", agent_id=12)
    b = run(api, "x", agent_id=13, scenarios=[5])
    c = api.post(RUN, {"folder_path": "Sales", "project_id": 77, "name": "x"}).json()["id"]
    assert [i["id"] for i in listing(api, agent_id=12)["results"]] == [a]
    assert [i["id"] for i in listing(api, project_id=77)["results"]] == [c]
    assert [i["id"] for i in listing(api, scenarios="5,9")["results"]] == [b]
    assert [i["id"] for i in listing(api, search="x", agent_id=13)["results"]] == [b]
    for name in ("agent_id", "project_id", "scenarios"):
        response = api.http.get(RESULTS, params={name: "abc"})
        assert (response.status_code, response.json()) == (400, {name: ["Enter a number."]})


def test_each_item_is_a_result_with_runs_as_an_array(api: Api) -> None:
    result_id = run(api, "shape [fail-run]", agent_id=12)
    running = listing(api)["results"][0]
    assert set(running) >= ITEM_KEYS
    assert running["status"] in ("pending", "in_progress", "evaluating")
    assert isinstance(running["runs"], list) and len(running["runs"]) == 2
    final = api.poll(RESULT.format(id=result_id), None, lambda a: a["status"] in TERMINAL)[-1]
    item = listing(api)["results"][0]
    assert item["runs"] == sorted(final["runs"].values(), key=lambda r: r["id"])
    for key in ("id", "name", "agent", "status", "total_runs_count", "success_runs_count", "failed_runs_count"):
        assert item[key] == final[key]
    assert (item["success_runs_count"], item["failed_runs_count"]) == (1, 1)
    assert item["created_at"] == final["created_at"]
    record = api.sim.polls()[str(result_id)]
    assert iso(item["created_at"]) == pytest.approx(record["started_at"], abs=1e-3)
    assert iso(item["updated_at"]) == pytest.approx(record["finishes_at"], abs=1e-3)


def test_a_finished_result_is_listed_terminal_without_being_polled(api: Api) -> None:
    result_id = run(api, "unpolled [timeout]")
    polls = api.sim.stats()["polls_total"]
    time.sleep(OPS_DURATION * 1.5)
    assert listing(api)["results"][0]["status"] == "timeout"
    assert api.sim.stats()["polls_total"] == polls  # listing is not a poll of the result
    assert api.sim.polls()[str(result_id)]["terminal_at"] is None


def test_the_list_needs_the_api_key_and_is_a_get_and_counts_as_results_list(api: Api) -> None:
    assert httpx.get(api.sim.url + RESULTS, verify=SSL_CONTEXT).status_code == 401
    assert api.post(RESULTS, {}).status_code == 405
    listing(api)
    assert api.sim.stats()["by_route"]["results-list 200"] == 1


def test_the_next_link_follows_the_host_the_client_used(api: Api) -> None:
    for i in range(3):
        run(api, f"h{i}")
    headers = {"X-CEKURA-API-KEY": OPS_KEY, "Host": "cekura.internal:8080"}
    answer = api.http.get(RESULTS, params={"page_size": 2}, headers=headers).json()
    assert answer["next"] == "http://cekura.internal:8080/test_framework/v1/results/?page=2&page_size=2"


# -- lost start answers -----------------------------------------------------------------------------------------


def test_a_lost_start_answer_still_created_the_result_and_search_finds_it(api: Api) -> None:
    api.sim.set_faults(lost_start_rate=1.0, hang_s=0.3)
    with pytest.raises(httpx.TransportError):  # 1st: the connection closes unanswered
        api.post(RUN, {"scenarios": [1], "name": "ci cw-1111"})
    assert api.post(RUN, {"scenarios": [1], "name": "ci cw-2222"}).status_code == 502  # 2nd: a proxy's 502
    assert api.post(RUN, {"scenarios": [1], "name": "ci cw-3333"}).status_code == 504  # 3rd: hang_s, then 504
    with pytest.raises(httpx.TransportError):  # and so on in turn
        api.post(RUN, {"scenarios": [1], "name": "ci cw-4444"})
    assert api.post(RUN, {"scenarios": [1], "name": "ci cw-5555"}).status_code == 502
    with pytest.raises(httpx.ReadTimeout):  # a hang past the client's timeout: a read timeout
        api.http.post(RUN, json={"scenarios": [1], "name": "ci cw-6666"}, timeout=0.1)
    stats = api.sim.stats()
    assert stats["faults_injected"]["lost_start"] == 6
    assert (stats["by_route"]["run_scenarios dropped"], stats["by_route"]["run_scenarios 502"]) == (2, 2)
    assert stats["started_by_kind"]["evaluator_run"] == 6
    assert stats["started_by_key"]["evaluator_run"]["ci cw-6666"] == 1
    api.sim.clear_faults()
    for tag in ("cw-1111", "cw-2222", "cw-3333", "cw-6666"):
        (found,) = listing(api, search=tag)["results"]
        assert found["name"] == f"ci {tag}"
        final = api.poll(RESULT.format(id=found["id"]), None, lambda a: a["status"] in TERMINAL)[-1]
        assert final["status"] == "completed"


def test_lost_answers_hit_only_posts(api: Api) -> None:
    result_id = run(api, "before")
    api.sim.set_faults(lost_start_rate=1.0)
    for _ in range(5):
        assert api.http.get(RESULT.format(id=result_id)).status_code == 200
        assert api.http.get(RESULTS).status_code == 200
    assert api.sim.stats()["faults_injected"]["lost_start"] == 0


def test_lost_answers_replay_the_same_sequence_after_a_reset(api: Api) -> None:
    def statuses() -> list[int | str]:
        api.sim.reset()
        api.sim.set_faults(lost_start_rate=0.5, hang_s=0.05)
        seen: list[int | str] = []
        for _ in range(12):
            try:
                seen.append(api.post(METRICS, {"agent_id": 1}).status_code)
            except httpx.TransportError:
                seen.append("dropped")
        assert api.sim.stats()["started_by_kind"]["metric_generate"] == 12  # every one was started
        return seen

    first = statuses()
    assert first == statuses()
    assert {200, 502} <= set(first) and "dropped" in first
