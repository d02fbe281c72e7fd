"""Least privilege, enforced: every function of the transformed template runs its workloads as its own IAM
role (``tests/iam_enforcement.py``), and a call its policy does not allow fails the test. The policies
come from the SAM transform of ``template.yaml`` (``local/sam_transform.py``), never from a copy.

Each function is driven by the workloads the other suites use: every HTTP route of the template (and
every UI route the forge_calls resolver serves) with real FITs, the sample events in ``events/``, the
worker with real queued jobs (done, deferred, dead-lettered, a job acting as a user with an offline
token, a token Confluence refuses), and the scheduler's schedule. A function with no workload here
fails, naming itself: a new function gets its workload before it gets a green run.

Granted permissions no workload used are listed in the summary table (``make test`` prints it) rather
than failing: a grant can serve a path these workloads do not reach (a race, a fault), so the table
is for a reviewer to read; what fails is a call the role does not allow.

The resources are checked twice: per call here (moto's own IAM matches actions only), and on the
template, where no statement may use ``*`` for a table, index or queue it could name.

Every workload runs beside a peer stack in another region (the EU realm's, eu-central-1: moto serves
both regions, a table's region is its client's and its ARN's), named in ``PeerAppTables``: the trigger
function's data residency migration writes and removes items there through the grant that parameter
makes (``HasPeerAppTables``), on exactly that ARN; without the parameter the grant is not there at all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from forge_remote import clock
from forge_remote.jobs.contract import JobRequest
from forge_remote.lifecycle.cleanup import PAGE_SIZE
from forge_remote.storage.results import ResultStore
from forge_remote.storage.table_keys import installation_pk
from forge_remote.tokens.store import TokenStore
from local.apigw import http_api_event
from local.cfn_yaml import http_routes, load_template, path_matches
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site
from local.lambda_context import LocalLambdaContext
from local.sam_transform import code_locations, function_roles, transformed_template
from local.stack import TEMPLATE, LocalStack
from tests.iam_enforcement import DRIVEN, ArnBook, RoleEnforcer, resolved_grants
from tests.integration.test_data_lifecycle import RunningOutContext, seed_results
from tests.support import ROOT, LocalWorld

# The sample SQS batch is for an installation nobody installed: the worker publishes no metric for it.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")
EVENTS = ROOT / "events"
TRANSFORMED = transformed_template()
ROLES = function_roles(TRANSFORMED)
CONDITIONS: dict[str, Any] = TRANSFORMED.get("Conditions", {})
PEER_REGION = "eu-central-1"
SOURCE = load_template(TEMPLATE)
CODE_URIS = code_locations(SOURCE)
ADMIN = "557058:aaaaaaaa-0000-4000-8000-00000000000a"
READER = "557058:bbbbbbbb-0000-4000-8000-00000000000b"
SAMPLE_SITE = Site(
    installation_id="ari:cloud:ecosystem::installation/8d0c7a51-3f2e-4b6a-9c1d-5e7f9a2b4c6d",
    cloud_id="a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    api_base_url="https://api.atlassian.com/ex/confluence/a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    site_url="https://example-site.atlassian.net",
)


@dataclass
class EnforcedWorld:
    """``LocalWorld`` with every function loaded as its role, and what the HTTP routes answered."""

    world: LocalWorld
    enforcer: RoleEnforcer
    peer: LocalStack  # the EU realm's stack, whose app table a migration out of this one writes
    answered: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status

    @property
    def forge(self) -> ForgeEmulator:
        return self.world.forge

    @property
    def site(self) -> Site:
        return self.world.site

    def module(self, function: str) -> Any:
        """The function's one container (loaded once per test, as its role)."""
        return self.world.load(function)

    def http(self, method: str, path: str, headers: dict[str, str], body: Any = None, query: str = "") -> int:
        """One request to the function the template routes ``path`` to; returns the status code."""
        (function,) = {f for m, p, f in http_routes(SOURCE) if path_matches(p, path) and m in ("ANY", method)}
        event = http_api_event(method, path, headers=headers, body=body, query=query)
        return self.http_event(function, event)

    def http_event(self, function: str, event: dict[str, Any]) -> int:
        status = int(
            self.module(function).lambda_handler(event, LocalLambdaContext(function, timeout_s=6))["statusCode"]
        )
        self.answered.append((event["requestContext"]["http"]["method"], event["rawPath"], status))
        return status

    def as_user(self, account: str) -> dict[str, str]:
        user_token = self.forge.app_token(lifetime_s=3600, subject=account)
        return self.forge.headers(self.site, user_token=user_token, principal=account, app_token=self.forge.app_token())

    def routes_answered(self, function: str) -> dict[str, bool]:
        """Every template route of ``function`` (and its resolver's routes): answered 2xx at least once?"""
        routes = [(m, p) for m, p, f in http_routes(SOURCE) if f == function]
        resolver = getattr(self.module(function), "app", None)
        if resolver is not None:
            routes += [(r.method, r.path) for r in resolver._static_routes + resolver._dynamic_routes]
        return {
            f"{m} {p}": any(
                200 <= s < 300 and path_matches(p, path) and m in ("ANY", method) for method, path, s in self.answered
            )
            for m, p in routes
        }


