"""A console under test as a browser sees it: its URL and an HTTP client that keeps cookies, with the steps a
person takes (open a page, confirm an action). Imported by the fixtures and the tests alike, so both use the same
token."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from config.settings import Settings
from worker.console import ConsoleHandle

#: The console token of the tests' consoles.
TOKEN = "console-token-for-the-tests-8c1f4e"

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@dataclass
class Served:
    """A running console and a browser-like HTTP client (cookies kept) pointed at it."""

    handle: ConsoleHandle
    http: httpx.Client
    settings: Settings

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def csrf(self, path: str = "/login") -> str:
        """The CSRF token a page's forms carry (fetching the page sets this browser's id cookie)."""
        match = _CSRF.search(self.get(path).text)
        assert match, f"no CSRF token on {path}"
        return match[1]

    def act(self, action: str, job_id: str, token: str | None = TOKEN, **fields: str) -> httpx.Response:
        """Confirm `action` on `job_id` the way the confirmation page's form does."""
        data = {"csrf": self.csrf(f"/actions/{action}?job={job_id}"), "job": job_id, **fields}
        if token is not None:
            data["token"] = token
        return self.http.post(f"/actions/{action}", data=data)
