"""The bare Dramatiq poller a team would write first: stock RedisBroker, one actor that re-sends itself with a delay.

Run with the stock CLI: ``python -m dramatiq bench.bare_dramatiq --processes P --threads T``, with the same
environment as cekura-worker (REDIS_URL, CEKURA_API_URL, CEKURA_API_KEY, CEKURA_POLL_INITIAL_S).
"""

import logging
import os

import dramatiq
import httpx
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["REDIS_URL"]))
logging.getLogger("httpx").setLevel(logging.WARNING)  # CLI logs at INFO: else one line per request
INTERVAL_MS = round(float(os.environ["CEKURA_POLL_INITIAL_S"]) * 1000)  # 0: no delay queue at all
http = httpx.Client(
    base_url=os.environ["CEKURA_API_URL"] + "/test_framework/v1/metrics/",
    headers={"X-CEKURA-API-KEY": os.environ["CEKURA_API_KEY"]},
)


@dramatiq.actor
def start(body: dict[str, object]) -> None:
    """POST the start call, then schedule the first poll one interval later."""
    response = http.post("generate_clean_description_bg/", json=body)
    response.raise_for_status()
    poll.send_with_options(args=(response.json()["progress_id"],), delay=INTERVAL_MS)


@dramatiq.actor
def poll(progress_id: str) -> None:
    """GET progress; unless terminal, poll again one interval later."""
    response = http.get("generate_clean_description_progress/", params={"progress_id": progress_id})
    response.raise_for_status()
    if response.json()["status"] not in ("completed", "failed"):
        poll.send_with_options(args=(progress_id,), delay=INTERVAL_MS)