def _fresh_function_modules(code_uri: str) -> None:
    """Forget the function folder's own modules (``ui_routes``, ``confluence_jobs``): a new container."""
    folder = str((ROOT / code_uri).resolve())
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(folder):
            del sys.modules[name]


@pytest.fixture
def enforced(
    stack: LocalStack, forge: ForgeEmulator, confluence: ConfluenceEmulator, confluence_site: Site
) -> Iterator[EnforcedWorld]:
    forge.reset_graphql()
    hosts = ["api.atlassian.com", confluence.api_base_url.split("/")[2], forge.graphql_url.split("/")[2]]
    stack.parameters["AllowedApiHosts"] = ",".join(hosts)
    stack.parameters["ForgeGraphqlUrl"] = forge.graphql_url
    peer = LocalStack.from_template(stack_name="forge-remote-eu", region=PEER_REGION, parameters={"DataRealm": "EU"})
    peer.create(dynamodb=boto3.client("dynamodb", region_name=PEER_REGION))
    stack.parameters["PeerAppTables"] = f"EU={peer.arns['AppTable']}"
    enforcer = RoleEnforcer(stack, ROLES, CODE_URIS, conditions=CONDITIONS)
    loaded: dict[str, Any] = {}

    def load(function: str) -> Any:
        if function not in loaded:
            _fresh_function_modules(CODE_URIS[function])
            loaded[function] = enforcer.load(function)
        return loaded[function]

    with enforcer.patch():
        world = LocalWorld(
            stack=stack,
            forge=forge,
            confluence=confluence,
            site=confluence_site,
            triggers=load("ForgeTriggersFunction"),
            worker=load("ConfluenceWorkerFunction"),
            load=load,
        )
        yield EnforcedWorld(world, enforcer, peer)
    forge.reset_graphql()


# -- workloads, one per function ----------------------------------------------------------------------
def _sample_http_events(folder: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((EVENTS / folder).glob("*.json"))]


def _with_real_fit(w: EnforcedWorld, event: dict[str, Any], principal: str | None = None) -> dict[str, Any]:
    real = w.forge.headers(SAMPLE_SITE, app_token=w.forge.app_token(), principal=principal)
    event["headers"].update({k: v for k, v in real.items() if k in ("authorization", "x-forge-oauth-system")})
    return event


def another_site(w: EnforcedWorld) -> Site:
    """A new installation on the same Confluence emulator site (its host is the one allowed)."""
    mine = w.site
    return Site(w.forge.site().installation_id, mine.cloud_id, mine.api_base_url, mine.site_url)


def uninstall_out_of_time(w: EnforcedWorld) -> None:
    """The world's site uninstalled with more results than one call's time can delete (answered 503)."""
    seed_results(w.world, 3 * PAGE_SIZE)
    event = http_api_event("POST", "/forge/uninstall", headers=w.forge.headers(w.site), body={})
    assert w.world.triggers.lambda_handler(event, RunningOutContext(calls=1))["statusCode"] == 503


