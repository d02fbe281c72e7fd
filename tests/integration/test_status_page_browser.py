"""The token status page in a real headless Chromium, against the local stack.

Chromium is Debian's package (``/usr/bin/chromium``, or ``$CHROMIUM``), driven by Python's playwright
with no browser download: a missing Chromium fails these tests, it never skips them. The page is the
dev bundle served by ``local.ui_dev`` (the deployed page's HTML and CSS, ``@forge/bridge`` played by the
local stack), and each state is produced the way the other tests drive the stack: Forge emulator
tokens, the stack's clock moved on, the uninstall call. Expected times and durations are worked out
here, in Python, from the very ``/api/status`` answer the page received, and the browser runs in a
time zone of its own (UTC+05:30), so a page that showed UTC, or the browser's clock, would fail; every
time shown carries that zone ("08:30 (UTC+05:30)"), and its date when it is not the viewer's today.
The stack's clock is set to an instant each test chooses, never the machine's hour or date: the
viewer's morning by default, and late evenings (and New Year's Eve) where "until" or "last token" falls
on the viewer's next day or year, which the page must then show with its date. Where a state is hard
to reach through the stack (every job kind's result, failures of every kind), the stack's own
``/api/status`` answer is given to the page with those fields replaced (``open_page(..., edit=...)``).

``STATUS_PAGE_SCREENSHOTS=docs/screenshots`` writes each state's screenshot there (the README's).
The build check (the deployed bundle is what ``forge-app/src`` builds) runs ``npm ci`` in ``forge-app/``
when its lockfile changed, then esbuild: this is where ``make test`` builds the page.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from playwright.sync_api import BrowserContext, Page, Response, Route, sync_playwright

from forge_remote import clock
from forge_remote.budget.ledger import DynamoLedger, Refusal
from forge_remote.budget.meter import WAIT_REASONS
from forge_remote.budget.policy import hour_of, reset_at
from forge_remote.jobs.contract import JobRequest, send_job_requests
from local import serve
from local.forge_emulator import Site
from local.runtime import LocalRuntime
from local.ui_dev import (
    DEV_ACCOUNT_ID,
    INVOKE_PATH,
    STATIC_DIR,
    StatusPageServer,
    UiBuildError,
    build_dev_bundle,
    check_committed_bundle,
)
from tests.support import ROOT

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The viewer's time zone: half an hour off any whole-hour zone, and no daylight saving.
VIEWER_TZ = "Asia/Kolkata"
VIEWER_OFFSET = timezone(timedelta(hours=5, minutes=30))
VIEWER_ZONE = "UTC+05:30"  # how the page names it, after every time it shows
SCREENSHOTS = os.environ.get("STATUS_PAGE_SCREENSHOTS")
HOUR = 3600
# Instants the stack's clock is set to (the browser's own clock is the machine's: the page must not read it).
MORNING = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)  # 08:30 for the viewer
LATE_EVENING = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)  # 21:30: three hours on is the viewer's tomorrow
NEW_YEARS_EVE = datetime(2026, 12, 31, 16, 0, tzinfo=UTC)  # 21:30: three hours on is another year


# -- expected words, worked out independently of the page's JavaScript
def parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def local_hhmm(iso: str) -> str:
    return parse(iso).astimezone(VIEWER_OFFSET).strftime("%H:%M")


def same_local_day(iso: str, now: str) -> bool:
    return parse(iso).astimezone(VIEWER_OFFSET).date() == parse(now).astimezone(VIEWER_OFFSET).date()


def local_date_time(iso: str, now: str) -> str:
    """An instant on another day than ``now``, as en-GB shows it: "Sun 29 Nov, 07:19", or with the year
    if it is not ``now``'s, where en-GB puts a comma after the weekday: "Fri, 1 Jan 2027, 00:35"."""
    when = parse(iso).astimezone(VIEWER_OFFSET)
    if when.year != parse(now).astimezone(VIEWER_OFFSET).year:
        return when.strftime("%a, %-d %b %Y, %H:%M")
    return when.strftime("%a %-d %b, %H:%M")


def local_time(iso: str, now: str) -> str:
    """What the page must show for ``iso``: "14:32 (UTC+05:30)" on ``now``'s day for the viewer, else
    with the date: "Sun 29 Nov, 07:19 (UTC+05:30)"."""
    shown = local_hhmm(iso) if same_local_day(iso, now) else local_date_time(iso, now)
    return f"{shown} ({VIEWER_ZONE})"


