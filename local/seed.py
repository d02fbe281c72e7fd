"""The emulated Confluence site ``make local`` starts with: a realistic handful, not an empty wiki.

Three spaces (Engineering, Product, People), ten pages with labels (four carry ``audit``, the label
the README's label-audit examples look for), a page tree (the handbook's children), pages edited at
different times (a day's digest finds some, not all), one page with a view restriction (two users and
the app may see it), and four named users: the CLI's default account (who installs the app and is
signed in to its UI; a plain user), a site administrator who is someone else, and two colleagues.

Ids are the Confluence emulator's, handed out in order, so a fresh emulator seeded here always gives
the same ones: ``EXAMPLE_PAGE_ID`` (Release notes, the page the banner's commands use) is one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from forge_remote import clock
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import DEFAULT_ACCOUNT_ID

ADMIN_ACCOUNT_ID = "557058:3f9a1c2e-7b4d-4e8a-9c6f-2d1e0b7a5c43"
ALICE_ACCOUNT_ID = "557058:demo-alice"  # the README's user-digest example acts as her
BOB_ACCOUNT_ID = "557058:demo-bob"
USERS = {
    DEFAULT_ACCOUNT_ID: "Dana Lee",
    ADMIN_ACCOUNT_ID: "Priya Raman",
    ALICE_ACCOUNT_ID: "Alice Martin",
    BOB_ACCOUNT_ID: "Bob Chen",
}
SPACES = (("ENG", "Engineering"), ("PROD", "Product"), ("HR", "People"))
BANNER_PAGE_TITLE = "Release notes"
EXAMPLE_PAGE_ID = "98303"  # Release notes: ENG is 98301, its homepage 98302, then this page
AUDIT_LABEL = "audit"


@dataclass(frozen=True)
class SeedPage:
    space_key: str
    title: str
    labels: tuple[str, ...]
    hours_ago: float  # when it was last edited, before the stack started
    creator: str
    contributors: tuple[str, ...] = ()
    parent: str | None = None  # another page's title, in the same space
    versions: int = 1
    restricted_to: tuple[str, ...] | None = None  # a view restriction: only these users (and the app)
    body: str = "<p>Hello</p>"


PAGES = (
    # The banner's page first: its id is EXAMPLE_PAGE_ID.
    SeedPage(
        "ENG",
        BANNER_PAGE_TITLE,
        ("release", "changelog"),
        0,
        DEFAULT_ACCOUNT_ID,
        body="<h2>2.4.0</h2><ul><li>Faster page snapshots</li><li>Fixed the digest's time zone</li></ul>",
    ),
    SeedPage(
        "ENG",
        "Engineering handbook",
        ("handbook",),
        72,
        ADMIN_ACCOUNT_ID,
        (BOB_ACCOUNT_ID,),
        versions=3,
        body="<p>How we build, review and ship. Start with the style guide and the runbook.</p>",
    ),
    SeedPage(
        "ENG",
        "API style guide",
        ("guidelines", "api"),
        240,
        BOB_ACCOUNT_ID,
        (DEFAULT_ACCOUNT_ID,),
        parent="Engineering handbook",
        body="<p>Resources are plural nouns; errors are JSON with a code and a message.</p>",
    ),
    SeedPage(
        "ENG",
        "On-call runbook",
        ("runbook", "oncall", AUDIT_LABEL),
        5,
        BOB_ACCOUNT_ID,
        (ALICE_ACCOUNT_ID,),
        parent="Engineering handbook",
        versions=2,
        body="<p>When the queue backs up: check the dead-letter queue first, then the token status page.</p>",
    ),
    SeedPage(
        "ENG",
        "Security review: payments service",
        ("security", AUDIT_LABEL),
        2,
        ADMIN_ACCOUNT_ID,
        (BOB_ACCOUNT_ID,),
        restricted_to=(ADMIN_ACCOUNT_ID, BOB_ACCOUNT_ID),
        body="<p>Findings and their owners. Restricted: Priya and Bob only.</p>",
    ),
    SeedPage(
        "PROD",
        "Roadmap 2026",
        ("roadmap", "planning"),
        1,
        ALICE_ACCOUNT_ID,
        (DEFAULT_ACCOUNT_ID,),
        versions=4,
        body="<p>Q1: offline reports. Q2: space digests by email.</p>",
    ),
    SeedPage(
        "PROD",
        "Customer feedback summary",
        ("feedback", "research"),
        96,
        ALICE_ACCOUNT_ID,
        body="<p>Top asks: exports, per-space settings, a dark theme.</p>",
    ),
    SeedPage("PROD", "Pricing FAQ", ("faq", "pricing"), 720, ADMIN_ACCOUNT_ID, body="<p>Billed per user, monthly.</p>"),
    SeedPage(
        "HR",
        "Onboarding checklist",
        ("onboarding", AUDIT_LABEL),
        480,
        ADMIN_ACCOUNT_ID,
        (ALICE_ACCOUNT_ID,),
        versions=2,
        body="<ol><li>Laptop</li><li>Accounts</li><li>A buddy</li></ol>",
    ),
    SeedPage("HR", "Travel policy", ("policy", AUDIT_LABEL), 1440, ADMIN_ACCOUNT_ID, body="<p>Book economy.</p>"),
)


@dataclass(frozen=True)
class SeededSite:
    """What ``seed_site`` put on the emulated site (page records as the emulator keeps them)."""

    pages: dict[str, dict[str, Any]]  # title -> the page's record
    admins: frozenset[str]
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))

    @property
    def banner_page(self) -> dict[str, Any]:
        return self.pages[BANNER_PAGE_TITLE]


def seed_site(confluence: ConfluenceEmulator, *, now: float | None = None) -> SeededSite:
    """Put the spaces, pages, users, restriction and the site administrator on ``confluence`` (a fresh one)."""
    started = datetime.fromtimestamp(clock.now() if now is None else now, UTC)
    for account_id, name in USERS.items():
        confluence.add_user(account_id, name)
    pages: dict[str, dict[str, Any]] = {}
    spaces = dict(SPACES)
    for page in PAGES:
        if page.space_key in spaces:  # each space just before its first page: the banner page's id is fixed
            confluence.add_space(page.space_key, spaces.pop(page.space_key))
        edited = started - timedelta(hours=page.hours_ago)
        created = edited - timedelta(days=2 * (page.versions - 1))
        parent = pages[page.parent]["id"] if page.parent else None
        editors = (page.creator, *page.contributors)
        record = confluence.add_page(
            page.space_key,
            page.title,
            body=page.body,
            last_modified=created,
            labels=page.labels,
            parent_id=parent,
            creator=page.creator,
            contributors=page.contributors if page.versions == 1 else (),
            created=created,
        )
        for version in range(2, page.versions + 1):  # every 2 days, the last one `edited`
            when = created + timedelta(days=2 * (version - 1))
            record = confluence.update_page(record["id"], last_modified=when, by=editors[(version - 1) % len(editors)])
        if page.restricted_to is not None:
            confluence.restrict_page(record["id"], page.restricted_to)
        pages[page.title] = record
    for key, name in spaces.items():  # a space without pages (none today)
        confluence.add_space(key, name)
    confluence.set_admins({ADMIN_ACCOUNT_ID})
    return SeededSite(pages=pages, admins=frozenset({ADMIN_ACCOUNT_ID}))