def drive_migrations(w: EnforcedWorld) -> None:
    """Forge's five migration hooks, twice: a migration to the EU realm committed (the copy into the peer's
    table, then this stack's copy purged, tokens too), and one rolled back (the peer's items removed)."""
    forge = w.forge
    for outcome in ("commit", "rollback"):
        site = another_site(w)
        w.world.install(site)
        ResultStore(boto3.client("dynamodb"), w.world.stack.physical["AppTable"]).put(
            site.installation_id, "SNAPSHOT", "1#v1", {"pageId": "1", "title": "Release notes"}
        )
        migration_id = f"least-privilege-{outcome}"
        start = clock.now() + 3600
        body = {
            "migrationId": migration_id,
            "location": "EU",
            "startTime": clock.iso(start),
            "endTime": clock.iso(start + 4 * 3600),
        }

        def headers(site: Site = site) -> dict[str, str]:
            return forge.headers(site, module_key="data-residency")

        assert w.http("POST", "/forge/migration/schedule", headers(), body) == 200
        clock.advance(3600)
        assert w.http("POST", "/forge/migration/start", headers(), body) == 200
        assert w.http("GET", "/forge/migration/status", headers(), query=f"migrationId={migration_id}") == 200
        assert w.http("POST", f"/forge/migration/{outcome}", headers(), {"migrationId": migration_id}) == 200
    peer_items = boto3.client("dynamodb", region_name=PEER_REGION).scan(TableName=w.peer.physical["AppTable"])
    assert peer_items["Count"] == 2  # the committed installation's registry item and result; none rolled back


def drive_triggers(w: EnforcedWorld) -> None:
    forge, site = w.forge, w.site
    w.world.install()
    headers = forge.headers(site, app_token=forge.app_token())
    assert w.http("POST", "/forge/lifecycle", headers, forge.installed_event(site, "avi:forge:upgraded:app")) == 200
    assert w.http("POST", "/forge/keepalive", forge.headers(site, app_token=forge.app_token())) == 204
    assert (
        w.http("POST", "/forge/events", forge.headers(site, app_token=forge.app_token()), forge.page_event("7", "ENG"))
        < 300
    )
    for event in _sample_http_events("forge_triggers"):  # the samples, as `sam local invoke -e` sends them
        assert w.http_event("ForgeTriggersFunction", _with_real_fit(w, event)) < 300
    uninstall_out_of_time(w)  # a cleanup too big for one call: 503, then Forge's retry finishes it
    assert w.http("POST", "/forge/uninstall", forge.headers(site)) == 200
    after = w.http(
        "POST", "/forge/events", forge.headers(site, app_token=forge.app_token()), forge.page_event("8", "ENG")
    )
    assert after == 200  # acknowledged, no job: the installation is gone
    drive_migrations(w)


def drive_calls(w: EnforcedWorld) -> None:
    w.world.install()
    w.world.confluence.set_admins({ADMIN})
    w.world.confluence.add_space("ENG", "Engineering")
    w.world.confluence.add_page("ENG", "Release notes")
    assert w.http("GET", "/api/status", w.as_user(READER)) == 200
    assert w.http("GET", "/api/pages/recent", w.as_user(READER), query="days=7") == 200
    assert w.http("POST", "/api/jobs", w.as_user(ADMIN), {"job": "space-digest", "args": {"spaceKeys": ["ENG"]}}) == 202
    for event in _sample_http_events("forge_calls"):
        assert w.http_event("ForgeCallsFunction", _with_real_fit(w, event, principal=READER)) < 300


