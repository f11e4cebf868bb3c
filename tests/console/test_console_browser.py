"""The console in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`), driven by
Selenium, against the whole service as processes: a redis-server with a password, the Cekura simulator,
`cekura-worker run` with progress events on, and `cekura-worker console` itself.

A person's path through it: find a running job, watch its stage change without reloading, be refused without the
token, cancel a job and see it end `cancelled`, retry a failed one, see hostile strings as text, an overview that
follows events live, and a login that acts without the token while another port holding its cookies can't.

The page changes under the tests (events replace a feed's lines): a list is read in one step (`Stack.texts`), a
click that navigates waits for the next page to have loaded (`Stack.follow`), and every wait is for a state. The
tests save screenshots of the overview and a job page (the README's, with CONSOLE_SCREENSHOTS=docs). They skip,
saying why, only where no Chromium or chromedriver is installed (`.ci/run` installs both).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.console.consoles import TOKEN, hidden_fields
from tests.console.jobs import HOSTILE_JOB_ID, HOSTILE_SCRIPT
from tests.support import RedisServer, free_port, kill_group, wait_for_line, without_service_env
from tests.system.conftest import System
from worker.client import Client

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
_MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"no headless browser here ({', '.join(_MISSING)} missing): "
        "apt-get install chromium chromium-driver to run the console's browser tests",
    ),
]

#: Where the screenshots go: `CONSOLE_SCREENSHOTS=docs make test` refreshes the README's; by default a git-ignored
#: folder, so a test run leaves the working tree clean.
DOCS = Path(__file__).resolve().parents[2] / os.environ.get("CONSOLE_SCREENSHOTS", "tests/console/screenshots")

#: How long each simulated Cekura job runs: long enough to watch an auto-fetch walk its stages.
SIM_DURATION_S = 8.0

#: Seconds any one thing in the browser may take to show.
WAIT_S = 20.0

_CEKURA_WORKER = str(Path(sys.executable).with_name("cekura-worker"))
_LISTENING = re.compile(r"cekura-worker console listening on (http://\S+)")


@dataclass
class Stack:
    system: System
    server: RedisServer
    client: Client
    url: str
    console_log: Path
    browser: WebDriver
    secrets: dict[str, str]
    #: Every page the browser showed, for the secret scan.
    pages: list[str] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.browser.get(self.url + path)
        self.pages.append(self.browser.page_source)

    def wait(self, condition: Callable[[WebDriver], object], what: str) -> None:
        WebDriverWait(self.browser, WAIT_S, poll_frequency=0.05).until(condition, f"timed out waiting for {what}")

    def text(self, element_id: str) -> str:
        """The element's text, once the page that holds it has loaded (a form's answer may still be on its way)."""
        self.wait(lambda b: b.find_elements(By.ID, element_id), f"#{element_id} on the page")
        return self.browser.find_element(By.ID, element_id).text

    def texts(self, css: str) -> list[str]:
        """The text of every element `css` selects, read in one step: the feed replaces its lines as events come, so
        a line found by one WebDriver call may be gone by the next (StaleElementReferenceException)."""
        found = self.browser.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]), (element) => element.innerText);", css
        )
        return [str(text) for text in found]

    def follow(self, by: str, value: str) -> None:
        """Click what leads to another page (a link, a form's button), and wait until that page has loaded."""
        old = self.browser.find_element(By.TAG_NAME, "html")
        self.browser.find_element(by, value).click()
        self.wait(lambda _: _gone(old), f"the page after {value} to come")
        self.wait(lambda b: b.execute_script("return document.readyState") == "complete", "the page to load")
        self.pages.append(self.browser.page_source)

    def click(self, element_id: str) -> None:
        self.follow(By.ID, element_id)

    def wait_live(self) -> None:
        self.wait(lambda b: b.find_element(By.ID, "live-status").text == "live", "the event stream to connect")


def _gone(element: WebElement) -> bool:
    """Whether `element` left the document: Chromium says so with StaleElementReferenceException, or, when asked
    while the next page replaces it, with "Node with given id does not belong to the document"."""
    try:
        element.is_enabled()
    except WebDriverException:  # StaleElementReferenceException is one
        return True
    return False


def _browser(profile: Path) -> WebDriver:
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
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console-browser")
    system = System(tmp)
    console: subprocess.Popen[bytes] | None = None
    browser: WebDriver | None = None
    try:
        hidden = {
            "Redis password": f"redis-pw-{secrets.token_hex(8)}",
            "CEKURA_API_KEY": f"cekura-key-{secrets.token_hex(8)}",
            "CEKURA_CONSOLE_TOKEN": TOKEN,
        }
        server = system.redis(password=hidden["Redis password"])
        sim = system.simulator("--duration", str(SIM_DURATION_S), api_key=hidden["CEKURA_API_KEY"])
        worker = system.worker(system.worker_env(server, sim, CEKURA_PROGRESS_EVENTS="true"), processes=1, wait=False)
        env = {
            **without_service_env("TEST_REDIS_URL"),
            "REDIS_URL": server.url,
            "CEKURA_API_KEY": hidden["CEKURA_API_KEY"],  # the console needs none, but an operator may set it
            "CEKURA_CONSOLE_TOKEN": TOKEN,
            "LOG_FORMAT": "json",
        }
        console_log = tmp / "console.log"
        with console_log.open("wb") as log:
            console = subprocess.Popen(
                [_CEKURA_WORKER, "console", "--port", str(free_port())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=tmp,
            )
        browser = _browser(tmp / "chromium-profile")
        match = wait_for_line(console, console_log, _LISTENING, 30)
        assert match, console_log.read_text()
        worker.wait_started(1)
        client = system.client(server)
        yield Stack(system, server, client, match[1], console_log, browser, hidden)
    finally:
        if browser is not None:
            browser.quit()
        if console is not None:
            kill_group(console)
        system.close()


@pytest.fixture(scope="module")
def failed_job(stack: Stack) -> str:
    """A job that fails (agent 901), submitted first so it has failed by the time a test wants to retry it."""
    return stack.client.submit("agent.auto_fetch", {"agent_id": 901}, job_id="doomed")


@pytest.fixture(scope="module")
def hostile_jobs(stack: Stack) -> dict[str, str]:
    """Jobs and requests carrying markup: in metadata, in Cekura's answer, in a job id only a stray writer could make,
    and in a rejected request's reason."""
    params = {"agent": 1, "metric_description": HOSTILE_SCRIPT, "eval_type": "boolean"}  # echoed in Cekura's answer
    echoed = stack.client.submit("metric.clean_description", params, job_id="echo", metadata={"note": HOSTILE_JOB_ID})
    with stack.server.client() as raw:
        stack.system.submit_via_stream(raw, {"kind": HOSTILE_SCRIPT, "params": {}})
        raw.hset(f"cekura:job:{HOSTILE_JOB_ID}", mapping={"kind": "agent.auto_fetch", "state": "queued"})
        raw.zadd("cekura:schedule", {HOSTILE_JOB_ID: time.time() * 1000 + 3_600_000})
    return {"echo": echoed}


def test_a_running_job_is_found_and_its_stage_changes_without_a_reload(
    stack: Stack, failed_job: str, hostile_jobs: dict[str, str]
) -> None:
    job_id = stack.client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="stages")
    link = f'#active-jobs tr[data-job-id="{job_id}"] a.job'

    def listed(browser: WebDriver) -> bool:
        browser.get(stack.url + "/jobs")  # the jobs page is not live: each look is a new page
        return stack.texts(link) == [job_id]

    stack.wait(listed, "the jobs page to list the job among the active ones")
    stack.follow(By.CSS_SELECTOR, link)
    stack.wait_live()
    stack.browser.execute_script("window.__samePage = true;")
    seen: list[str] = []

    def changed(browser: WebDriver) -> bool:
        stage = browser.find_element(By.ID, "job-stage").text
        if stage and stage not in seen:
            seen.append(stage)
        return len(seen) >= 2

    stack.wait(changed, "the stage to change")
    assert stack.browser.execute_script("return window.__samePage === true")  # never reloaded
    assert stack.text("job-state") == "polling"
    timeline = stack.text("timeline")
    assert re.search(r"progress Cekura status in_progress, stage \w+ \(poll \d+\)", timeline), timeline
    DOCS.mkdir(parents=True, exist_ok=True)
    stack.browser.set_window_size(1280, 1400)  # the record and the timeline in one picture
    stack.browser.save_screenshot(str(DOCS / "console-job.png"))
    stack.browser.set_window_size(1280, 1000)
    stack.pages.append(stack.browser.page_source)


def test_an_action_without_the_token_is_refused(stack: Stack) -> None:
    job_id = stack.client.submit("agent.auto_fetch", {"agent_id": 777}, job_id="kept")
    stack.open(f"/jobs/{job_id}")
    stack.click("cancel-link")
    stack.browser.find_element(By.ID, "token").send_keys("not-the-console-token")
    stack.click("confirm")
    assert stack.text("outcome") == "Refused: the console token is missing or wrong. Nothing was changed."
    stack.open(f"/jobs/{job_id}")
    assert stack.text("job-state") != "finished"
    assert (stack.client.status(job_id) or {})["state"] != "finished"


def test_cancelling_a_running_job_ends_it_cancelled(stack: Stack) -> None:
    job_id = stack.client.submit("agent.auto_fetch", {"agent_id": 777}, job_id="stuck")
    stack.system.wait_for(lambda: (stack.client.status(job_id) or {}).get("state") == "polling", timeout=WAIT_S)
    stack.open("/jobs?status=polling")
    stack.follow(By.CSS_SELECTOR, f'#active-jobs tr[data-job-id="{job_id}"] a.job')
    assert stack.text("job-state") == "polling"
    stack.click("cancel-link")
    assert "Cancel job stuck?" in stack.browser.find_element(By.TAG_NAME, "h1").text
    stack.browser.find_element(By.ID, "token").send_keys(TOKEN)
    stack.click("confirm")
    assert stack.text("outcome") == "job stuck cancelled"
    stack.follow(By.LINK_TEXT, job_id)
    assert stack.text("job-state") == "finished"
    assert stack.text("job-status") == "cancelled"
    assert stack.text("result-status") == "cancelled"


def test_retrying_a_failed_job_submits_it_again(stack: Stack, failed_job: str) -> None:
    assert stack.client.wait(failed_job, timeout=WAIT_S)["status"] == "failed"
    stack.open("/jobs?status=failed")
    stack.follow(By.LINK_TEXT, failed_job)
    assert stack.text("result-status") == "failed"
    assert "Simulated provider failure" in stack.text("result-error")
    stack.click("retry-link")
    assert stack.text("new-job-id") == f"{failed_job}-retry-1"
    stack.browser.find_element(By.ID, "token").send_keys(TOKEN)
    stack.click("confirm")  # answered with the new job's page (post, redirect, get)
    assert stack.browser.current_url == f"{stack.url}/jobs/{failed_job}-retry-1"
    assert stack.text("job-id") == f"{failed_job}-retry-1"
    assert stack.text("job-state") in ("queued", "starting", "polling", "finished")
    assert f"a retry of job {failed_job}" in stack.text("timeline")


def test_hostile_strings_are_shown_as_text(stack: Stack, hostile_jobs: dict[str, str]) -> None:
    assert stack.client.wait(hostile_jobs["echo"], timeout=WAIT_S)["status"] == "completed"

    def inert(where: str) -> None:
        browser = stack.browser
        assert browser.execute_script("return window.__pwned") is None, where
        assert browser.execute_script("return document.querySelectorAll('img, svg, iframe').length") == 0, where
        assert browser.execute_script("return document.scripts.length") == 1, where

    stack.open("/jobs")
    page = stack.browser.find_element(By.TAG_NAME, "main").text
    assert HOSTILE_JOB_ID in page  # among the active jobs
    assert f"unknown kind {HOSTILE_SCRIPT!r}" in page or HOSTILE_SCRIPT in page  # a rejected request's reason
    inert("/jobs")
    stack.follow(By.LINK_TEXT, HOSTILE_JOB_ID)
    assert stack.text("job-id") == HOSTILE_JOB_ID
    inert("the hostile job's page")
    stack.open(f"/jobs/{quote(hostile_jobs['echo'], safe='')}")
    assert HOSTILE_SCRIPT in stack.text("payload")  # Cekura's answer echoes the description
    assert f'"note": "{HOSTILE_JOB_ID}"' in stack.text("metadata")
    inert("the echo job's page")


def test_the_overview_shows_the_status_figures_and_follows_events_live(stack: Stack) -> None:
    stack.open("/")
    stack.wait_live()
    stack.browser.execute_script("window.__samePage = true;")
    stack.wait(lambda b: stack.texts('[data-figure="workers_live"]')[:1] == ["1"], "the one worker to be counted")
    job_id = stack.client.submit("agent.auto_fetch", {"agent_id": 6}, job_id="watched")
    stack.wait(lambda b: any(job_id in line for line in _feed_lines(b)), "a progress event of the new job in the feed")
    stack.wait(lambda b: len(_feed_lines(b)) >= 3, "a few more events in the feed")
    stack.wait(
        lambda b: stack.texts('[data-figure="in_flight"]')[:1] not in ([], [""], ["0"]),
        "the in-flight figure to count the new job",
    )
    outcomes = stack.browser.find_element(By.CSS_SELECTOR, 'table[data-table="outcomes"]').text
    assert "agent.auto_fetch" in outcomes and "metric.clean_description" in outcomes
    assert stack.browser.execute_script("return window.__samePage === true")
    DOCS.mkdir(parents=True, exist_ok=True)
    stack.browser.save_screenshot(str(DOCS / "console-overview.png"))
    stack.pages.append(stack.browser.page_source)


#: Replaces every line of the feed every few milliseconds, as a burst of events does.
_CHURN = """
const feed = document.getElementById("feed");
window.__churn = setInterval(() => {
  const lines = [1, 2, 3, 4, 5].map((n) => {
    const li = document.createElement("li");
    li.textContent = "burst " + n + " at " + performance.now();
    return li;
  });
  feed.replaceChildren(...lines);
}, 0);
"""


def _feed_lines(browser: WebDriver) -> list[str]:
    """The feed's lines, read in one step."""
    found = browser.execute_script("return Array.from(document.querySelectorAll('#feed li'), (li) => li.innerText);")
    return [str(line) for line in found]


def test_the_feed_is_read_whole_while_events_replace_its_lines(stack: Stack) -> None:
    stack.open("/")
    stack.browser.execute_script(_CHURN)
    try:
        for _ in range(50):  # an event may add a line of its own between two bursts
            assert sum(line.startswith("burst ") for line in _feed_lines(stack.browser)) == 5
    finally:
        stack.browser.execute_script("clearInterval(window.__churn)")


def test_no_secret_reaches_a_console_page_or_its_log(stack: Stack) -> None:
    stack.open("/login")
    stack.browser.find_element(By.ID, "token").send_keys(TOKEN)
    stack.click("login")
    assert stack.texts(".badge.ok") == ["logged in"]
    for path in ("/", "/jobs", "/jobs/doomed", "/jobs/stuck", "/actions/retry?job=doomed"):
        stack.open(path)
    log = stack.console_log.read_text()
    assert '"event":"console_started"' in log and "GET /jobs" in log
    writings = {"pages": "\n".join(stack.pages), "console log": log}
    leaks = [f"{name} in {where}" for where, text in writings.items() for name, v in stack.secrets.items() if v in text]
    assert not leaks, f"secrets leaked: {leaks}"
    stack.system.assert_log_shape([line for line in log.splitlines() if not line.startswith("cekura-worker console")])


def test_a_logged_in_browser_acts_without_the_token_and_another_port_holding_its_cookies_can_not(stack: Stack) -> None:
    if stack.texts(".badge.ok") != ["logged in"]:
        stack.open("/login")
        stack.browser.find_element(By.ID, "token").send_keys(TOKEN)
        stack.click("login")
    key = stack.browser.execute_script("return window.localStorage.getItem('cekura-console-page-key')")
    assert isinstance(key, str) and len(key) == 43  # kept by the page, for this origin only
    cookies = {cookie["name"]: cookie["value"] for cookie in stack.browser.get_cookies()}
    assert key not in str(cookies)
    job_id = stack.client.submit("agent.auto_fetch", {"agent_id": 777}, job_id="logged-in-cancel")
    stack.system.wait_for(lambda: (stack.client.status(job_id) or {}).get("state") == "polling", timeout=WAIT_S)

    # What the browser sends to any other port of 127.0.0.1, replayed from there: refused.
    with httpx.Client(base_url=stack.url, cookies=cookies, trust_env=False, timeout=WAIT_S) as other:
        fields = hidden_fields(other.get(f"/actions/cancel?job={job_id}").text)
        assert fields and fields.get("key") == ""
        assert other.post("/actions/cancel", data=fields, headers={"origin": stack.url}).status_code == 403
    assert (stack.client.status(job_id) or {})["state"] == "polling"

    stack.open(f"/jobs/{job_id}")
    stack.click("cancel-link")
    assert not stack.browser.find_element(By.ID, "token").is_displayed()  # the page key goes instead
    stack.click("confirm")
    assert stack.text("outcome") == f"job {job_id} cancelled"
    stack.follow(By.CSS_SELECTOR, "form[data-logout] button")
    assert stack.browser.execute_script("return window.localStorage.getItem('cekura-console-page-key')") is None
    stack.open(f"/actions/cancel?job={job_id}")
    assert stack.browser.find_element(By.ID, "token").is_displayed()
