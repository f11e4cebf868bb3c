"""Requests from another site: the console's cookies are SameSite=Lax, so a link from another site opens it logged
in; a request from another site that comes without them (a form another site posts, or a stricter browser) is
answered without a new browser id, which would replace the browser's own and end its login. And what the console
reflects from a request (a filter, a job id) is masked before it is cut.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.console.consoles import TOKEN, Served, hidden_fields
from tests.console.jobs import make_job
from tests.console.test_attack_credentials import Attacker, _login, chromium  # noqa: F401 (a fixture)
from worker.console.listing import Filters
from worker.store.jobs import JobStore

#: What a browser sends with a request from a page of another site.
CROSS_SITE = {"sec-fetch-site": "cross-site"}


def _state(store: JobStore, job_id: str) -> str:
    record = store.get(job_id)
    assert record is not None
    return record["state"]


def test_the_cookies_are_lax_and_http_only(console: Served) -> None:
    first = console.get("/")
    cookie = first.headers["set-cookie"]
    assert f"{console.id_cookie}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    logged_in = console.login()
    cookies = logged_in.headers.get_list("set-cookie")
    assert cookies and all("HttpOnly" in c and "SameSite=lax" in c for c in cookies)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/jobs"),
        ("GET", "/jobs/held-back"),
        ("GET", "/jobs/no-such-job"),
        ("GET", "/actions/cancel?job=held-back"),
        ("GET", "/login"),
        ("GET", "/nowhere"),
        ("POST", "/actions/cancel"),
        ("POST", "/login"),
        ("POST", "/logout"),
    ],
)
def test_a_request_from_another_site_without_cookies_leaves_the_login_alone(
    console: Served, store: JobStore, method: str, path: str
) -> None:
    """The browser held the logged-in cookies back (another site's form, or a browser stricter than Lax): the answer
    sets no cookie, so the operator's id, and the session bound to it, stay; the operator still acts."""
    make_job(store, "held-back")
    assert console.login().status_code == 303
    data = {"csrf": console.csrf(), "job": "held-back", "token": "", "key": ""}
    with httpx.Client(base_url=console.handle.url, trust_env=False) as without_cookies:
        kwargs: dict[str, Any] = {"data": data} if method == "POST" else {}
        answer = without_cookies.request(method, path, headers=CROSS_SITE, **kwargs)
    assert answer.status_code in (200, 403, 404), answer.status_code
    assert "set-cookie" not in answer.headers
    assert _state(store, "held-back") == "queued"
    assert console.act("cancel", "held-back", token=None).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"sec-fetch-site": "none"}, {"sec-fetch-site": "same-origin"}])
def test_a_first_visit_that_is_not_cross_site_gets_its_browser_id(console: Served, headers: dict[str, str]) -> None:
    """A typed address, a bookmark, the console's own links (or an older browser): the first page sets the id."""
    with httpx.Client(base_url=console.handle.url, trust_env=False) as browser:
        answer = browser.get("/login", headers=headers)
        assert f"{console.id_cookie}=" in answer.headers.get("set-cookie", "")


def test_a_browser_whose_first_visit_was_cross_site_gets_its_id_on_the_next_page(
    console: Served, store: JobStore
) -> None:
    make_job(store, "first-visit")
    with httpx.Client(base_url=console.handle.url, trust_env=False) as browser:
        assert "set-cookie" not in browser.get("/jobs/first-visit", headers=CROSS_SITE).headers
        page = browser.get("/actions/cancel?job=first-visit", headers={"sec-fetch-site": "same-origin"})
        assert console.id_cookie in browser.cookies
        fields = hidden_fields(page.text)
        done = browser.post("/actions/cancel", data={**fields, "token": TOKEN})
        assert done.status_code == 200, done.text[:300]
    assert _state(store, "first-visit") == "finished"


# == what a request sends is masked before it is cut, wherever it is shown ============================================