def drive_worker(w: EnforcedWorld) -> None:
    world, forge = w.world, w.forge
    world.install()
    snapshots = world.pages(2)
    digest = JobRequest(job="space-digest", installation_id=world.site.installation_id, args={})
    as_user = JobRequest(
        job="user-digest", installation_id=world.site.installation_id, args={"days": 7}, requested_by=READER
    )
    # Deferred: a second site whose only token is too close to its end to be taken.
    short = another_site(w)
    world.install(short, lifetime_s=120)
    # Refused: a third site whose token Confluence revoked (the worker deletes exactly that token).
    refused = another_site(w)
    world.confluence.revoke(world.install(refused))
    report = JobRequest(job="personal-data-report", installation_id=world.site.installation_id, args={})
    world.enqueue(
        *snapshots,
        digest,
        as_user,
        report,  # after the user job: the account it acted as is reported
        world.snapshot_request("1", short),
        world.snapshot_request("1", refused),
        "not a job request",
    )
    _, response = world.run_worker()
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    assert len(failed) == 2, response  # the short-lived token's job and the refused token's job, deferred
    assert world.queue_count("JobsDeadLetterQueue") == 1  # the malformed one
    assert forge.offline_mints.get(READER) == 1  # the user job minted its offline token
    assert len(world.results("SNAPSHOT")) == 2
    sample = json.loads((EVENTS / "confluence_worker" / "sqs_batch.json").read_text())
    world.worker.lambda_handler(sample, LocalLambdaContext("worker", timeout_s=120))  # unknown installation


def schedule_inputs(function: str, stack: LocalStack) -> dict[str, Any]:
    """Every Scheduler schedule of the transformed template that targets ``function``: name -> its input
    (an ``!Sub`` naming a parameter resolved with the stack's parameters)."""
    return {
        lid: json.loads(stack.resolve(r["Properties"]["Target"].get("Input", "{}")))
        for lid, r in TRANSFORMED["Resources"].items()
        if r["Type"] == "AWS::Scheduler::Schedule"
        and r["Properties"]["Target"]["Arn"] == {"Fn::GetAtt": [function, "Arn"]}
    }


def drive_scheduler(w: EnforcedWorld) -> None:
    w.world.install()
    uninstall_out_of_time(w)  # left for the cleanup sweep
    # A token item left behind (an uninstall that died between its mark and the token deletion): the
    # sweep deletes it too.
    TokenStore(boto3.client("dynamodb"), w.world.stack.physical["TokensTable"]).put_if_newer(
        w.site.installation_id, w.forge.app_token()
    )
    w.world.install(another_site(w))  # an active one, for the digest and the token census
    scheduler = w.world.load("JobSchedulerFunction")
    context = LocalLambdaContext("scheduler", timeout_s=300)
    fired = schedule_inputs("JobSchedulerFunction", w.world.stack)
    assert len(fired) >= 1
    answers = {name: scheduler.lambda_handler(schedule, context) for name, schedule in fired.items()}
    assert all(answers.values()), answers  # every schedule, with the input the template gives it
    swept = [a for a in answers.values() if a.get("task") == "cleanup-sweep"]
    assert [a["finished"] for a in swept] in ([], [1])
    for path in sorted((EVENTS / "job_scheduler").glob("*.json")):
        assert scheduler.lambda_handler(json.loads(path.read_text()), context)["requested"] >= 1


