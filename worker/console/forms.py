"""The pages that change something: an action's confirmation page and its POST, and logging in and out.

Every POST is checked the same way before anything else happens (see `worker.console.guard`): a form body
(`application/x-www-form-urlencoded`, small), from this origin (`Origin` and `Sec-Fetch-Site`, when the browser
sends them), with this browser's CSRF token, and, to act, the console token (typed into the form, or a login
session). A refusal changes nothing, says why, and is logged without any value the user typed. A wrong token costs
the sender `DEFAULT_REFUSAL_DELAY_S`, so guessing it is slow.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlsplit

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from worker.console import reads
from worker.console.actions import ACTIONS, can_answer, perform
from worker.console.detail import DEFAULT_TEXT_CHARS, MAX_JOB_ID_CHARS
from worker.console.guard import SESSION_COOKIE, Verdict
from worker.console.reads import TEXT_BYTES, clip
from worker.console.state import browser_id, console, login, render
from worker.console.state import logout as logout_browser
from worker.redact import redact

log = structlog.get_logger(__name__)

#: The largest form body read, in bytes (an answer of 10,000 characters, percent-encoded, fits).
DEFAULT_MAX_FORM_BYTES = 262_144  # a 10,000-character answer, percent-encoded

#: Seconds a POST with a wrong token waits before its refusal is sent.
DEFAULT_REFUSAL_DELAY_S = 0.5


async def _form(request: Request) -> dict[str, str] | None:
    """The POST's form fields, or None if the body isn't a small urlencoded form."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > DEFAULT_MAX_FORM_BYTES:
            return None
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
    return dict(pairs)


def _job_id(value: str) -> str:
    """The job id a request names; one longer than any job's is cut (after redacting it: it is shown)."""
    return value if len(value) <= MAX_JOB_ID_CHARS else clip(value, MAX_JOB_ID_CHARS)


def _same_origin(request: Request) -> bool:
    """False when the browser says the form came from another site.

    `Origin: null` says nothing: browsers send it for every form POST of a page whose Referrer-Policy is
    `no-referrer`, as the console's are; `Sec-Fetch-Site` still tells, and the CSRF token decides in any case."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    parts = urlsplit(origin)
    return parts.netloc.lower() == request.headers.get("host", "").lower() and parts.scheme in ("http", "https")


async def _check(request: Request) -> tuple[dict[str, str], Verdict]:
    form = await _form(request)
    if form is None:
        return {}, Verdict(False, "form", "The request isn't a form this console sent: nothing was changed.")
    if not _same_origin(request):
        return form, Verdict(False, "csrf", "The form came from another site: nothing was changed.")
    bid, _ = browser_id(request)
    verdict = console(request).guard.check_action(
        bid, request.cookies.get(SESSION_COOKIE, ""), form.get("csrf", ""), form.get("token", "")
    )
    return form, verdict


async def _refused(request: Request, verdict: Verdict, what: str, job_id: str = "") -> Response:
    log.warning(
        "console_action_refused",
        action=what,
        job_id=clip(job_id, MAX_JOB_ID_CHARS) or None,
        reason=verdict.reason,
        client=request.client.host if request.client else None,
    )
    if verdict.reason == "token":
        await asyncio.sleep(DEFAULT_REFUSAL_DELAY_S)
    context = {"page": "refused", "title": "Refused", "message": verdict.message, "job_id": job_id}
    return render(request, "error.html", context, 403)


def confirm(request: Request) -> Response:
    """GET /actions/{action}?job=ID: what the action will do, and the form that does it."""
    action = ACTIONS.get(request.path_params["action"])
    job_id = _job_id(request.query_params.get("job", ""))
    if action is None or not job_id:
        return render(request, "error.html", {"page": "error", "title": "Not found", "message": "No such action."}, 404)
    if action.name == "answer" and not can_answer(console(request).client):
        message = "This version of cekura-worker can't answer jobs."
        return render(request, "error.html", {"page": "error", "title": "Not available", "message": message}, 404)
    question = ""
    if action.name == "answer":  # a key that isn't a job has no question; the action itself will say so
        c = console(request)
        job = reads.jobs(c.client.redis, c.settings, [job_id], {"question": TEXT_BYTES})[0]
        question = clip(job.fields.get("question", ""), DEFAULT_TEXT_CHARS, job.secrets)
    # The id as the page shows it (and its form sends back): an id quoting a secret is not echoed.
    context = {"page": "confirm", "action": action, "job_id": redact(job_id), "question": question}
    return render(request, "confirm.html", context)


async def act(request: Request) -> Response:
    """POST /actions/{action}: check the form, run the action, show what happened."""
    name = request.path_params["action"]
    form, verdict = await _check(request)
    job_id = _job_id(form.get("job", ""))
    if not verdict.allowed:
        return await _refused(request, verdict, name, job_id)
    if name not in ACTIONS or not job_id:
        return render(request, "error.html", {"page": "error", "title": "Not found", "message": "No such action."}, 404)
    done = await run_in_threadpool(perform, console(request).client, name, job_id, form.get("answer", ""))
    context = {"page": "done", "action": ACTIONS[name], "done": done}
    return render(request, "done.html", context, 200 if done.ok else 409)


def login_page(request: Request) -> Response:
    return render(request, "login.html", {"page": "login", "failed": False})


async def login_post(request: Request) -> Response:
    _, verdict = await _check(request)
    if not verdict.allowed:
        if verdict.reason == "token":
            await asyncio.sleep(DEFAULT_REFUSAL_DELAY_S)
            log.warning("console_login_refused", client=request.client.host if request.client else None)
            return render(request, "login.html", {"page": "login", "failed": True}, 403)
        return await _refused(request, verdict, "login")
    response = RedirectResponse("/", status_code=303)
    login(request, response)
    log.info("console_login", client=request.client.host if request.client else None)
    return response


async def logout(request: Request) -> Response:
    form = await _form(request)
    bid, _ = browser_id(request)
    if form is None or not _same_origin(request) or not console(request).guard.check_csrf(bid, form.get("csrf", "")):
        verdict = Verdict(False, "csrf", "The form's CSRF token is missing or wrong: reload the page and try again.")
        return await _refused(request, verdict, "logout")
    response = RedirectResponse("/", status_code=303)
    logout_browser(request, response)
    log.info("console_logout", client=request.client.host if request.client else None)
    return response