def test_the_jobs_filters_are_masked_before_they_are_cut(console: Served) -> None:
    """The console token is a registered secret: a filter quoting it (whole, or past the cut) is shown masked, in
    the form and in every link."""
    for name, value in (("prefix", TOKEN), ("kind", "x" * 50 + TOKEN), ("prefix", "p" * 240 + TOKEN)):
        page = console.get("/jobs", params={name: value}).text
        assert TOKEN[:12] not in page and "***" in page, name
    assert Filters.parse({"kind": "x" * 50 + TOKEN}).kind == "x" * 50 + "***"
    assert Filters.parse({"prefix": "a" * 250 + TOKEN}).prefix == "a" * 250 + "***"
    assert Filters.parse({"kind": "k" * 100}).kind == "k" * 64


@pytest.mark.parametrize("job_id", [TOKEN, "job-" + TOKEN, "j" * 250 + TOKEN])
def test_a_job_id_quoting_a_secret_is_masked_on_every_page_it_is_shown(console: Served, job_id: str) -> None:
    pages = [
        console.get(f"/jobs/{job_id}"),
        console.get("/actions/cancel", params={"job": job_id}),
        console.get("/actions/retry", params={"job": job_id}),
        console.http.post("/actions/cancel", data={"csrf": console.csrf(), "job": job_id}),
        console.http.post("/actions/retry", data={"csrf": "0" * 64, "job": job_id}),
    ]
    for page in pages:
        assert TOKEN[:12] not in page.text, (page.request.method, page.request.url.path, page.status_code)


# == in a real browser ================================================================================================


@pytest.mark.slow
def test_a_form_posted_from_another_site_does_not_log_the_operator_out(
    chromium: Any,  # noqa: F811 (the fixture)
    console: Served,
    store: JobStore,
) -> None:
    """A page on another site (`localhost`, cross-site to 127.0.0.1) posts the cancel form: Chromium sends no
    console cookie with it (Lax), the console refuses it and sets nothing, and the operator stays logged in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    make_job(store, "posted")
    _login(chromium, console.handle.url)
    elsewhere = Attacker("localhost")
    try:
        elsewhere.pages["/post"] = (
            f'<!doctype html><form id="f" method="post" action="{console.handle.url}/actions/cancel">'
            '<input name="job" value="posted"><input name="csrf" value="0"></form>'
            '<script>document.getElementById("f").submit();</script>'
        )
        chromium.get(elsewhere.url + "/post")
        WebDriverWait(chromium, 15).until(lambda b: b.current_url.startswith(console.handle.url))
        time.sleep(0.5)
        assert "Refused" in chromium.page_source or "CSRF" in chromium.page_source
    finally:
        elsewhere.stop()
    assert _state(store, "posted") == "queued"
    chromium.get(console.handle.url + "/")
    assert "badge ok" in chromium.page_source, "a form posted from another site logged the operator out"
    chromium.get(console.handle.url + "/actions/cancel?job=posted")
    chromium.find_element(By.ID, "confirm").click()  # the login still acts: its id and its page key are intact
    WebDriverWait(chromium, 15).until(lambda b: _state(store, "posted") == "finished")


@pytest.mark.slow
def test_a_link_from_another_site_opens_the_console_logged_in_and_its_form_acts(
    chromium: Any,  # noqa: F811 (the fixture)
    console: Served,
    store: JobStore,
) -> None:
    """A link on another site (a runbook, an alert) to a job's Cancel: Chromium sends the Lax cookies with the
    navigation, so the page it opens is this browser's, logged in, and its form acts with the page key."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    make_job(store, "linked")
    _login(chromium, console.handle.url)
    elsewhere = Attacker("localhost")
    try:
        target = f"{console.handle.url}/actions/cancel?job=linked"
        elsewhere.pages["/runbook"] = f'<!doctype html><a id="go" href="{target}">cancel it</a>'
        chromium.get(elsewhere.url + "/runbook")
        chromium.find_element(By.ID, "go").click()
        WebDriverWait(chromium, 15).until(lambda b: b.current_url.startswith(console.handle.url))
        WebDriverWait(chromium, 15).until(lambda b: b.find_elements(By.ID, "confirm"))
    finally:
        elsewhere.stop()
    assert "badge ok" in chromium.page_source, "the page a link from another site opened is not logged in"
    chromium.find_element(By.ID, "confirm").click()
    WebDriverWait(chromium, 15).until(lambda b: _state(store, "linked") == "finished")
