"""A console under test as a browser sees it: its URL and an HTTP client that keeps cookies, with the steps a
person takes (open a page, log in, confirm an action). Imported by the fixtures and the tests alike, so both use the
same token."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import httpx

from config.settings import Settings
from worker.console import ConsoleHandle
from worker.console.guard import ID_COOKIE, SESSION_COOKIE, cookie_name

#: The console token of the tests' consoles.
TOKEN = "console-token-for-the-tests-8c1f4e"

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


class _Inputs(HTMLParser):
    """The hidden inputs of one form of a page, as a browser would post them."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.inside = found.get("id") == self.form_id
        elif tag == "input" and self.inside and found.get("type") == "hidden" and "name" in found:
            self.fields[found["name"]] = found.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False


def hidden_fields(html: str, form_id: str = "confirm-form") -> dict[str, str]:
    """The hidden fields of the form `form_id` on a page (empty if it has no such form)."""
    parser = _Inputs(form_id)
    parser.feed(html)
    return parser.fields


@dataclass
class Served:
    """A running console and a browser-like HTTP client (cookies kept) pointed at it.

    `key`: what the console's script keeps in the page's storage once this browser logs in (see `login`)."""

    handle: ConsoleHandle
    http: httpx.Client
    settings: Settings
    key: str = ""

    @property
    def id_cookie(self) -> str:
        """The name of this console's browser id cookie (it carries the console's port)."""
        return cookie_name(ID_COOKIE, httpx.URL(self.handle.url).port)

    @property
    def session_cookie(self) -> str:
        """The name of this console's session cookie."""
        return cookie_name(SESSION_COOKIE, httpx.URL(self.handle.url).port)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def csrf(self, path: str = "/login") -> str:
        """The CSRF token a page's forms carry (fetching the page sets this browser's id cookie)."""
        match = _CSRF.search(self.get(path).text)
        assert match, f"no CSRF token on {path}"
        return match[1]

    def login(self, token: str = TOKEN) -> httpx.Response:
        """Log in as the login page's script does: a random key, made and kept in the page, goes with the token."""
        key = secrets.token_urlsafe(32)
        response = self.http.post("/login", data={"csrf": self.csrf(), "token": token, "key": key})
        if response.status_code == 303:
            self.key = key
        return response

    def act(self, action: str, job_id: str, token: str | None = TOKEN, **fields: str) -> httpx.Response:
        """Confirm `action` on `job_id` the way the confirmation page's form does (with the key, once logged in)."""
        page = self.get(f"/actions/{action}?job={job_id}").text
        data = {**(hidden_fields(page) or {"csrf": self.csrf()}), "job": job_id, **fields}
        if self.key and "key" not in fields:
            data["key"] = self.key
        if token is not None:
            data["token"] = token
        return self.http.post(f"/actions/{action}", data=data)
