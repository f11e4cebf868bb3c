"""The Celery 5 equivalent of the bare poller: Redis as broker only, a task that re-schedules itself with a countdown.

Run with ``celery -A bench.celery_poller worker --pool threads --concurrency T -n bench-N@%h`` (one such process per
worker process), with the same environment as cekura-worker (REDIS_URL, CEKURA_API_URL, CEKURA_API_KEY,
CEKURA_POLL_INITIAL_S). No result backend: results are not stored (``task_ignore_result``).
"""

import os

import httpx
from celery import Celery

app = Celery("bench", broker=os.environ["REDIS_URL"])
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True  # silences Celery 5's start-up deprecation warning only
INTERVAL_S = float(os.environ["CEKURA_POLL_INITIAL_S"])
http = httpx.Client(
    base_url=os.environ["CEKURA_API_URL"] + "/test_framework/v1/metrics/",
    headers={"X-CEKURA-API-KEY": os.environ["CEKURA_API_KEY"]},
)


@app.task(name="bench.start")
def start(body: dict[str, object]) -> None:
    """POST the start call, then schedule the first poll one interval later."""
    response = http.post("generate_clean_description_bg/", json=body)
    response.raise_for_status()
    poll.apply_async(args=(response.json()["progress_id"],), countdown=INTERVAL_S)


@app.task(name="bench.poll")
def poll(progress_id: str) -> None:
    """GET progress; unless terminal, poll again one interval later."""
    response = http.get("generate_clean_description_progress/", params={"progress_id": progress_id})
    response.raise_for_status()
    if response.json()["status"] not in ("completed", "failed"):
        poll.apply_async(args=(progress_id,), countdown=INTERVAL_S)
