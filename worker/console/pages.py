"""The pages that only read: the overview, the jobs list, a job's page, and the event stream that keeps the
overview and a job's page up to date.

The page handlers are plain functions, which Starlette runs in its thread pool, because they read Redis with the
service's (blocking) client; the event stream is a coroutine fed by the live-feed thread (`worker.console.live`).
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from actors.kinds import KINDS
from worker.console import detail, listing
from worker.console.actions import can_answer
from worker.console.reads import clip
from worker.console.state import console, render


def overview(request: Request) -> Response:
    c = console(request)
    return render(
        request,
        "overview.html",
        {
            "page": "overview",
            "summary": c.hub.summary(c.client.redis),
            "outcomes": c.hub.outcomes_table(),
            "problem": c.hub.problem or c.hub.summary_problem,
            "events_url": "/events",
        },
    )


def jobs(request: Request) -> Response:
    c = console(request)
    filters = listing.Filters.parse(request.query_params)
    kinds = sorted({*KINDS, filters.kind} - {""})
    return render(
        request,
        "jobs.html",
        {
            "page": "jobs",
            "filters": filters,
            "kinds": kinds,
            "states": listing.ACTIVE_ORDER,
            "statuses": listing.FINAL_STATUSES,
            "active": listing.active_jobs(c.client.redis, c.settings, filters),
            "results": listing.recent_results(c.client.redis, c.settings, filters),
            "active_scan": listing.DEFAULT_ACTIVE_SCAN,
        },
    )


def job(request: Request) -> Response:
    c = console(request)
    job_id = request.path_params["job_id"]
    found = detail.load(c.client.redis, c.settings, job_id)
    if found is None:
        shown = clip(job_id, detail.MAX_JOB_ID_CHARS)
        message = f"No job {shown} is known: never submitted, or its record expired (CEKURA_JOB_TTL_S after it ended)."
        return render(request, "error.html", {"page": "job", "title": "Unknown job", "message": message}, 404)
    kind = KINDS.get(found.fields["kind"])
    return render(
        request,
        "job.html",
        {
            "page": "job",
            "job": found,
            "can_answer": can_answer(c.client) and found.state == "waiting",
            "secret_params": bool(kind is not None and kind.secret_fields),
            # A finished job changes no more: its page needs no live updates (nor one whose id quotes a secret,
            # which the page doesn't echo).
            "events_url": f"/events?job={quote(job_id, safe='')}" if found.active and found.job_id == job_id else "",
        },
    )


async def events(request: Request) -> Response:
    """Server-sent events for the overview (no `job`) or one job's page."""
    job_id = request.query_params.get("job") or None
    if job_id is not None and len(job_id) > detail.MAX_JOB_ID_CHARS:
        return Response("job id too long\n", status_code=400, media_type="text/plain")
    return StreamingResponse(
        console(request).hub.stream(job_id),
        media_type="text/event-stream",
        headers={"x-accel-buffering": "no"},  # a proxy in front must not hold events back
    )
