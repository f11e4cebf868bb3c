"""Who may change what through the console, and what every response tells the browser: read-only without a token,
the token compared in constant time, CSRF tokens, same-origin forms, a strict Content-Security-Policy, a Host check,
and no secret in any page or log line."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest
from structlog.testing import capture_logs

from config.settings import load_settings
from tests.console.consoles import TOKEN, Served, hidden_fields
from tests.console.jobs import finish, make_job, progress
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
    # A browser with no id cookie at all (a cross-site form posts without it: SameSite=Lax) is refused too.
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
    wrong = console.login("not-the-token-at-all")
    assert wrong.status_code == 403 and "Refused: the console token is wrong." in wrong.text
    keyless = console.http.post("/login", data={"csrf": console.csrf(), "token": TOKEN})  # no script ran
    assert keyless.status_code == 400 and "sent no login key" in keyless.text
    assert console.session_cookie not in console.http.cookies
    logged_in = console.login()
    assert logged_in.status_code == 303
    cookie = logged_in.headers["set-cookie"]
    assert f"{console.session_cookie}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert TOKEN not in cookie and console.key not in str(logged_in.headers)
    confirm = console.get("/actions/cancel?job=first").text
    assert re.search(r'<label id="token-row" data-without-key hidden>', confirm) and "logged in" in confirm
    assert console.key not in confirm  # the page key is the page's to keep: the console never sends it
    without_key = console.act("cancel", "first", token=None, key="")
    assert without_key.status_code == 403 and "did not send this browser&#39;s login key" in without_key.text
    done = console.act("cancel", "first", token=None)
    assert done.status_code == 200 and "job first cancelled" in done.text
    # A session does not renew itself: a login takes the token, whatever the browser already holds.
    renew = {"csrf": console.csrf(), "token": "", "key": console.key}
    assert console.http.post("/login", data=renew).status_code == 403

    console.http.post("/logout", data={"csrf": console.csrf()})
    refused = console.act("cancel", "second", token=None)
    assert refused.status_code == 403
    assert _state(store, "second") == "queued"


def test_a_session_cookie_is_good_only_in_the_browser_and_console_that_issued_it(
    console: Served, serve: Callable[..., Served], store: JobStore
) -> None:
    make_job(store, "queued")
    assert console.login().status_code == 303
    session = console.http.cookies[console.session_cookie]
    restarted = serve()  # a new process key: every session of the old console lapses
    restarted.http.cookies.set(restarted.session_cookie, session)
    restarted.key = console.key
    assert restarted.act("cancel", "queued", token=None).status_code == 403
    thief = serve()
    thief.http.cookies.set(thief.session_cookie, session)  # without the browser id it was issued for
    thief.key = console.key
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
    browser, key = Guard.new_browser_id(), secrets.token_urlsafe(32)
    session = guard.new_session(browser, key)
    assert token not in session and token not in guard.csrf_token(browser) and key not in session
    assert guard.logged_in(browser, session) and guard.session_acts(browser, session, key)
    assert not guard.session_acts(browser, session, "") and not guard.session_acts(browser, session, key[:-1] + "x")
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
        pages.append(served.login().text)
    text = "\n".join(pages) + repr(logs)
    assert api_key not in text and TOKEN not in text
    assert "***" in served.get("/jobs/leaky").text


def test_a_session_ends_on_the_server_after_its_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = Guard(load_settings(cekura_console_token=secrets.token_urlsafe(24)).cekura_console_token)
    browser, key = Guard.new_browser_id(), secrets.token_urlsafe(32)
    session = guard.new_session(browser, key)
    assert guard.logged_in(browser, session)
    later = time.monotonic() + DEFAULT_SESSION_S + 1
    monkeypatch.setattr(guard_module.time, "monotonic", lambda: later)
    assert not guard.logged_in(browser, session) and not guard.session_acts(browser, session, key)


def test_another_server_on_this_host_holding_the_consoles_cookies_can_not_act(console: Served, store: JobStore) -> None:
    """Cookies ignore ports: once the operator has logged in, every request their browser makes to any other port of
    127.0.0.1 carries the console's cookies, whatever their names. The server on that port replays them from its own
    HTTP client, with whatever headers it likes, reading every page the cookies open."""
    make_job(store, "running")
    progress(store.client, console.settings, "running", "in_progress")
    assert console.login().status_code == 303
    sent_to_another_port = {cookie.name: cookie.value for cookie in console.http.cookies.jar}
    origin = {"origin": console.handle.url, "sec-fetch-site": "same-origin"}  # forged: it is not a browser
    with httpx.Client(
        base_url=console.handle.url, trust_env=False, cookies=sent_to_another_port, headers=origin
    ) as other:
        page = other.get("/actions/cancel?job=running")
        assert page.status_code == 200
        fields = hidden_fields(page.text)
        for data in (fields, {**fields, "job": "running"}, {**fields, "job": "running", "token": ""}):
            assert other.post("/actions/cancel", data=data).status_code == 403
        retried = other.post("/actions/retry", data={"csrf": fields.get("csrf", ""), "job": "running"})
        assert retried.status_code == 403
    assert _state(store, "running") == "polling"
    assert console.act("cancel", "running", token=None).status_code == 200  # the operator's own page still acts
    assert _state(store, "running") == "finished"


@pytest.mark.parametrize("scheme", ["https", "HTTP"])
def test_a_form_whose_origin_differs_only_in_scheme_or_case_is_judged_exactly(
    console: Served, store: JobStore, scheme: str
) -> None:
    make_job(store, "queued")
    own = urlsplit(console.handle.url)
    data = {**hidden_fields(console.get("/actions/cancel?job=queued").text), "token": TOKEN}
    response = console.http.post("/actions/cancel", data=data, headers={"origin": f"{scheme}://{own.netloc}"})
    assert response.status_code == (403 if scheme == "https" else 200)
