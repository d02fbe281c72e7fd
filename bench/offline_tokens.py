"""Part 6, offline user tokens: how many Forge mints 1,000 ``user-digest`` jobs for 10 users cost.

Ours: the real worker (``JobRunner.run`` of the loaded confluence_worker module, in-process moto) with
the Forge emulator's GraphQL gateway and the Confluence emulator on loopback; tokens are cached per
(installation, account) in the tokens table and re-minted only when they near their end. Two runs:
all 1,000 jobs within one token lifetime (expected: one mint per user, 10), and the same jobs spread
over 4 simulated hours with 1 h tokens (expected: a re-mint per user every ``ttl - TOKEN_MIN_VALIDITY_S``,
plus the first). The naive side mints per job (what a remote without a shared cache does: an in-memory
cache dies with each container), then makes the same Confluence search with the token it got.
"""

from __future__ import annotations

import math
import time
from typing import Any

from bench.common import Row, Section, load_function, median, moto_stack, quiet

JOBS = 1000
USERS = 10
TOKEN_TTL_S = 3600
SPREAD_S = 4 * 3600  # the second run: jobs spread over four hours
MIN_VALIDITY_S = 600  # the template's TokenMinValiditySeconds default
KEEPALIVE_S = 3600  # Forge's hourly scheduledTrigger keeps the app token fresh meanwhile


def run(quick: bool = False) -> Section:
    from forge_remote import clock
    from local.confluence_emulator import ConfluenceEmulator
    from local.forge_emulator import ForgeEmulator

    section = Section("offline user tokens")
    forge, confluence = ForgeEmulator(), ConfluenceEmulator()
    forge.start()
    confluence.start()
    confluence.add_space("ENG", "Engineering")
    for n in range(5):
        confluence.add_page("ENG", f"Page {n}")
    users = [f"557058:bench-user-{n:02d}" for n in range(USERS)]
    parameters = {
        "ForgeAppId": forge.app_ari,
        "ForgeJwksUrl": forge.jwks_url,
        "AllowedApiHosts": ",".join(u.split("/")[2] for u in (confluence.api_base_url, forge.graphql_url)),
        "ForgeGraphqlUrl": forge.graphql_url,
        # One installation runs all 1,000 jobs: its default share of the points budget (a tenth of the
        # background share an hour) would make jobs wait for the next hour, which is part 8's subject.
        "InstallationShare": "1",
    }
    figures: dict[str, Any] = {}
    try:
        with moto_stack(parameters) as stack:
            triggers = load_function(stack, "ForgeTriggersFunction")
            worker = load_function(stack, "ConfluenceWorkerFunction")
            figures["ours_one_lifetime"] = ours(forge, confluence, triggers, worker, users, spread_s=0.0)
            figures["ours_spread"] = ours(forge, confluence, triggers, worker, users, spread_s=SPREAD_S)
            figures["naive"] = naive(forge, confluence, users, worker.runner.offline_token_context_id)
    finally:
        clock.reset()
        forge.stop()
        confluence.stop()
    report(section, figures)
    return section


def _deliver(forge: Any, triggers: Any, site: Any, path: str) -> None:
    """A Forge call carrying a fresh app token (install, then the hourly keepalive)."""
    from local.apigw import http_api_event
    from local.lambda_context import LocalLambdaContext

    token = forge.app_token(lifetime_s=3 * 3600)
    body = forge.installed_event(site) if path == "/forge/lifecycle" else {}
    event = http_api_event("POST", path, headers=forge.headers(site, app_token=token), body=body)
    with quiet():
        triggers.lambda_handler(event, LocalLambdaContext("forge-triggers", timeout_s=6))


