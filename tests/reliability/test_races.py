"""Races against moto: many containers' keepalives with shuffled expiries, and uninstall racing a
keepalive. The stored token is always the newest; no token survives an uninstall."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from types import ModuleType

import boto3
import jwt
import pytest

from local.forge_emulator import ForgeEmulator
from local.stack import LocalStack
from tests.conftest import FUNCTIONS, Gateway
from tests.reliability.conftest import Ledger

pytestmark = pytest.mark.reliability


def containers(stack: LocalStack, count: int) -> list[ModuleType]:
    """Several independent copies of the triggers function, as Lambda would run side by side."""
    from local.handlers import load_handler

    return [
        load_handler(
            "ForgeTriggersFunction", FUNCTIONS["ForgeTriggersFunction"], stack.environment("ForgeTriggersFunction")
        )
        for _ in range(count)
    ]


def stored_tokens(stack: LocalStack, installation_id: str) -> list[str]:
    items = boto3.client("dynamodb").query(
        TableName=stack.physical["TokensTable"],
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"INST#{installation_id}"}},
    )["Items"]
    return [i["token"]["S"] for i in items]


@pytest.mark.usefixtures("atomic_dynamodb")
def test_concurrent_keepalives_leave_the_newest_token(stack: LocalStack, forge: ForgeEmulator, ledger: Ledger) -> None:
    site = forge.site()
    lifetimes = [3600 + 97 * i for i in range(48)]
    random.Random(11).shuffle(lifetimes)
    tokens = [ledger.secret(forge.app_token(lifetime_s=s)) for s in lifetimes]
    newest = max(tokens, key=lambda t: jwt.decode(t, options={"verify_signature": False})["exp"])
    fleet = containers(stack, 6)
    barrier = threading.Barrier(len(fleet))
    statuses: list[int] = []

    def run(module: ModuleType, mine: list[str]) -> None:
        gateway = Gateway(module, module)
        barrier.wait()
        for token in mine:
            statuses.append(gateway("POST", "/forge/keepalive", forge.headers(site, system_token=token))["statusCode"])

    threads = [threading.Thread(target=run, args=(m, tokens[i :: len(fleet)])) for i, m in enumerate(fleet)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.tried += len(tokens)
    assert statuses == [204] * len(tokens)
    assert stored_tokens(stack, site.installation_id) == [newest]


@pytest.mark.usefixtures("atomic_dynamodb")
@pytest.mark.parametrize("round_", range(12))
def test_uninstall_racing_a_keepalive_leaves_no_token(
    stack: LocalStack, forge: ForgeEmulator, handler: Callable[[str], ModuleType], ledger: Ledger, round_: int
) -> None:
    site = forge.site()
    installer, racer = containers(stack, 2)
    Gateway(installer, installer)(
        "POST",
        "/forge/lifecycle",
        forge.headers(site, system_token=ledger.secret(forge.app_token())),
        forge.installed_event(site),
    )
    barrier = threading.Barrier(2)
    late_token = ledger.secret(forge.app_token(lifetime_s=4 * 3600))

    def uninstall() -> None:
        barrier.wait()
        Gateway(installer, installer)("POST", "/forge/uninstall", forge.headers(site), {})

    def keepalive() -> None:
        barrier.wait()
        if round_ % 2:
            threading.Event().wait(0.001 * round_)  # vary the interleaving a little
        Gateway(racer, racer)("POST", "/forge/keepalive", forge.headers(site, system_token=late_token))

    threads = [threading.Thread(target=uninstall), threading.Thread(target=keepalive)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.tried += 1
    assert stored_tokens(stack, site.installation_id) == []
