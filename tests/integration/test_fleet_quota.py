"""The fleet inside Atlassian's points quota, end to end: the real worker (moto SQS and DynamoDB) and two
sites on two Confluence emulators that share one app's pools (``local/rate_limits.py``).

- background work spends its share of the hour and then waits, with no 429 at all, and every job runs
  in the next hour: nothing lost across the boundary, and the status page says why they wait;
- a global-quota 429 (the app's one pool spent, by whoever) pauses every installation's jobs at once,
  before they send anything, until the reset;
- a tenant-quota 429 (Tier 2) pauses only that site's jobs.

The stack's clock is moved to a minute before the top of the hour (relative moves only, so the FITs
and tokens the Forge emulator signs on wall time stay valid).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from forge_remote import clock
from forge_remote.budget.policy import reset_at
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site
from local.rate_limits import PointsPools
from local.stack import LocalStack
from tests.support import Gateway, LocalWorld, body_of, load_function, moto_stack

Sites = tuple[LocalWorld, Site, ConfluenceEmulator]


def site_on(confluence: ConfluenceEmulator, forge: ForgeEmulator) -> Site:
    site = forge.site(confluence.api_base_url.split("/ex/confluence/")[0])
    return Site(
        installation_id=site.installation_id,
        cloud_id=confluence.cloud_id,
        api_base_url=confluence.api_base_url,
        site_url=site.site_url,
    )


@pytest.fixture
def fleet(forge: ForgeEmulator) -> Iterator[Callable[..., Sites]]:
    """``fleet(pools, **template parameters)`` -> (world of site A, site B, B's emulator)."""
    opened: list[ConfluenceEmulator] = []
    stacks: list[Any] = []

    def build(pools: PointsPools, **parameters: str) -> Sites:
        a, b = ConfluenceEmulator(pools=pools), ConfluenceEmulator(pools=pools)
        for emulator in (a, b):
            emulator.start()
            opened.append(emulator)
            emulator.add_space("ENG", "Engineering")
        context = moto_stack(forge, **parameters)
        stack: LocalStack = context.__enter__()
        stacks.append(context)
        stack.parameters["AllowedApiHosts"] = ",".join(e.api_base_url.split("/")[2] for e in (a, b))
        load = functools.partial(load_function, stack)
        triggers = load("ForgeTriggersFunction")
        world = LocalWorld(
            stack=stack,
            forge=forge,
            confluence=a,
            site=site_on(a, forge),
            triggers=Gateway(triggers, triggers).triggers,
            worker=load("ConfluenceWorkerFunction"),
            load=load,
        )
        site_b = site_on(b, forge)
        world.install()
        world.install(site_b)
        return world, site_b, b

    yield build
    for context in reversed(stacks):
        context.__exit__(None, None, None)
    for emulator in opened:
        emulator.stop()


def to_a_minute_before_the_hour() -> float:
    now = clock.now()
    clock.advance(reset_at(now) - now - 60)
    return reset_at(clock.now())


def jobs_for(world: LocalWorld, site: Site, confluence: ConfluenceEmulator, count: int) -> list[Any]:
    pages = [confluence.add_page("ENG", f"Page {i}") for i in range(count)]
    return [world.snapshot_request(page["id"], site=site) for page in pages]


def dead_letters(world: LocalWorld) -> int:
    return world.queue_count("JobsDeadLetterQueue")


def status_of(world: LocalWorld) -> dict[str, Any]:
    user = world.forge.headers(world.site, principal="557058:admin", module_key="ui")
    return body_of(world.send("GET", "/api/status", user))


def test_background_work_spends_its_share_then_waits_for_the_next_hour_and_none_is_lost(fleet: Any) -> None:
    # 100 points an hour for the app, half of it for jobs; bulk jobs stop at 45 (the rest is interactive).
    pools = PointsPools(global_quota=100)
    world, site_b, confluence_b = fleet(pools, RateLimitQuota="100", BackgroundShare="0.5", InstallationShare="1")
    reset = to_a_minute_before_the_hour()
    requests = jobs_for(world, world.site, world.confluence, 15) + jobs_for(world, site_b, confluence_b, 15)
    world.enqueue(*requests)  # 30 snapshots of 2 points each: 60 points, more than the share
    for _ in range(6):
        world.run_round()
    done_in_the_first_hour = len(world.results()) + len(world.results(site=site_b))
    assert 0 < done_in_the_first_hour < 30
    assert pools.refusals == {}  # the budget stopped them: Atlassian never had to say no
    assert pools.spent() <= 45 + 2  # the share, past it by at most one request
    waiting = status_of(world)["jobs"]["waitingForQuota"]
    assert waiting is not None
    assert "share" in waiting["reason"]

    clock.advance(reset - clock.now() + 1)  # the new hour: waiting jobs come back at their slots
    world.drain(rounds=8)
    assert (len(world.results()), len(world.results(site=site_b))) == (15, 15)
    assert (world.queue_count(), dead_letters(world)) == (0, 0)
    assert status_of(world)["jobs"]["waitingForQuota"] is None


def test_a_global_quota_429_pauses_every_installation_until_the_reset(fleet: Any) -> None:
    # Someone this stack does not count (another regional stack of the app) spent nearly all of the
    # app's pool this hour. The first 429 must stop the whole fleet.
    pools = PointsPools(global_quota=1000)
    world, site_b, confluence_b = fleet(pools)
    reset = to_a_minute_before_the_hour()
    pools.charge("another-stack", 995)
    world.enqueue(*jobs_for(world, world.site, world.confluence, 20))
    world.run_round()  # then the deferral delays pass: what comes back before the reset waits again
    assert pools.refusals.get("confluence-quota-global-based") == 1  # one 429, then nobody asks again
    seen_by_b = len(confluence_b.requests_seen)
    world.enqueue(*jobs_for(world, site_b, confluence_b, 3))
    for _ in range(3):
        world.run_round()
    assert len(confluence_b.requests_seen) == seen_by_b  # B's jobs waited without sending anything
    assert pools.refusals.get("confluence-quota-global-based") == 1
    assert dead_letters(world) == 0

    clock.advance(reset - clock.now() + 1)
    world.drain(rounds=10)
    assert (len(world.results()), len(world.results(site=site_b))) == (20, 3)
    assert (world.queue_count(), dead_letters(world)) == (0, 0)


def test_a_tenant_quota_429_pauses_only_that_site(fleet: Any) -> None:
    pools = PointsPools(tier="tenant")
    world, site_b, confluence_b = fleet(pools, RateLimitPool="tenant")
    pools.tenant_quotas = {world.confluence.cloud_id: 1000}  # site A's own pool (Tier 2)
    reset = to_a_minute_before_the_hour()
    pools.charge(world.confluence.cloud_id, 1000)  # spent this hour by someone else (another app stack)
    world.enqueue(*jobs_for(world, world.site, world.confluence, 5), *jobs_for(world, site_b, confluence_b, 5))
    for _ in range(4):
        world.run_round()
    assert len(world.results(site=site_b)) == 5  # B's own pool was never touched
    assert world.results() == []
    assert pools.refusals == {"confluence-quota-tenant-based": 1}  # one 429 paused site A
    clock.advance(reset - clock.now() + 1)
    world.drain(rounds=8)
    assert (len(world.results()), dead_letters(world)) == (5, 0)


def test_a_jobs_cost_in_points_is_in_its_summary(fleet: Any) -> None:
    pools = PointsPools()
    world, _, _ = fleet(pools)
    world.enqueue(*jobs_for(world, world.site, world.confluence, 1))
    world.run_worker()
    items = boto3.client("dynamodb").scan(TableName=world.stack.physical["AppTable"])["Items"]
    [last_run] = [i for i in items if i["sk"]["S"].startswith("LASTRUN#")]
    assert json.loads(last_run["summary"]["S"])["points"] == 2  # one search returning one page