def drive_wakeup(w: EnforcedWorld) -> None:
    world, forge = w.world, w.forge
    waiting = another_site(w)
    world.install(waiting, lifetime_s=120)  # too short for a job: the job is deferred and parked
    world.enqueue(world.snapshot_request("1", waiting))
    _, response = world.run_worker()
    assert len(response["batchItemFailures"]) == 1
    fresh = forge.app_token()
    assert w.http("POST", "/forge/keepalive", forge.headers(waiting, app_token=fresh)) == 204
    stored = {
        "eventID": "1",
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "Keys": {"pk": {"S": installation_pk(waiting.installation_id)}, "sk": {"S": "SYSTEM"}},
            "SequenceNumber": "1",
            "StreamViewType": "KEYS_ONLY",
        },
    }
    wakeup = world.load("TokenWakeupFunction")
    context = LocalLambdaContext("wakeup", timeout_s=30)
    assert wakeup.lambda_handler({"Records": [stored]}, context)["batchItemFailures"] == []
    visible = boto3.client("sqs").get_queue_attributes(
        QueueUrl=world.stack.physical["JobsQueue"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert visible == "1"  # woken: visible again at once, not after its delay
    sample = json.loads((EVENTS / "token_wakeup" / "token_stored.json").read_text())
    assert wakeup.lambda_handler(sample, context)["batchItemFailures"] == []
    # SQS unwell while waking: the claimed job is put back for the next delivery and the record fails.
    stale = another_site(w)
    world.install(stale, lifetime_s=120)
    world.enqueue(world.snapshot_request("3", stale))
    world.run_worker()
    unwell = ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "try later"}}, "ChangeMessageVisibility")
    record = {**stored, "dynamodb": {**stored["dynamodb"], "Keys": {**stored["dynamodb"]["Keys"]}}}
    record["dynamodb"]["Keys"]["pk"] = {"S": installation_pk(stale.installation_id)}
    assert w.http("POST", "/forge/keepalive", forge.headers(stale, app_token=forge.app_token())) == 204
    real_call = BaseClient._make_api_call

    def sqs_unwell(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation == "ChangeMessageVisibility":
            raise unwell
        return real_call(client, operation, params)

    with patch.object(BaseClient, "_make_api_call", sqs_unwell):
        assert wakeup.lambda_handler({"Records": [record]}, context)["batchItemFailures"] != []


WORKLOADS: dict[str, Callable[[EnforcedWorld], None]] = {
    "TokenWakeupFunction": drive_wakeup,
    "ForgeTriggersFunction": drive_triggers,
    "ForgeCallsFunction": drive_calls,
    "ConfluenceWorkerFunction": drive_worker,
    "JobSchedulerFunction": drive_scheduler,
}


@pytest.mark.parametrize("function", sorted(ROLES))
def test_each_function_needs_nothing_its_role_does_not_grant(function: str, enforced: EnforcedWorld) -> None:
    workload = WORKLOADS.get(function)
    if workload is None:
        pytest.fail(
            f"{function} is in the transformed template but no workload drives it under its role: "
            f"add one to WORKLOADS in {Path(__file__).name}"
        )
    try:
        workload(enforced)
    except Exception as exc:
        if enforced.enforcer.denials:  # a refused call is the cause worth reading, not what it broke
            pytest.fail(f"calls their role does not allow: {enforced.enforcer.denials} (then {type(exc).__name__})")
        raise
    finally:
        clock.reset()
    DRIVEN.add(function)
    assert enforced.enforcer.denials == []
    http_functions = {f for _, _, f in http_routes(SOURCE)}
    routes = enforced.routes_answered(function) if function in http_functions else {}
    unanswered = [route for route, ok in routes.items() if not ok]
    assert unanswered == [], f"{function}: routes no workload request reached with a 2xx"


# -- the same enforcement, shown to bite ------------------------------------------------------------------
def test_a_call_outside_the_role_is_refused_and_recorded(enforced: EnforcedWorld) -> None:
    enforcer = enforced.enforcer
    stack = enforced.world.stack
    with enforcer.acting_as("ForgeCallsFunction"):  # it may read and write items, and send to the jobs queue
        with pytest.raises(Exception, match="AccessDenied"):
            boto3.client("dynamodb").scan(TableName=stack.physical["TokensTable"])
        with pytest.raises(Exception, match="AccessDenied"):  # the right action, on another queue
            boto3.client("sqs").send_message_batch(
                QueueUrl=stack.physical["JobsDeadLetterQueue"], Entries=[{"Id": "0", "MessageBody": "{}"}]
            )
    assert enforcer.denials == [
        "ForgeCallsFunction: dynamodb:Scan on TokensTable (not in its role)",
        "ForgeCallsFunction: sqs:SendMessage on JobsDeadLetterQueue (not in its role)",
    ]


def test_a_table_in_another_region_that_peer_app_tables_does_not_name_is_refused(enforced: EnforcedWorld) -> None:
    """The trigger function may write the peer's app table, and nothing else there: not its tokens table, not
    another table of the same region."""
    enforcer, peer = enforced.enforcer, enforced.peer
    item = {"pk": {"S": "INST#x"}, "sk": {"S": "INSTALLATION"}}
    with enforcer.acting_as("ForgeTriggersFunction"):
        client = boto3.client("dynamodb", region_name=PEER_REGION)
        client.put_item(TableName=peer.arns["AppTable"], Item=item)  # the grant
        with pytest.raises(Exception, match="AccessDenied"):
            client.put_item(TableName=peer.arns["TokensTable"], Item=item)
        with pytest.raises(Exception, match="AccessDenied"):  # an action it was not given, on the granted table
            client.scan(TableName=peer.arns["AppTable"])
    assert enforcer.denials == [
        f"ForgeTriggersFunction: dynamodb:PutItem on {peer.arns['TokensTable']} (not in its role)",
        f"ForgeTriggersFunction: dynamodb:Scan on {peer.arns['AppTable']} (not in its role)",
    ]


def test_moto_iam_refuses_what_the_widened_role_lacks(enforced: EnforcedWorld) -> None:
    """moto's own check, alone: the role's credentials, an action it does not hold at all."""
    from moto.core.authorization import enable_iam_authentication

    with enforced.enforcer.acting_as("JobSchedulerFunction", checked_here=False):
        sqs = boto3.client("sqs")
        with enable_iam_authentication(), pytest.raises(Exception, match="AccessDenied"):
            sqs.list_queues()
        with enable_iam_authentication():  # and what the role holds passes (the credentials are real)
            sqs.send_message_batch(
                QueueUrl=enforced.world.stack.physical["JobsQueue"], Entries=[{"Id": "0", "MessageBody": "{}"}]
            )


# -- resource scoping, on the template ---------------------------------------------------------------
def _unscoped(stack: LocalStack, peers: set[str]) -> list[str]:
    book = ArnBook(stack)
    known = set(stack.arns.values()) | peers
    problems = []
    for function, role in ROLES.items():
        for grant in resolved_grants(stack, role, CONDITIONS):
            for resource in grant.resources:
                if "*" in resource or not any(resource == arn or resource.startswith(arn + "/index/") for arn in known):
                    problems.append(f"{function}: {grant.actions} on {book.label(resource)}")
    return problems


def test_no_statement_uses_a_wildcard_where_it_could_name_the_resource(stack: LocalStack) -> None:
    assert _unscoped(stack, set()) == []


PEER_ARNS = [
    f"arn:aws:dynamodb:{region}:123456789012:table/forge-remote-{realm.lower()}-AppTable-{n}"
    for n, (realm, region) in enumerate(
        [
            ("EU", "eu-central-1"),
            ("US", "us-east-2"),
            ("AU", "ap-southeast-2"),
            ("DE", "eu-central-2"),
            ("JP", "ap-northeast-1"),
        ]
    )
]


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_the_peer_tables_are_granted_to_the_trigger_function_only_and_exactly(stack: LocalStack, count: int) -> None:
    """PeerAppTables with 0, 1, 2 and the most (5) entries: the trigger function, and no other, may put,
    delete and query items on exactly those tables (one grant, no ``*``, no other action there)."""
    realms = ["EU", "US", "AU", "DE", "JP"][:count]
    stack.parameters["PeerAppTables"] = ",".join(f"{r}={arn}" for r, arn in zip(realms, PEER_ARNS, strict=False))
    peers = set(PEER_ARNS[:count])
    assert _unscoped(stack, peers) == []
    on_peers = {
        function: [g for g in resolved_grants(stack, role, CONDITIONS) if set(g.resources) & peers]
        for function, role in ROLES.items()
    }
    granted = {function: grants for function, grants in on_peers.items() if grants}
    if not count:
        assert granted == {}
        return
    assert list(granted) == ["ForgeTriggersFunction"]
    (grant,) = granted["ForgeTriggersFunction"]
    assert set(grant.resources) == peers
    assert len(grant.resources) == count
    assert sorted(grant.actions) == ["dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:Query"]


def test_every_function_role_comes_from_the_template() -> None:
    functions = {lid for lid, r in SOURCE["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    assert set(ROLES) == functions
    assert all(role.statements for role in ROLES.values())  # each has its own inline policy
