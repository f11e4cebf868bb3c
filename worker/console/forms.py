"""The pages that change something: an action's confirmation page and its POST, and logging in and out.

Every POST is checked the same way before anything else happens (see `worker.console.guard`): a form body
(`application/x-www-form-urlencoded`, small), from this very origin (`Origin` and `Sec-Fetch-Site`, when the browser
sends them), with this browser's CSRF token, and, to act, the console token (typed into the form, or a login
session: its cookie and its page key). A refusal changes nothing, says why, and is logged without any value the user
typed. A wrong token costs the sender `DEFAULT_REFUSAL_DELAY_S`, so guessing it is slow.

A retry done is answered with a redirect (303) to the new job's page, so reloading that page posts nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from worker.console import reads
from worker.console.actions import ACTIONS, can_answer, perform, retry_id, unknown_start
from worker.console.detail import DEFAULT_TEXT_CHARS, MAX_JOB_ID_CHARS
from worker.console.guard import Guard, Verdict
from worker.console.reads import SHORT_BYTES, TEXT_BYTES, clip
from worker.console.state import browser_id, console, login, render, session_cookie
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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, netloc: str) -> tuple[str, str, int | None]:
    """An origin as (scheme, host, port), the default port written out, so `http://h` is `http://h:80`."""
    parts = urlsplit(f"{scheme.lower()}://{netloc}")
    try:
        port = parts.port
    except ValueError:
        return ("", "", None)
    return parts.scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(parts.scheme)


def _same_origin(request: Request) -> bool:
    """False when the browser says the form came from anywhere but this very origin (scheme, host and port).

    `Origin: null` says nothing: browsers send it for every form POST of a page whose Referrer-Policy is
    `no-referrer`, as the console's are; `Sec-Fetch-Site` still tells. A request with neither header is not from a
    browser of today, and a client that isn't a browser can send any header: these checks stop other sites' pages,
    not programs (the console token and the session's page key do that)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or parts.path or parts.query or parts.username or parts.password:
        return False
    own = _origin(request.url.scheme, request.headers.get("host", ""))
    return own[1] != "" and _origin(parts.scheme, parts.netloc) == own


async def _check(request: Request, *, token_only: bool = False) -> tuple[dict[str, str], Verdict]:
    """The POST's form and whether it may act; `token_only`: only the token typed counts, not a session (a login
    must not renew a session without it)."""
    form = await _form(request)
    if form is None:
        return {}, Verdict(False, "form", "The request isn't a form this console sent: nothing was changed.")
    if not _same_origin(request):
        return form, Verdict(False, "csrf", "The form came from another origin: nothing was changed.")
    bid, _ = browser_id(request)
    session, key = ("", "") if token_only else (session_cookie(request), form.get("key", ""))
    verdict = console(request).guard.check_action(bid, session, form.get("csrf", ""), form.get("token", ""), key)
    return form, verdict


async def _refused(request: Request, verdict: Verdict, what: str, job_id: str = "") -> Response:
    log.warning(
        "console_action_refused",
        action=what,
        job_id=clip(job_id, MAX_JOB_ID_CHARS) or None,
        reason=verdict.reason,
        client=request.client.host if request.client else None,
    )
    if verdict.reason in ("token", "key"):
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
    c = console(request)
    # The id as the page shows it (and its form sends back): an id quoting a secret is not echoed.
    shown = redact(job_id)
    context: dict[str, Any] = {"page": "confirm", "action": action, "job_id": shown, "question": ""}
    if action.name == "answer":  # a key that isn't a job has no question; the action itself will say so
        job = reads.jobs(c.client.redis, c.settings, [job_id], {"question": TEXT_BYTES})[0]
        context["question"] = clip(job.fields.get("question", ""), DEFAULT_TEXT_CHARS, job.secrets)
    if action.name == "retry":
        fields = dict.fromkeys(("kind", "state", "start_sent", "progress_id"), SHORT_BYTES)
        record = reads.jobs(c.client.redis, c.settings, [job_id], fields)[0].fields
        context |= _retry_form(c.guard, shown, retry_id(c.client, shown), unknown_start(shown, record))
    return render(request, "confirm.html", context)


def _retry_form(guard: Guard, job_id: str, new_job_id: str, unknown: bool) -> dict[str, Any]:
    """What a retry's confirmation page adds: the new job's id, fixed now and signed, and whether the job's start
    may still be running at Cekura (then the form asks for a second, explicit confirmation)."""
    signature = guard.retry_signature(job_id, new_job_id) if new_job_id else ""
    return {"new_job_id": new_job_id, "new_job_sig": signature, "unknown_start": unknown}


async def act(request: Request) -> Response:
    """POST /actions/{action}: check the form, run the action, show what happened."""
    name = request.path_params["action"]
    form, verdict = await _check(request)
    job_id = _job_id(form.get("job", ""))
    if not verdict.allowed:
        return await _refused(request, verdict, name, job_id)
    if name not in ACTIONS or not job_id:
        return render(request, "error.html", {"page": "error", "title": "Not found", "message": "No such action."}, 404)
    c = console(request)
    new_job_id, force = "", False
    if name == "retry":
        new_job_id, force = form.get("new_job", ""), form.get("force") == "1"
        if not c.guard.check_retry(job_id, new_job_id, form.get("new_job_sig", "")):
            message = "This retry form was not drawn by this console: open the job's Retry again. Nothing was changed."
            return await _refused(request, Verdict(False, "retry_form", message), name, job_id)
    done = await run_in_threadpool(
        perform, c.client, name, job_id, form.get("answer", ""), new_job_id=new_job_id, force=force
    )
    if name == "retry" and done.ok:
        # Post/redirect/get: a reload of the new job's page posts nothing (a repeat of the post makes nothing new).
        return RedirectResponse(f"/jobs/{quote(done.new_job_id, safe='')}", status_code=303)
    if done.unknown_start:
        shown = redact(job_id)  # the form's id, drawn masked by `confirm`; whatever a request sends is masked here
        context = {"page": "confirm", "action": ACTIONS[name], "job_id": shown, "question": "", "refused": done}
        context |= _retry_form(c.guard, shown, new_job_id, True)
        return render(request, "confirm.html", context, 409)
    context = {"page": "done", "action": ACTIONS[name], "done": done}
    return render(request, "done.html", context, 200 if done.ok else 409)


def login_page(request: Request) -> Response:
    return render(request, "login.html", {"page": "login", "failed": False, "no_key": False})


async def login_post(request: Request) -> Response:
    """POST /login: the token typed (and checked as an action's is), with the page key the login page's script made;
    a session is the two together (see `worker.console.guard`)."""
    form, verdict = await _check(request, token_only=True)
    if not verdict.allowed:
        if verdict.reason == "token":
            await asyncio.sleep(DEFAULT_REFUSAL_DELAY_S)
            log.warning("console_login_refused", client=request.client.host if request.client else None)
            return render(request, "login.html", {"page": "login", "failed": True, "no_key": False}, 403)
        return await _refused(request, verdict, "login")
    key = form.get("key", "")
    if not Guard.plausible_key(key):
        log.warning("console_login_without_key", client=request.client.host if request.client else None)
        return render(request, "login.html", {"page": "login", "failed": False, "no_key": True}, 400)
    response = RedirectResponse("/", status_code=303)
    login(request, response, key)
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
