"""Driving the real handlers with API Gateway v2 events, and looking at what they left behind.

- ``World``: one moto stack (tables and queues from template.yaml) and one container per HTTP
  function, shared by a whole module so that hundreds of cases stay fast. Cases compare ``state()``
  before and after instead of expecting empty tables.
- ``invoke``: one event through one handler; the response (body and headers) goes to the ledger.
- ``state``: everything a request could have written: both tables, the job queue, the DLQ.
- ``account_jobs``: every job request is done, still queued, or in the DLQ; anything else is lost.
- ``installed_pages``, ``settle``: the same for the worker's jobs in a test's ``LocalWorld``.
- ``ui_world``, ``UiSite``: a world whose forge_calls may reach a Confluence emulator on loopback, and
  an installed site on it whose user's UI calls carry genuine FITs and tokens already stored.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs.models import sqs_backends

from forge_remote.errors import BadJobRequest
from forge_remote.jobs.contract import JobRequest
from forge_remote.storage.table_keys import installation_pk
from local.apigw import http_api_event
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site, new_installation_id
from local.lambda_context import LocalLambdaContext
from local.stack import LocalStack
from tests.reliability.ledger import LEDGER, Ledger
from tests.support import LocalWorld, load_function, moto_stack

QUEUES = ("JobsQueue", "JobsDeadLetterQueue")


@cache
def client(service: str) -> Any:
    """The harness's own boto3 clients (creating one costs milliseconds; moto serves whichever mock is on)."""
    return boto3.client(service)


container = load_function  # a fresh copy of a function's module: what one Lambda container runs


def event(
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    *,
    raw: str | None = None,
    base64_body: bool = False,
    query: str = "",
) -> dict[str, Any]:
    """An HTTP API v2 event. ``raw`` is the event's body field verbatim (with ``base64_body`` as its flag)."""
    built = http_api_event(method, path, headers=dict(headers or {}), body=body, query=query, binary=base64_body)
    if raw is not None:
        built["body"], built["isBase64Encoded"] = raw, base64_body
    return built


def invoke(module: Any, api_event: dict[str, Any]) -> dict[str, Any]:
    """Call a handler as Lambda would; record what it answered (a secret must never be in it)."""
    response: dict[str, Any] = module.lambda_handler(api_event, LocalLambdaContext(timeout_s=6))
    LEDGER.seen(response.get("body"), "response body")
    LEDGER.seen(json.dumps(response.get("headers"), default=str), "response headers")
    return response


