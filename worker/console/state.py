"""What every console request shares: the settings, the Redis client, the guard, the live feed and the templates;
and `render`, which fills in what every page shows (read-only or logged in, the CSRF token) and sets the browser id
cookie on a browser's first page.

The console's cookies are `SameSite=Lax`: a link from another site (a chat, a wiki, an alert) opens the console with
them, still logged in (a top-level GET, which changes nothing); no other site's POST, frame or script request
carries them, and acting never rests on them alone (see `worker.console.guard`). A request from another site
(`Sec-Fetch-Site: cross-site`) that brought no id cookie may be one the browser sent without the cookies it holds (a
form another site posted, a browser stricter than Lax): it gets its page but no new id cookie, which would replace
the browser's own and so end its login (the session is bound to the id). A browser without an id gets one from its
next request that isn't cross-site.

Templates are Jinja with autoescaping on for every template, so each value a page shows is HTML-escaped: a job id,
a metadata string or a Cekura answer holding markup is shown as text. Links carry values through `q`, which
percent-encodes every reserved character (Jinja's own `urlencode` keeps `/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from config.settings import Settings
from worker.client import Client
from worker.console.guard import DEFAULT_SESSION_S, ID_COOKIE, SESSION_COOKIE, Guard, cookie_name
from worker.console.live import Hub
from worker.redact import redact

#: Where the page templates are.
TEMPLATES = Path(__file__).with_name("templates")


@dataclass
class Console:
    settings: Settings
    client: Client
    guard: Guard
    hub: Hub
    templates: Jinja2Templates


def templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["redact"] = lambda value: redact(str(value))
    return Jinja2Templates(env=env)


def console(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


def cookie(request: Request, base: str) -> str:
    """The name of this console's cookie `base` (it carries the port the console listens on)."""
    server = request.scope.get("server")
    return cookie_name(base, server[1] if server else None)


def session_cookie(request: Request) -> str:
    """The value of this browser's session cookie ("" if it has none)."""
    return request.cookies.get(cookie(request, SESSION_COOKIE), "")


def browser_id(request: Request) -> tuple[str, bool]:
    """This browser's id from its cookie, or a new one (True) to set."""
    value = request.cookies.get(cookie(request, ID_COOKIE), "")
    if 0 < len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum():
        return value, False
    return Guard.new_browser_id(), True


def may_set_id(request: Request) -> bool:
    """Whether a request without an id cookie may be given one: not if it came from another site, which may mean the
    browser held its cookies back (a new id would replace the browser's own, and its session is bound to that id)."""
    return request.headers.get("sec-fetch-site", "").strip().lower() != "cross-site"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",  # sent on a top-level GET from another site (a link), never on its POSTs (see above)
        secure=request.url.scheme == "https",
    )


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    """The page `name` with `context` and what every page shows."""
    c = console(request)
    bid, new = browser_id(request)
    ctx = {
        "read_only": c.guard.read_only,
        "logged_in": not new and c.guard.logged_in(bid, session_cookie(request)),
        "csrf": c.guard.csrf_token(bid),
        "redis": c.settings.redis_url_redacted,
        "prefix": c.settings.cekura_key_prefix,
        "events_url": "",
        **context,
    }
    response = c.templates.TemplateResponse(request, name, ctx, status_code=status_code)
    if new and may_set_id(request):
        set_cookie(request, response, cookie(request, ID_COOKIE), bid)
    return response


def login(request: Request, response: Response, key: str) -> None:
    """Remember that this browser typed the token and keeps page key `key`: a new browser id (an id planted before
    the login is not the logged-in browser's) and a new session for it; a session the browser had ends."""
    guard = console(request).guard
    bid, _ = browser_id(request)
    guard.end_session(bid, session_cookie(request))
    fresh = Guard.new_browser_id()
    set_cookie(request, response, cookie(request, ID_COOKIE), fresh)
    set_cookie(request, response, cookie(request, SESSION_COOKIE), guard.new_session(fresh, key), DEFAULT_SESSION_S)


def logout(request: Request, response: Response) -> None:
    """End this browser's session, here (a copy of its cookie or key is no good from now on) and in the browser."""
    bid, _ = browser_id(request)
    console(request).guard.end_session(bid, session_cookie(request))
    response.delete_cookie(cookie(request, SESSION_COOKIE), path="/", httponly=True, samesite="lax")