def ours(
    forge: Any, confluence: Any, triggers: Any, worker: Any, users: list[str], *, spread_s: float
) -> dict[str, Any]:
    """The jobs through the real runner, ``spread_s`` of stack clock apart in all; mints counted by Forge."""
    from forge_remote import clock
    from forge_remote.jobs.contract import JobRequest
    from local.forge_emulator import Site, new_installation_id

    site = Site(new_installation_id(), confluence.cloud_id, confluence.api_base_url, "https://bench.example")
    _deliver(forge, triggers, site, "/forge/lifecycle")
    forge.reset_graphql()
    forge.offline_ttl_s = TOKEN_TTL_S
    step_s, since_keepalive = spread_s / JOBS, 0.0
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    for n in range(JOBS):
        request = JobRequest("user-digest", site.installation_id, requested_by=users[n % USERS])
        started = time.perf_counter()
        with quiet():
            outcome = worker.runner.run(request, receive_count=1, remaining_ms=lambda: 60_000)
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[outcome.status.value] = statuses.get(outcome.status.value, 0) + 1
        clock.advance(step_s)
        since_keepalive += step_s
        if since_keepalive >= KEEPALIVE_S:
            _deliver(forge, triggers, site, "/forge/keepalive")
            since_keepalive = 0.0
    clock.reset()
    return {"mints": forge.offline_mint_count, "statuses": statuses, "p50_ms": median(latencies)}


def naive(forge: Any, confluence: Any, users: list[str], context_id: str) -> dict[str, Any]:
    """Mint per job: the same 1,000 jobs, each minting its own token before its one search."""
    import requests

    from forge_remote.tokens.offline import OfflineTokenMinter

    forge.reset_graphql()
    app_token = forge.app_token(lifetime_s=3 * 3600)
    hosts = [u.split("/")[2] for u in (confluence.api_base_url, forge.graphql_url)]
    minter = OfflineTokenMinter(forge.graphql_url, context_id, hosts)
    session = requests.Session()
    latencies = []
    for n in range(JOBS):
        started = time.perf_counter()
        minted = minter.mint(
            account_id=users[n % USERS], cloud_id=confluence.cloud_id, app_token=app_token, remaining_ms=lambda: 60_000
        )
        session.get(
            confluence.api_base_url + "/wiki/rest/api/content/search",
            params={"cql": 'type = "page"', "limit": "50"},
            headers={"Authorization": f"Bearer {minted.token}"},
            timeout=10,
        ).raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
    return {"mints": forge.offline_mint_count, "p50_ms": median(latencies)}


def report(section: Section, figures: dict[str, Any]) -> None:
    one, spread, naive_side = figures["ours_one_lifetime"], figures["ours_spread"], figures["naive"]
    per_token_s = TOKEN_TTL_S - MIN_VALIDITY_S  # a cached token is handed out this long, then re-minted
    spread_bound = USERS * (math.ceil(SPREAD_S / per_token_s) + 1)
    section.figures.update({"jobs": JOBS, "users": USERS, "token_ttl_s": TOKEN_TTL_S, **figures})

    def line(label: str, mine: Any, theirs: Any = "") -> None:
        print(f"  {label:<46} {mine!s:>16} {theirs!s:>16}")

    print(f"  {JOBS} user-digest jobs, {USERS} users, {TOKEN_TTL_S // 60} min user tokens, ", end="")
    print(f"min validity {MIN_VALIDITY_S} s; a mint is a loopback POST here, a network round trip in production")
    line("", "cached (ours)", "mint per job")
    line("mints, jobs within one token lifetime", one["mints"], naive_side["mints"])
    line(f"mints, jobs over {SPREAD_S // 3600} h (bound {spread_bound})", spread["mints"])
    # Not like for like: ours is the whole worker job (DynamoDB reads, the result write); naive is mint + search.
    line("job p50, ms (ours: whole job; naive: mint+search)", f"{one['p50_ms']:.2f}", f"{naive_side['p50_ms']:.2f}")
    line("statuses (one lifetime)", one["statuses"])
    line(f"statuses (over {SPREAD_S // 3600} h)", spread["statuses"])
    if one["statuses"] != {"done": JOBS} or spread["statuses"] != {"done": JOBS}:
        section.notes.append(f"not every job was done: {one['statuses']} / {spread['statuses']}")
    section.rows += [
        Row(
            f"offline user token mints / {JOBS} jobs, {USERS} users",
            f"{one['mints']} (one lifetime); {spread['mints']} over {SPREAD_S // 3600} h",
            f"{naive_side['mints']} mint per job",
            one["mints"] / max(1, naive_side["mints"]),
            f"<= {USERS}; <= {spread_bound} over {SPREAD_S // 3600} h",
            one["mints"] <= USERS and spread["mints"] <= spread_bound and one["statuses"] == {"done": JOBS},
        ),
    ]
