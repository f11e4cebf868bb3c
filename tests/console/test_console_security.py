"""Who may change what through the console, and what every response tells the browser: read-only without a token,
the token compared in constant time, CSRF tokens, same-origin forms, a strict Content-Security-Policy, a Host check,
and no secret in any page or log line."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

import httpx
import pytest
from structlog.testing import capture_logs

from config.settings import load_settings
from tests.console.consoles import TOKEN, Served
from tests.console.jobs import finish, make_job
from worker.console import guard as guard_module
from worker.console.forms import DEFAULT_MAX_FORM_BYTES
from worker.console.guard import DEFAULT_MIN_TOKEN_CHARS, DEFAULT_SESSION_S, Guard
from worker.console.headers import CONTENT_SECURITY_POLICY, allowed_hosts, host_name
from worker.errors import ConfigError
from worker.store.jobs import JobStore

STRICT_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _state(store: JobStore, job_id: str) -> str:
    record = store.get(job_id)
    assert record is not None
    return record["state"]


def test_every_response_carries_the_strict_policy(console: Served, store: JobStore) -> None:
    assert CONTENT_SECURITY_POLICY == STRICT_POLICY
    make_job(store, "j")
    responses = [console.get(path) for path in ("/", "/jobs", "/jobs/j", "/jobs/none", "/login", "/static/console.js")]
    responses += [console.get("/nowhere"), console.http.post("/actions/cancel", data={"job": "j"})]
    responses.append(console.http.put("/jobs"))
    with console.http.stream("GET", "/events") as stream:
        responses.append(stream)
    for response in responses:
        where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
        assert response.headers["content-security-policy"] == STRICT_POLICY, where
        assert response.headers["x-content-type-options"] == "nosniff", where
        assert response.headers["referrer-policy"] == "no-referrer", where
        assert response.headers["x-frame-options"] == "DENY", where
        assert "server" not in response.headers, where
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 200, 200, 404, 403, 405, 200]
    assert responses[-1].headers["content-type"].startswith("text/event-stream")
    assert all(r.headers["cache-control"] == "no-store" for r in responses if "/static/" not in str(r.url))


def test_without_a_token_the_console_is_read_only_and_says_so(serve: Callable[..., Served], store: JobStore) -> None:
    served = serve(token=None)
    make_job(store, "queued")
    make_job(store, "failed")
    finish(store, "failed", "failed")
    for path in ("/", "/jobs", "/jobs/queued"):
        assert "Read-only: CEKURA_CONSOLE_TOKEN is not set" in served.get(path).text
    assert "Cancel&hellip;" not in served.get("/jobs/queued").text
    assert "Retry&hellip;" not in served.get("/jobs/failed").text
    assert "<form" not in served.get("/actions/cancel?job=queued").text.split("<main>")[1]
    for action, job_id in (("cancel", "queued"), ("retry", "failed")):  # forged: no page offers a form to post
        data = {"csrf": "0" * 64, "job": job_id, "token": "anything-at-all-here"}
        refused = served.http.post(f"/actions/{action}", data=data)
        assert refused.status_code == 403
        assert "This console is read-only: CEKURA_CONSOLE_TOKEN is not set" in refused.text
    assert _state(store, "queued") == "queued"
    assert not store.client.exists(store.job_key("failed-retry-1"))
    assert served.http.post("/login", data={"csrf": "0" * 64, "token": ""}).status_code == 403
    assert "nothing to log in to" in served.get("/login").text


@pytest.mark.parametrize("token", [None, "", "wrong-token-of-the-same-shape", TOKEN[:-1], TOKEN + " "])
def test_an_action_without_the_right_token_is_refused_and_changes_nothing(
    console: Served, store: JobStore, token: str | None
) -> None:
    make_job(store, "queued")
    with capture_logs() as logs:
        refused = console.act("cancel", "queued", token=token)
    assert refused.status_code == 403
    assert "Refused: the console token is missing or wrong. Nothing was changed." in refused.text
    assert _state(store, "queued") == "queued"
    assert [(e["event"], e["reason"]) for e in logs if e["event"] == "console_action_refused"] == [
        ("console_action_refused", "token")
    ]
    if token:
        assert token not in str(logs) and token not in refused.text


def test_an_action_without_this_browsers_csrf_token_is_refused(
    console: Served, serve: Callable[..., Served], store: JobStore
) -> None:
    make_job(store, "queued")
    console.csrf()  # this browser has its id cookie
    for csrf in ("", "0" * 64, "not hex at all"):
        refused = console.http.post("/actions/cancel", data={"csrf": csrf, "job": "queued", "token": TOKEN})
        assert refused.status_code == 403
        assert "CSRF token is missing or wrong" in refused.text
    # Another browser's token (a page an attacker loaded themselves) is no good in this browser.
    other = httpx.Client(base_url=console.handle.url, trust_env=False)
    try:
        theirs = re.search(r'name="csrf" value="([0-9a-f]+)"', other.get("/login").text)
        assert theirs
        refused = console.http.post("/actions/cancel", data={"csrf": theirs[1], "job": "queued", "token": TOKEN})
        assert refused.status_code == 403
    finally:
        other.close()
    # A browser with no id cookie at all (a cross-site form posts without it: SameSite=Strict) is refused too.
    fresh = httpx.Client(base_url=console.handle.url, trust_env=False)
    try:
        assert (
            fresh.post("/actions/cancel", data={"csrf": "0" * 64, "job": "queued", "token": TOKEN}).status_code == 403
        )
    finally:
        fresh.close()
    assert _state(store, "queued") == "queued"


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "http://127.0.0.1.evil.example"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": "null", "sec-fetch-site": "cross-site"},
    ],
)
def test_a_form_posted_from_another_site_is_refused(console: Served, store: JobStore, headers: dict[str, str]) -> None:
    make_job(store, "queued")
    data = {"csrf": console.csrf("/actions/cancel?job=queued"), "job": "queued", "token": TOKEN}
    refused = console.http.post("/actions/cancel", data=data, headers=headers)
    assert refused.status_code == 403
    assert _state(store, "queued") == "queued"


def test_only_a_small_urlencoded_form_is_read(console: Served, store: JobStore) -> None:
    make_job(store, "queued")
    csrf = console.csrf("/actions/cancel?job=queued")
    as_json = console.http.post("/actions/cancel", json={"csrf": csrf, "job": "queued", "token": TOKEN})
    assert as_json.status_code == 403
    data = {"csrf": csrf, "job": "queued", "token": TOKEN, "x": "y" * (DEFAULT_MAX_FORM_BYTES + 1)}
    huge = console.http.post("/actions/cancel", data=data)
    assert huge.status_code in (403, 413)
    assert _state(store, "queued") == "queued"


def test_logging_in_lets_this_browser_act_until_it_logs_out(console: Served, store: JobStore) -> None:
    make_job(store, "first")
    make_job(store, "second")
    wrong = console.http.post("/login", data={"csrf": console.csrf(), "token": "not-the-token-at-all"})
    assert wrong.status_code == 403 and "Refused: the console token is wrong." in wrong.text
    logged_in = console.http.post("/login", data={"csrf": console.csrf(), "token": TOKEN})
    assert logged_in.status_code == 303
    cookie = logged_in.headers["set-cookie"]
    assert "cekura_console_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert TOKEN not in cookie
    confirm = console.get("/actions/cancel?job=first").text
    assert 'name="token"' not in confirm and "logged in" in confirm
    done = console.act("cancel", "first", token=None)
    assert done.status_code == 200 and "job first cancelled" in done.text

    console.http.post("/logout", data={"csrf": console.csrf()})
    refused = console.act("cancel", "second", token=None)
    assert refused.status_code == 403
    assert _state(store, "second") == "queued"


def test_a_session_cookie_is_good_only_in_the_browser_and_console_that_issued_it(
    console: Served, serve: Callable[..., Served], store: JobStore
) -> None:
    make_job(store, "queued")
    console.http.post("/login", data={"csrf": console.csrf(), "token": TOKEN})
    session = console.http.cookies["cekura_console_session"]
    restarted = serve()  # a new process key: every session of the old console lapses
    restarted.http.cookies.set("cekura_console_session", session)
    assert restarted.act("cancel", "queued", token=None).status_code == 403
    thief = serve()
    thief.http.cookies.set("cekura_console_session", session)  # without the browser id it was issued for
    assert thief.act("cancel", "queued", token=None).status_code == 403
    assert _state(store, "queued") == "queued"


def test_a_request_naming_another_host_is_refused(console: Served) -> None:
    assert console.get("/", headers={"host": "attacker.example"}).status_code == 421
    assert console.get("/", headers={"host": "localhost:8089"}).status_code == 200
    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("::") is None
    assert allowed_hosts("10.1.2.3") == {"127.0.0.1", "localhost", "::1", "10.1.2.3"}
    assert [host_name(h) for h in ("[::1]:8089", "::1", "Example.COM:80", "a.b")] == [
        "::1",
        "::1",
        "example.com",
        "a.b",
    ]


def test_a_console_token_too_short_to_be_safe_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=f"shorter than {DEFAULT_MIN_TOKEN_CHARS}"):
        Guard(load_settings(cekura_console_token="short").cekura_console_token)
    with pytest.raises(ConfigError, match="printable ASCII") as refused:
        Guard(load_settings(cekura_console_token="tab\tinside-a-long-token").cekura_console_token)
    assert "inside" not in str(refused.value)


def test_the_token_is_compared_in_constant_time_and_never_kept_in_a_cookie() -> None:
    token = secrets.token_urlsafe(24)
    guard = Guard(load_settings(cekura_console_token=token).cekura_console_token)
    assert guard.token_matches(token)
    assert not guard.token_matches(token[:-1]) and not guard.token_matches("")
    browser = Guard.new_browser_id()
    session = guard.new_session(browser)
    assert token not in session and token not in guard.csrf_token(browser)
    assert guard.logged_in(browser, session)
    assert not guard.logged_in(Guard.new_browser_id(), session)
    assert not guard.logged_in(browser, session[:-1] + ("0" if session[-1] != "0" else "1"))  # signed
    guard.end_session(browser, session)
    assert not guard.logged_in(browser, session)  # ended for good, not only forgotten by the browser
    assert not Guard(None).token_matches("") and Guard(None).read_only


def test_no_secret_appears_in_a_page_or_a_log_line(serve: Callable[..., Served], store: JobStore) -> None:
    api_key = f"cekura-key-{secrets.token_hex(8)}"
    served = serve(cekura_api_key=api_key)
    make_job(store, "leaky", metadata={"note": f"the key is {api_key}", "token": TOKEN})
    finish(store, "leaky", "failed", error=f"Cekura said {api_key!r} and {TOKEN}", result={"echo": api_key})
    with capture_logs() as logs:
        pages = [served.get(path).text for path in ("/", "/jobs", "/jobs/leaky", "/actions/retry?job=leaky")]
        pages.append(served.act("cancel", "leaky", token="a-guess-that-is-wrong").text)
        pages.append(served.act("retry", "leaky").text)
        pages.append(served.http.post("/login", data={"csrf": served.csrf(), "token": TOKEN}).text)
    text = "\n".join(pages) + repr(logs)
    assert api_key not in text and TOKEN not in text
    assert "***" in served.get("/jobs/leaky").text


def test_a_session_ends_on_the_server_after_its_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = Guard(load_settings(cekura_console_token=secrets.token_urlsafe(24)).cekura_console_token)
    browser = Guard.new_browser_id()
    session = guard.new_session(browser)
    assert guard.logged_in(browser, session)
    later = time.monotonic() + DEFAULT_SESSION_S + 1
    monkeypatch.setattr(guard_module.time, "monotonic", lambda: later)
    assert not guard.logged_in(browser, session)  # whatever the browser kept