# -- what a request could have written ---------------------------------------------------------------
def table_items(stack: LocalStack, logical_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in (
        client("dynamodb").get_paginator("scan").paginate(TableName=stack.physical[logical_id], ConsistentRead=True)
    ):
        items.extend(page["Items"])
    return items


def queue_messages(stack: LocalStack, logical_id: str) -> list[dict[str, Any]]:
    """Every message of a queue, visible or not (read from moto's backend: SQS has no peek)."""
    name = stack.physical[logical_id].rsplit("/", 1)[-1]
    queue = sqs_backends[DEFAULT_ACCOUNT_ID][stack.region].get_queue(name)
    return [
        {"body": m.body, "attributes": dict(m.message_attributes), "receives": m.approximate_receive_count}
        for m in list(queue._messages)
    ]


def state(stack: LocalStack) -> dict[str, list[str]]:
    """Tables and queues as sorted canonical JSON: equal states mean nothing was written or sent."""
    found = {t: table_items(stack, t) for t in ("TokensTable", "AppTable")}
    found.update({q: [{"body": m["body"]} for m in queue_messages(stack, q)] for q in QUEUES})
    return {name: sorted(json.dumps(i, sort_keys=True) for i in items) for name, items in found.items()}


def installation_items(stack: LocalStack, logical_id: str, installation_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client("dynamodb").query(
        TableName=stack.physical[logical_id],
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": installation_pk(installation_id)}},
        ConsistentRead=True,
    )["Items"]
    return items


def stored_tokens(stack: LocalStack, installation_id: str) -> dict[str, str]:
    """Sort key (``SYSTEM``, ``USER#...``) -> the token stored for an installation (a refusal's record,
    ``REFUSED#SYSTEM``, holds a digest, not a token)."""
    items = installation_items(stack, "TokensTable", installation_id)
    return {i["sk"]["S"]: i["token"]["S"] for i in items if "token" in i}


def dump_outputs(stack: LocalStack) -> None:
    """What people read besides logs: the app table, job requests and the DLQ's reasons."""
    try:
        for item in table_items(stack, "AppTable"):
            LEDGER.seen(json.dumps(item, sort_keys=True), "app table")
        for logical_id in QUEUES:
            for message in queue_messages(stack, logical_id):
                LEDGER.seen(json.dumps(message, sort_keys=True, default=str), logical_id)
    except Exception as exc:
        LEDGER.seen(f"could not dump outputs: {type(exc).__name__}", "harness")


# -- job accounting ----------------------------------------------------------------------------------
def _request_ids(bodies: Sequence[str]) -> set[str]:
    ids = set()
    for body in bodies:
        try:
            ids.add(JobRequest.from_message_body(body).request_id)
        except BadJobRequest:
            continue
    return ids


def account_jobs(
    stack: LocalStack, requests: Sequence[JobRequest], done_ids: set[str], ledger: Ledger = LEDGER
) -> dict[str, list[str]]:
    """Classify every job request: done, queued, dead-lettered, or lost. Lost ones go to the ledger."""
    queued = _request_ids([m["body"] for m in queue_messages(stack, "JobsQueue")])
    dead = _request_ids([m["body"] for m in queue_messages(stack, "JobsDeadLetterQueue")])
    result: dict[str, list[str]] = {"done": [], "queued": [], "dead": [], "lost": []}
    for request in requests:
        rid = request.request_id
        where = "done" if rid in done_ids else "queued" if rid in queued else "dead" if rid in dead else "lost"
        result[where].append(rid)
    ledger.jobs += len(requests)
    ledger.lost_jobs += len(result["lost"])
    return result


# -- the worker's jobs, in a test's LocalWorld ---------------------------------------------------------
def installed_pages(world: LocalWorld, count: int, ledger: Ledger = LEDGER) -> list[JobRequest]:
    """The world's site installed (its app token registered as a secret) and ``count`` pages to snapshot."""
    token = ledger.secret(world.install())
    assert len(token) > 450  # a real RS256 app token: the secrecy scan must see secrets of real size
    return world.pages(count)


def settle(world: LocalWorld, requests: Sequence[JobRequest], ledger: Ledger = LEDGER) -> dict[str, list[str]]:
    """Count ``requests`` as tried and account for every one (a snapshot stored is a job done): none lost."""
    ledger.tried += len(requests)
    result = account_jobs(world.stack, requests, set(world.snapshot_request_ids()), ledger)
    assert result["lost"] == []
    return result


# -- the module-wide world ---------------------------------------------------------------------------
@dataclass
class World:
    stack: LocalStack
    forge: ForgeEmulator
    triggers: Any
    calls: Any

    def module_for(self, path: str) -> Any:
        return self.calls if path.startswith("/api/") else self.triggers

    def send(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Register the request's secrets, send it through the function API Gateway would route it to."""
        LEDGER.headers(headers or {})
        return invoke(self.module_for(path), event(method, path, headers, body, **options))

    def install(self, site: Site, *, lifetime_s: float = 3 * 3600, principal: str | None = None) -> None:
        """An installed site holding an app token (and a user token for ``principal``)."""
        token = LEDGER.secret(self.forge.app_token(lifetime_s=lifetime_s))
        headers = self.forge.headers(site, app_token=token)
        response = self.send("POST", "/forge/lifecycle", headers, self.forge.installed_event(site))
        assert response["statusCode"] == 200, response
        if principal:
            user = LEDGER.secret(self.forge.app_token(lifetime_s=lifetime_s, subject=principal))
            headers = self.forge.headers(site, user_token=user, principal=principal)
            assert self.send("GET", "/api/status", headers)["statusCode"] == 200

    @property
    def state(self) -> dict[str, list[str]]:
        return state(self.stack)


@contextmanager
def open_world(forge: ForgeEmulator, **parameters: str) -> Iterator[World]:
    with moto_stack(forge, **{"LogLevel": "DEBUG", **parameters}) as stack:
        calls = container(stack, "ForgeCallsFunction")
        triggers = container(stack, "ForgeTriggersFunction")
        yield World(stack=stack, forge=forge, triggers=triggers, calls=calls)


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


# -- UI routes against a Confluence site ---------------------------------------------------------------
@contextmanager
def ui_world(forge: ForgeEmulator, confluence: ConfluenceEmulator) -> Iterator[World]:
    """A module's world whose functions may send tokens to ``confluence`` (http on loopback)."""
    host = confluence.api_base_url.split("/")[2]
    with open_world(forge, AllowedApiHosts=f"api.atlassian.com,{host}") as opened:
        yield opened


@dataclass
class UiSite:
    """An installed site on a Confluence emulator, and one user of it. Every call ``headers`` makes has a
    fresh genuine FIT and the same tokens, stored once by ``open``: a UI call that stores nothing new
    leaves ``World.state`` as it was, so "nothing written" can be compared call by call."""

    world: World = field(repr=False)
    site: Site
    principal: str
    # Never in a repr: hypothesis prints its arguments when a case fails, and that would be a leak.
    app_token: str = field(repr=False)
    user_token: str = field(repr=False)

    @classmethod
    def open(cls, world: World, confluence: ConfluenceEmulator, principal: str) -> UiSite:
        base = confluence.api_base_url
        site = Site(new_installation_id(), base.rsplit("/", 1)[1], base, "https://example.atlassian.net")
        world.install(site, principal=principal)
        forge = world.forge
        opened = cls(
            world, site, principal, LEDGER.secret(forge.app_token()), LEDGER.secret(forge.app_token(subject=principal))
        )
        assert world.send("GET", "/api/status", opened.headers())["statusCode"] == 200  # its tokens stored now
        return opened

    def headers(self) -> dict[str, str]:
        return LEDGER.headers(
            self.world.forge.headers(
                self.site, app_token=self.app_token, user_token=self.user_token, principal=self.principal
            )
        )