def at(iso: str, now: str) -> str:
    """A time as the page gives it: "08:30 (UTC+05:30), 2 h 20 min from now"."""
    return f"{local_time(iso, now)}, {relative(iso, now)}"


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return "less than a minute"
    if s < HOUR:
        return f"{s // 60} min"
    if s < 24 * HOUR:
        hours, minutes = divmod(s // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(s // HOUR, 24)
    day_words = f"{days} day" if days == 1 else f"{days} days"
    return f"{day_words} {hours} h" if hours else day_words


def relative(iso: str, now: str) -> str:
    seconds = (parse(iso) - parse(now)).total_seconds()
    return f"{duration(seconds)} from now" if seconds > 0 else f"{duration(-seconds)} ago"


def jobs_until(status: dict[str, Any]) -> str:
    return f"Jobs can run until {at(status['jobs']['canRunUntil'], status['now'])}."


# An Atlassian account id, or a JWT (a FIT, an app or user token): never on the page, the viewer's own included.
IDENTIFYING = re.compile(r"\d{6}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[0-9a-f]{24}\b|eyJ")


# -- the browser and the page
@pytest.fixture(scope="module")
def dev_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_dev_bundle(tmp_path_factory.mktemp("ui-dev") / "status.js")
    except UiBuildError as exc:
        pytest.fail(f"could not build the status page's dev bundle: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"Chromium is not at {CHROMIUM}: the status page's browser tests need it. Install Debian's package "
            "(sudo apt-get install -y chromium) or point $CHROMIUM at a Chromium binary.",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a new, empty profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            locale="en-GB",
            timezone_id=VIEWER_TZ,
            viewport={"width": 900, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def instant(request: pytest.FixtureRequest) -> datetime:
    """When the test starts on the stack's clock (``indirect`` parametrisation picks others)."""
    chosen: datetime | timedelta = getattr(request, "param", MORNING)
    if isinstance(chosen, timedelta):  # relative to the machine's clock when the test starts
        return datetime.now(UTC) + chosen
    return chosen


@pytest.fixture
def rt(instant: datetime) -> Iterator[LocalRuntime]:
    with LocalRuntime() as runtime:
        clock.advance(instant.timestamp() - clock.now())  # back or forward: the runtime resets it on stop
        runtime.confluence.add_space("ENG", "Engineering")
        yield runtime


class Shown:
    """The page as the browser shows it, and the /api/status answer it was built from."""

    def __init__(self, page: Page, status: dict[str, Any], bridge_answers: list[Response]) -> None:
        self.page = page
        self.status = status
        self.bridge_answers = bridge_answers

    @property
    def state(self) -> str | None:
        return self.page.get_attribute("#verdict", "data-state")

    def text(self, selector: str) -> str:
        return " ".join(self.page.inner_text(selector).split())

    def cells(self, selector: str) -> list[list[str]]:
        """Each row of the table in ``selector``: its cells' text, blanks collapsed."""
        rows = self.page.locator(f"{selector} tbody tr")
        return [
            [" ".join(cell.split()) for cell in rows.nth(i).locator("td").all_inner_texts()]
            for i in range(rows.count())
        ]

    def assert_nothing_identifying(self) -> None:
        """No account id (not even the viewer's), token, FIT or request id anywhere in the page, shown or not."""
        html = self.page.content()
        assert not IDENTIFYING.search(html), IDENTIFYING.search(html)
        assert DEV_ACCOUNT_ID not in html
        for dead in self.status["jobs"]["deadLettered"]:
            assert not dead["requestId"] or dead["requestId"] not in html  # a short reference at most
        assert self.status["installationId"] not in html

    def screenshot(self, name: str) -> None:
        if SCREENSHOTS:
            directory = ROOT / SCREENSHOTS if not Path(SCREENSHOTS).is_absolute() else Path(SCREENSHOTS)
            directory.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(directory / f"status-{name}.png"), full_page=True)


@pytest.fixture
def open_page(browser: BrowserContext, dev_bundle: Path, rt: LocalRuntime) -> Iterator[Callable[..., Shown]]:
    """Open the status page for ``site``; ``app_token_lifetime_s=None``: the UI call hands over no app
    token, so the page shows what the rest of the stack left (Forge's UI calls would bring a fresh one)."""
    servers: list[StatusPageServer] = []
    pages: list[Page] = []

    def open_(
        site: Site,
        *,
        app_token_lifetime_s: float | None = None,
        bundle: Path | None = None,
        init_script: str = "",
        edit: Callable[[dict[str, Any]], None] | None = None,
    ) -> Shown:
        """``edit``: changes the stack's /api/status answer in place before the page gets it."""
        server = StatusPageServer(rt.forge, site, rt.gateway_url, bundle=bundle or dev_bundle)
        server.app_token_lifetime_s = app_token_lifetime_s
        server.start()
        servers.append(server)
        page = browser.new_page()
        pages.append(page)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        answers: list[Response] = []  # what the dev bridge gave the page, read once the page has settled
        page.on("response", lambda response: answers.append(response) if INVOKE_PATH in response.url else None)
        if init_script:
            page.add_init_script(init_script)
        if edit is not None:

            def edited(route: Route) -> None:
                if (route.request.post_data_json or {}).get("path") != "/api/status":
                    route.continue_()
                    return
                reply = route.fetch().json()
                edit(reply["body"])
                route.fulfill(status=200, content_type="application/json", body=json.dumps(reply))

            page.route(f"**{INVOKE_PATH}", edited)
        with page.expect_response(
            lambda r: INVOKE_PATH in r.url and (r.request.post_data_json or {}).get("path") == "/api/status"
        ) as answer:
            page.goto(server.page_url)
        reply = answer.value.json()
        assert reply["status"] == 200, reply
        # Selectors, not wait_for_function: the page's policy forbids the eval that one polls with.
        page.wait_for_selector("#verdict:not([data-state='loading'])")
        page.locator("#recent").get_by_text("Loading").wait_for(state="detached")
        # A content security policy violation (an inline script or style) is reported as a console error.
        assert problems == [], problems
        return Shown(page, reply["body"], answers)

    yield open_
    for page in pages:
        page.close()
    for server in servers:
        server.stop()


# -- driving the stack as Forge and the worker do
def forge_call(rt: LocalRuntime, site: Site, path: str, body: Any = None, token: str | None = None) -> int:
    response = rt.call("POST", path, rt.forge.headers(site, app_token=token), body if body is not None else {})
    assert response.status_code < 300, response.text
    return response.status_code


def install(rt: LocalRuntime, lifetime_s: float = 3 * HOUR) -> Site:
    site = rt.site()
    forge_call(rt, site, "/forge/lifecycle", rt.forge.installed_event(site), rt.forge.app_token(lifetime_s=lifetime_s))
    return site


def page_event(rt: LocalRuntime, site: Site, title: str, *, token: str | None) -> None:
    page_id = str(rt.confluence.add_page("ENG", title)["id"])
    forge_call(rt, site, "/forge/events", rt.forge.page_event(page_id, "ENG", title=title), token)


def enqueue(rt: LocalRuntime, site: Site, job: str, args: dict[str, Any]) -> None:
    request = JobRequest(job=job, installation_id=site.installation_id, args=args)
    send_job_requests(boto3.client("sqs"), rt.poller.queue_url, [request])  # as the functions send it


# -- the build
def test_the_deployed_bundle_is_what_the_sources_build() -> None:
    """static/status/status.js (what the manifest's resource serves) is rebuilt from forge-app/src and
    compared byte for byte: a source change without `npm run build` fails here."""
    try:
        check_committed_bundle()
    except UiBuildError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_the_deployed_bundle_uses_forges_bridge_not_the_dev_shim() -> None:
    bundle = (STATIC_DIR / "status.js").read_text(encoding="utf-8")
    assert INVOKE_PATH not in bundle  # the dev shim's endpoint
    assert "__bridge" in bundle  # @forge/bridge's own code, which talks to the bridge Forge puts in the frame


# -- the four states
@pytest.mark.parametrize(
    "instant", [MORNING, LATE_EVENING, NEW_YEARS_EVE], indirect=True, ids=["morning", "late-evening", "new-years-eve"]
)
def test_healthy_jobs_can_run_for_hours(rt: LocalRuntime, open_page: Callable[..., Shown], instant: datetime) -> None:
    site = install(rt)
    page_event(rt, site, "Release notes", token=rt.forge.app_token())  # a job that runs and leaves a result
    rt.settle()
    rt.advance(15 * 60)
    forge_call(rt, site, "/forge/keepalive", token=rt.forge.app_token(lifetime_s=3 * HOUR))
    rt.advance(30 * 60)

    shown = open_page(site)
    status = shown.status
    assert shown.state == "healthy"
    verdict = shown.text("#verdict")
    assert verdict == (
        f"Background jobs can run. {jobs_until(status)} "
        "Forge's hourly keepalive normally brings a fresh token before then: nothing needs doing."
    )
    assert re.search(r"2 h (19|20) min from now", verdict), verdict  # keepalive's 3 h, less 30 min and a job's 10
    assert f"until {local_time(status['jobs']['canRunUntil'], status['now'])}" in verdict
    until = status["jobs"]["canRunUntil"]
    assert same_local_day(until, status["now"]) == (instant == MORNING)  # the case each instant was chosen for
    if instant == NEW_YEARS_EVE:
        assert parse(until).astimezone(VIEWER_OFFSET).strftime(" %-d %b %Y, ") in verdict  # " 1 Jan 2027, "
    last = status["lastToken"]["at"]
    assert shown.text("#last-token") == (
        f"The last token arrived at {at(last, status['now'])}, with Forge's hourly keepalive."
    )
    assert "30 min ago" in shown.text("#last-token")
    assert shown.text("#waiting") == "No job is waiting for a token."
    assert shown.text("#dead-letters") == "No job of this site has failed for good."
    [result] = status["jobs"]["lastResults"]
    assert shown.text("#last-results thead") == "What ran Finished Outcome"
    assert shown.cells("#last-results") == [
        [
            "Page snapshot Saves a copy of a page after it is created or changed.",
            at(result["finishedAt"], status["now"]),
            f"Done. Saved a copy of version {result['summary']['version']} of page {result['summary']['pageId']}. "
            f"It used {result['summary']['points']} points of Atlassian's hourly rate limit.",
        ]
    ]
    installed = status["installation"]["installedAt"]
    assert shown.text("#installation") == f"Installed at {at(installed, status['now'])}."
    assert (
        shown.text("#checked-at") == f"Checked at {local_time(status['now'], status['now'])}, by the backend's clock."
    )
    [recent] = shown.page.locator("#recent li").all_inner_texts()  # the user's own call, as that user
    assert re.fullmatch(rf"Release notes in ENG, changed at \d\d:\d\d \({re.escape(VIEWER_ZONE)}\)", recent), recent
    assert shown.page.is_visible("#digest")
    shown.assert_nothing_identifying()
    assert shown.page.title() == "Background jobs and Forge tokens"
    assert len(shown.bridge_answers) == 2  # the status and the recent pages
    for answer in shown.bridge_answers:  # the page gets what Forge's bridge gives it: never a FIT or a token
        assert "eyJ" not in answer.text()
    if instant == MORNING:
        shown.screenshot("healthy")


@pytest.mark.parametrize("instant", [MORNING, LATE_EVENING], indirect=True, ids=["morning", "late-evening"])
def test_expiring_soon_jobs_can_run_for_less_than_an_hour(
    rt: LocalRuntime, open_page: Callable[..., Shown], instant: datetime
) -> None:
    site = install(rt, lifetime_s=3 * HOUR)
    rt.advance(2 * HOUR + 20 * 60)  # 40 min left on the token; a job needs 10 of them

    shown = open_page(site)
    assert shown.state == "expiring"
    verdict = shown.text("#verdict")
    assert verdict == (
        f"Background jobs can run, but not for long. {jobs_until(shown.status)} Forge hands the app a fresh token "
        "with each of its calls: the hourly keepalive, a page being created or changed, or someone opening this "
        "page. If none comes before then, jobs wait for the next token and run when it arrives: none is lost."
    )
    assert re.search(r"(29|30) min from now", verdict), verdict
    now = shown.status["now"]
    assert same_local_day(shown.status["jobs"]["canRunUntil"], now) == (instant == MORNING)
    if instant == LATE_EVENING:  # 22:00 for the viewer: jobs can run until tomorrow, said with its date
        assert f"until {local_date_time(shown.status['jobs']['canRunUntil'], now)} ({VIEWER_ZONE})," in verdict
    last = shown.status["lastToken"]["at"]
    assert shown.text("#last-token") == (
        f"The last token arrived at {local_time(last, now)}, 2 h 20 min ago, when the app was installed or upgraded."
    )
    shown.assert_nothing_identifying()
    if instant == MORNING:
        shown.screenshot("expiring-soon")


def test_no_token_jobs_wait_and_dead_letters_show_their_reasons(
    rt: LocalRuntime, open_page: Callable[..., Shown]
) -> None:
    site = install(rt, lifetime_s=3 * HOUR)
    rt.advance(4 * HOUR)  # the token expired and no Forge call brought another
    page_event(rt, site, "Written during the lull", token=None)
    page_event(rt, site, "Also written during the lull", token=None)
    enqueue(rt, site, "page-snapshots", {"pageId": "1"})  # no such job kind: straight to the DLQ
    rt.settle()

    shown = open_page(site)
    status = shown.status
    assert shown.state == "no-token"
    assert status["jobs"]["waitingForToken"] == 2
    verdict = shown.text("#verdict")
    stopped = status["lastToken"]["usableByJobsUntil"]  # the install's 3 h token, less the 10 min a job needs
    assert relative(stopped, status["now"]) == "1 h 10 min ago"
    assert verdict == (
        f"Background jobs cannot run now. Jobs stopped being able to run at {at(stopped, status['now'])}: "
        "the last token from Forge no longer lasts the 10 min a job needs. Jobs wait, and run as soon as a token "
        "arrives: none is lost. Forge hands the app a fresh token with each of its calls: the hourly keepalive, "
        "a page being created or changed, or someone opening this page."
    )
    assert shown.text("#waiting") == (
        "2 jobs are waiting for a token. They run within seconds of the next token Forge delivers, "
        "and are not lost if none comes soon."
    )
    assert "4 h ago, when the app was installed or upgraded." in shown.text("#last-token")
    [dead] = status["jobs"]["deadLettered"]
    assert "page-snapshots" in dead["reason"]  # the worker's own words say which job kind is unknown
    assert (
        shown.text("#dead-letters > p") == "1 job has failed and will not be tried again. Other jobs are not affected."
    )
    assert shown.text("#dead-letters thead") == "What failed Why What you can do"
    assert shown.cells("#dead-letters") == [
        [
            f"Page snapshots Failed at {at(dead['at'], status['now'])}.",
            "The app has no job of this kind, so it could not run it. Details for the vendor",
            "It will not be retried, and nothing on this site can fix it: contact the app's vendor and quote "
            f"the reference {dead['requestId'][:8]}.",
        ]
    ]
    assert dead["reason"] not in shown.text("#dead-letters")  # the worker's words are folded away...
    shown.page.click("#dead-letters summary")
    assert shown.text("#dead-letters details") == f"Details for the vendor {dead['reason']}"  # ...until asked for
    shown.page.click("#dead-letters summary")
    assert shown.text("#last-results") == "No job has finished for this site yet."
    shown.assert_nothing_identifying()
    shown.screenshot("no-token")

    # The hourly keepalive brings a token: the parked jobs run, and "Check again" shows it.
    forge_call(rt, site, "/forge/keepalive", token=rt.forge.app_token(lifetime_s=3 * HOUR))
    rt.settle()
    with shown.page.expect_response(lambda r: INVOKE_PATH in r.url):
        shown.page.click("#refresh")
    shown.page.wait_for_selector("#verdict[data-state='healthy']")
    assert shown.text("#waiting") == "No job is waiting for a token."
    assert shown.text("#last-token").endswith("less than a minute ago, with Forge's hourly keepalive.")
    assert shown.page.locator("#last-results tbody tr").count() == 1  # one job kind: both snapshots ran
    assert shown.page.locator("#dead-letters tbody tr").count() == 1
    assert shown.text("#verdict").startswith("Background jobs can run. Jobs can run until ")


def test_jobs_waiting_for_atlassians_rate_limit_say_why_and_until_when(
    rt: LocalRuntime, open_page: Callable[..., Shown]
) -> None:
    site = install(rt)
    now = clock.now()
    # What a global-quota 429 leaves in the ledger: every installation's jobs wait for the reset.
    ledger = DynamoLedger(boto3.client("dynamodb"), rt.stack.physical["AppTable"])
    ledger.pause(hour_of(now), None, reset_at(now), Refusal.FLEET_PAUSED.value)

    shown = open_page(site)
    waiting = shown.status["jobs"]["waitingForQuota"]
    assert waiting == {"reason": WAIT_REASONS[Refusal.FLEET_PAUSED], "until": clock.iso(reset_at(now))}
    text = shown.text("#waiting")
    assert text.startswith("No job is waiting for a token. Background jobs are waiting for Atlassian's rate limit: ")
    assert f"{WAIT_REASONS[Refusal.FLEET_PAUSED]}. They resume from " in text
    assert text.endswith(", and none is lost.")


def test_uninstalled(rt: LocalRuntime, open_page: Callable[..., Shown]) -> None:
    site = install(rt)
    page_event(rt, site, "Release notes", token=rt.forge.app_token())
    rt.settle()
    rt.advance(2 * 24 * HOUR)
    forge_call(rt, site, "/forge/uninstall")

    shown = open_page(site)
    assert shown.status["installation"]["status"] == "uninstalled"
    assert shown.state == "uninstalled"
    verdict = shown.text("#verdict")
    assert verdict.startswith("The app is uninstalled from this site.")
    assert "no background job runs for this site" in verdict
    assert verdict == (
        "The app is uninstalled from this site. Its tokens were deleted when it was uninstalled, so no background "
        "job runs for this site and none can be requested. Installing the app again starts afresh."
    )
    installed = shown.status["installation"]["installedAt"]
    assert shown.text("#installation") == (
        f"Uninstalled. It had been installed at {local_date_time(installed, shown.status['now'])} ({VIEWER_ZONE}), "
        "2 days ago."
    )
    assert shown.text("#last-token") == "None kept: the tokens were deleted when the app was uninstalled."
    # No job can be requested for an uninstalled site: the digest's section is not shown at all.
    assert not shown.page.is_visible("#digest")
    assert "Request the digest" not in shown.page.inner_text("body")
    assert "Run the space digest now" not in shown.page.inner_text("body")
    shown.assert_nothing_identifying()
    shown.screenshot("uninstalled")


# -- every job kind's result, and failures of each kind, in words (the stack's answer, these fields given)
OTHER_ACCOUNT = "557058:aaaaaaaa-0000-4000-8000-000000000001"  # someone else's: never on the viewer's page
GIVEN_RESULTS = [  # job, finished this long before now, summary: newest first, as the route sorts them
    ("space-digest", 2 * HOUR, {"spaces": 3, "pages": 12, "truncated": 1, "truncatedSpaces": ["ENG"], "points": 7}),
    ("user-digest", 3 * HOUR, {"pages": 0, "truncated": False}),
    ("personal-data-report", 26 * HOUR, {"accounts": 12, "reports": 1, "closed": 2, "updated": 1, "erasedItems": 7}),
    ("page-snapshot", 27 * HOUR, {"pageId": 65540, "found": False}),
    (
        "custom-export",  # a kind the page does not know: its fields labelled in words, internal ones left out
        28 * HOUR,
        {
            "rowsWritten": 40,
            "dryRun": False,
            "spaces": ["ENG", "OPS"],
            "note": f"asked by {OTHER_ACCOUNT}",
            "requestId": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "accountId": OTHER_ACCOUNT,
            "_cursor": "b64:eyJhZnRlciI6MTJ9",
            "nested": {"truncated": {}},
            OTHER_ACCOUNT: 3,  # keyed by someone's account id: left out, as its value would say nothing
        },
    ),
    ("nightly-sync", 29 * HOUR, {"_truncated": True}),  # what the worker keeps of a summary too long to keep
]
GIVEN_DEAD = [  # job, failed this long before now, the worker's reason, request id
    ("space-digest", 10 * 60, "no token stored (gave up after 5 attempts)", "a1b2c3d4e5f60718293a4b5c6d7e8f90"),
    (
        "page-snapshot",
        3 * HOUR,
        "job page-snapshot raised KeyError at page_snapshot.py:48 (gave up after 5 attempts)",
        "b2c3d4e5f60718293a4b5c6d7e8f90a1",
    ),
    ("user-digest", 30 * HOUR, f"Confluence HTTP 403 for {OTHER_ACCOUNT}", "c3d4e5f60718293a4b5c6d7e8f90a1b2"),
    ("custom-export", 31 * HOUR, "bad arguments for job custom-export: missing argument 'table'", "d4e5f6071829"),
    ("", None, "", ""),  # nothing recorded but that it failed
]


def ago(now: str, seconds: float) -> str:
    return clock.iso(parse(now).timestamp() - seconds)


def given_jobs(status: dict[str, Any]) -> None:
    now = status["now"]
    status["jobs"]["lastResults"] = [
        {"job": job, "finishedAt": ago(now, seconds), "summary": summary} for job, seconds, summary in GIVEN_RESULTS
    ]
    status["jobs"]["deadLettered"] = [
        {"job": job, "at": ago(now, seconds) if seconds else None, "reason": reason, "requestId": request_id}
        for job, seconds, reason, request_id in GIVEN_DEAD
    ]


def test_each_job_kinds_last_result_and_each_failure_in_words(
    rt: LocalRuntime, open_page: Callable[..., Shown]
) -> None:
    shown = open_page(install(rt), edit=given_jobs)
    now = shown.status["now"]
    finished = [at(result["finishedAt"], now) for result in shown.status["jobs"]["lastResults"]]
    assert not same_local_day(shown.status["jobs"]["lastResults"][2]["finishedAt"], now)  # yesterday's: dated
    assert finished[2].startswith(local_date_time(shown.status["jobs"]["lastResults"][2]["finishedAt"], now))
    assert shown.cells("#last-results") == [
        [
            "Space digest Lists the pages changed lately in each space.",
            finished[0],
            "Done. Listed 12 changed pages in 3 spaces. "
            "The list was shortened for 1 space (ENG): too many pages to keep them all. "
            "It used 7 points of Atlassian's hourly rate limit.",
        ],
        [
            "Personal digest Lists the pages one person can see that changed lately, for that person.",
            finished[1],
            "Done. No page had changed.",
        ],
        [
            "Personal data report Tells Atlassian which people's accounts the app holds data about, as Atlassian "
            "requires, and acts on the answer.",
            finished[2],
            "Done. Reported 12 accounts to Atlassian (1 report sent). Closed accounts whose data was erased: 2 "
            "(7 items erased). Updated accounts whose stored profile details were dropped: 1.",
        ],
        [
            "Page snapshot Saves a copy of a page after it is created or changed.",
            finished[3],
            "Done. Nothing was saved: page 65540 was not found (deleted since, or not visible to the app).",
        ],
        ["Custom export", finished[4], "Done. Rows written 40 Dry run no Spaces ENG, OPS Note asked by [an account]"],
        ["Nightly sync", finished[5], "Done. (Result shortened: its details were too long to keep.)"],
    ]
    results = shown.text("#last-results")
    for internal in ("truncated {}", "_truncated", "_cursor", "Cursor", "Request id", "Account", "Nested", "{"):
        assert internal not in results

    dead = shown.status["jobs"]["deadLettered"]
    assert shown.text("#dead-letters > p") == (
        "5 jobs have failed and will not be tried again; newest first. Other jobs are not affected."
    )
    vendor = "contact the app's vendor and quote the reference"
    assert shown.cells("#dead-letters") == [
        [
            f"Space digest Failed at {at(dead[0]['at'], now)}.",
            "No usable token from Forge came in time for it to run. The app tried 5 times, then stopped. "
            "Details for the vendor",
            f"It will not be retried. If it happens again, {vendor} a1b2c3d4.",
        ],
        [
            f"Page snapshot Failed at {at(dead[1]['at'], now)}.",
            "An error in the app stopped it. The app tried 5 times, then stopped. Details for the vendor",
            f"It will not be retried, and nothing on this site can fix it: {vendor} b2c3d4e5.",
        ],
        [
            f"Personal digest Failed at {at(dead[2]['at'], now)}.",
            "Confluence refused the app access to what it needed. Details for the vendor",
            "It will not be retried. Check that the app can still see the space or page it works on; "
            f"if it can, {vendor} c3d4e5f6.",
        ],
        [
            f"Custom export Failed at {at(dead[3]['at'], now)}.",
            "It was asked to run with settings it cannot use. Details for the vendor",
            f"It will not be retried, and nothing on this site can fix it: {vendor} d4e5f607.",
        ],
        [
            "Unnamed job When it failed is not recorded.",
            "It failed in a way that trying again would not fix.",
            "It will not be retried, and nothing on this site can fix it: contact the app's vendor.",
        ],
    ]
    for summary in shown.page.locator("#dead-letters summary").all():
        summary.click()
    details = shown.page.locator("#dead-letters details").all_inner_texts()
    assert [" ".join(d.split()) for d in details] == [
        f"Details for the vendor {GIVEN_DEAD[0][2]}",
        f"Details for the vendor {GIVEN_DEAD[1][2]}",
        "Details for the vendor Confluence HTTP 403 for [an account]",
        f"Details for the vendor {GIVEN_DEAD[3][2]}",
    ]
    for word in ("redriven", "dead-letter", "Request id"):
        assert word not in shown.page.inner_text("body")
    shown.assert_nothing_identifying()


def test_a_site_administrator_requests_the_digest(rt: LocalRuntime, open_page: Callable[..., Shown]) -> None:
    shown = open_page(install(rt))
    assert shown.page.is_enabled("#digest")
    shown.page.click("#digest")  # Confluence, asked as the viewer, says they are no administrator
    shown.page.locator("#digest-result").get_by_text("administrator").wait_for()
    assert shown.text("#digest-result") == "Only a Confluence administrator of this site may request jobs."
    rt.confluence.set_admins({DEV_ACCOUNT_ID})
    shown.page.click("#digest")
    shown.page.locator("#digest-result").get_by_text("Requested").wait_for()
    assert shown.text("#digest-result") == (
        'Requested. The digest runs in the background; its result shows under "Last result of each job" '
        'once it has run (press "Check again").'
    )
    shown.assert_nothing_identifying()  # the answer's request id and requestedBy are not shown


# -- the deployed bundle, with Forge's side of the bridge
# What Forge's host page does for the frame: answer @forge/bridge's callBridge('invoke', ...). Here it
# hands the call to the dev bridge's endpoint, so the deployed bundle runs against the local stack.
HOST_BRIDGE = """
globalThis.__bridgeCalls = [];
globalThis.__bridge = {
  callBridge: async (name, payload) => {
    globalThis.__bridgeCalls.push([name, payload.invokeType, payload.path, payload.method]);
    const response = await fetch('INVOKE_PATH', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ path: payload.path, method: payload.method, headers: payload.headers, body: payload.body }),
    });
    return { success: true, payload: await response.json() };
  },
};
""".replace("INVOKE_PATH", INVOKE_PATH)


def test_the_deployed_bundle_calls_forge_through_the_bridge(rt: LocalRuntime, open_page: Callable[..., Shown]) -> None:
    site = install(rt, lifetime_s=HOUR)
    # The UI call hands over a fresh app token, as Forge's do: jobs can run on it, and it is the last one.
    shown = open_page(site, app_token_lifetime_s=3 * HOUR, bundle=STATIC_DIR / "status.js", init_script=HOST_BRIDGE)
    calls = shown.page.evaluate("globalThis.__bridgeCalls")
    assert ["invoke", "ui-remote-fetch", "/api/status", "GET"] in calls
    assert ["invoke", "ui-remote-fetch", "/api/pages/recent?days=7&limit=20", "GET"] in calls
    assert shown.state == "healthy"
    assert shown.text("#last-token").endswith("less than a minute ago, when someone opened the app's page.")


# -- the dev bridge endpoint itself
def test_the_dev_bridge_answers_its_own_page_only(rt: LocalRuntime, dev_bundle: Path) -> None:
    site = install(rt)
    server = StatusPageServer(rt.forge, site, rt.gateway_url, bundle=dev_bundle)
    server.start()
    try:
        call = {"path": "/api/status", "method": "GET"}
        own = requests.post(server.url + INVOKE_PATH, json=call, headers={"Origin": server.url}, timeout=30)
        assert own.status_code == 200
        assert own.json()["status"] == 200
        assert "eyJ" not in own.text
        elsewhere = requests.post(
            server.url + INVOKE_PATH, json=call, headers={"Origin": "https://evil.example"}, timeout=30
        )
        assert elsewhere.status_code == 403
        cross_site = requests.post(
            server.url + INVOKE_PATH, json=call, headers={"Sec-Fetch-Site": "cross-site"}, timeout=30
        )
        assert cross_site.status_code == 403
        form = requests.post(
            server.url + INVOKE_PATH, data=json.dumps(call), headers={"Content-Type": "text/plain"}, timeout=30
        )
        assert form.status_code == 415
        for bad in ({"path": "https://elsewhere/api", "method": "GET"}, {"path": "/api/status", "method": "TRACE"}):
            assert requests.post(server.url + INVOKE_PATH, json=bad, timeout=30).status_code == 400
        assert requests.get(server.url + "/status/../../template.yaml", timeout=30).status_code == 404
        page = requests.get(server.page_url, timeout=30)
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    finally:
        server.stop()


# Relative to the machine's clock on purpose: the one instant that must differ from the browser's.
@pytest.mark.parametrize("instant", [timedelta(hours=5)], indirect=True, ids=["hours-ahead"])
def test_times_are_the_backends_not_the_browsers(rt: LocalRuntime, open_page: Callable[..., Shown]) -> None:
    """The stack's clock is hours ahead of the browser's: durations follow the backend's ``now``."""
    site = install(rt, lifetime_s=3 * HOUR)
    rt.advance(2 * HOUR)
    shown = open_page(site)
    now = parse(shown.status["now"])
    assert now - datetime.now(UTC) > timedelta(hours=6, minutes=59)
    assert re.search(r"(49|50) min from now", shown.text("#verdict"))
    assert (
        shown.text("#checked-at")
        == f"Checked at {local_hhmm(shown.status['now'])} ({VIEWER_ZONE}), by the backend's clock."
    )


def test_make_local_serves_the_page_for_the_site_the_forge_cli_acts_for(
    tmp_path: Path, browser: BrowserContext
) -> None:
    """The wiring ``python -m local.serve`` uses: the page shows the emulated site the CLI's commands act for."""
    with LocalRuntime() as rt:
        shared = serve.share_with_forge_cli(rt, tmp_path / "state.json")
        server, url = serve.serve_status_page(rt, shared, port=0)
        assert server is not None, url
        try:
            assert url == server.page_url
            assert url.startswith("http://127.0.0.1:")
            args = serve.parse_args(["--state-file", str(tmp_path / "state.json")])
            assert url in serve.banner(rt, args, shared.page_id, url)
            token = rt.forge.app_token(lifetime_s=2 * HOUR)  # the page's call brings a newer one (3 h)
            forge_call(rt, shared.site, "/forge/lifecycle", rt.forge.installed_event(shared.site), token)
            page = browser.new_page()
            try:
                page.goto(url)
                page.wait_for_selector("#verdict[data-state='healthy']")
                # make local's stand-in hands over a fresh app token with each call, as Forge's UI calls do
                assert page.inner_text("#last-token").endswith("when someone opened the app's page.")
            finally:
                page.close()
        finally:
            server.stop()
            shared.remove()
