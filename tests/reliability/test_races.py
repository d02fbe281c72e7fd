"""Races, with threads calling the real handlers, each thread its own container (module instance, with
its own DynamoDB client and token cache):

- many keepalives with shuffled token expiries for one installation: the stored token never goes
  back in time while they run, and the newest one is stored at the end;
- uninstall racing a keepalive, a lifecycle event and a UI call, round after round: no token survives;
- the same product event delivered twice at once (Forge duplicates deliveries): one job, no crash.

moto's in-process DynamoDB checks a condition and then writes without a lock; ``atomic_dynamodb``
(tests/conftest.py) serialises its requests so that each is atomic, as DynamoDB's are. Every
interleaving of *requests* stays possible; the tests check the interleavings they get.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from forge_remote import aws
from forge_remote.inbound.api import lower_headers
from forge_remote.storage.installations import InstallationRegistry
from forge_remote.storage.table_keys import APP_TOKEN_SK, INSTALLATION_SK
from forge_remote.tokens.store import TokenStore
from local.forge_emulator import ForgeEmulator, Site
from local.stack import LocalStack
from tests.reliability.harness import (
    container,
    event,
    installation_items,
    invoke,
    queue_messages,
    stored_tokens,
)
from tests.reliability.ledger import Ledger
from tests.support import body_of

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("atomic_dynamodb", "one_metric_set_at_a_time")]


@pytest.fixture
def one_metric_set_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads stand in for containers here, but Powertools keeps one metric set per process, shared by
    every ``Metrics``: a flush in one thread can empty it between another's check and serialisation
    (``Must contain at least one metric``). Lambda never runs two invocations in one process, so
    adding and flushing metrics are made atomic; the token writes still race freely."""
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

    lock = threading.RLock()
    for name in ("add_metric", "flush_metrics"):
        original = getattr(AmazonCloudWatchEMFProvider, name)

        def locked(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(AmazonCloudWatchEMFProvider, name, locked)


PRINCIPAL = "557058:race-user-0001"


def exp_of(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


def run_threads(*targets: Callable[[], Any]) -> None:
    """Start together (barrier), join all, re-raise the first error a thread hit."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def run(target: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def keepalive(module: Any, forge: ForgeEmulator, site: Site, token: str, ledger: Ledger) -> int:
    headers = ledger.headers(forge.headers(site, app_token=token))
    return int(invoke(module, event("POST", "/forge/keepalive", headers, {}))["statusCode"])


def keepalive_capture(module: Any, forge: ForgeEmulator, site: Site, token: str, ledger: Ledger) -> str:
    """What the keepalive route does with a delivery, below Powertools' resolver: the container's own
    FIT verifier, then its token capture. Threads cannot share a resolver call here: Powertools keeps
    the event being handled on its ``BaseRouter`` class, one per process, and Lambda runs one
    invocation per process, so a thread standing in for a container would read another's headers."""
    headers = ledger.headers(forge.headers(site, app_token=token))
    call = module.wiring.verifier.verify(lower_headers({"headers": headers}))
    return str(module.wiring.capture_tokens(call, delivered_by="keepalive")["system"])


def test_concurrent_keepalives_never_step_back_and_leave_the_newest_token(
    stack: LocalStack, forge: ForgeEmulator, ledger: Ledger
) -> None:
    site = forge.site()
    lifetimes = [2 * 3600 + 53 * i for i in range(60)]
    random.Random(11).shuffle(lifetimes)
    tokens = [ledger.secret(forge.app_token(lifetime_s=s)) for s in lifetimes]
    tokens += random.Random(12).sample(tokens, 12)  # Forge re-delivers tokens it cached
    newest = max(tokens, key=exp_of)
    fleet = [container(stack, "ForgeTriggersFunction") for _ in range(6)]
    observed: list[float] = []
    done = threading.Event()
    reader = TokenStore(aws.dynamodb(), stack.physical["TokensTable"])

    outcomes: list[str] = []

    def sender(module: Any, mine: list[str]) -> Callable[[], None]:
        def run() -> None:
            outcomes.extend(keepalive_capture(module, forge, site, token, ledger) for token in mine)

        return run

    def watch() -> None:
        while not done.wait(0.002):  # a pause between reads: the writers share moto's lock with us
            for state in reader.states(site.installation_id):
                observed.append(state.expires_at)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run_threads(*(sender(m, tokens[i :: len(fleet)]) for i, m in enumerate(fleet)))
    finally:
        done.set()
        watcher.join()
    ledger.tried += len(tokens)
    assert len(outcomes) == len(tokens)
    assert set(outcomes) <= {"stored", "not_newer", "already_stored"}, outcomes
    assert outcomes.count("stored") >= 1
    assert observed == sorted(observed), "the stored token went back in time"
    assert stored_tokens(stack, site.installation_id) == {APP_TOKEN_SK: newest}


def test_control_without_the_condition_the_newest_token_is_lost(
    stack: LocalStack, forge: ForgeEmulator, monkeypatch: pytest.MonkeyPatch, ledger: Ledger
) -> None:
    """The check above can fail: with the "newest wins" condition (and the read that saves writes) removed,
    an older token replaces it."""
    original = TokenStore._write
    monkeypatch.setattr(TokenStore, "_held", lambda self, installation_id, sk: (None, None))

    def unconditional(self: TokenStore, put: dict[str, Any], guard: Any) -> Any:
        put = {k: v for k, v in put.items() if k not in ("ConditionExpression", "ExpressionAttributeValues")}
        return original(self, put, guard)

    monkeypatch.setattr(TokenStore, "_write", unconditional)
    site = forge.site()
    module = container(stack, "ForgeTriggersFunction")
    newer, older = (ledger.secret(forge.app_token(lifetime_s=s)) for s in (3 * 3600, 2 * 3600))
    assert keepalive(module, forge, site, newer, ledger) == 204
    assert keepalive(module, forge, site, older, ledger) == 204
    assert stored_tokens(stack, site.installation_id) != {APP_TOKEN_SK: newer}


def test_control_without_the_installed_guard_a_late_keepalive_leaves_a_token(
    stack: LocalStack, forge: ForgeEmulator, monkeypatch: pytest.MonkeyPatch, ledger: Ledger
) -> None:
    """The check below can fail: without the "still installed" guard, a keepalive after the uninstall stores."""
    monkeypatch.setattr(InstallationRegistry, "active_guard", lambda self, invocation: None)
    site = forge.site()
    module = container(stack, "ForgeTriggersFunction")
    assert (
        invoke(module, event("POST", "/forge/uninstall", ledger.headers(forge.headers(site)), {}))["statusCode"] == 200
    )
    assert keepalive(module, forge, site, ledger.secret(forge.app_token()), ledger) == 204
    assert stored_tokens(stack, site.installation_id) != {}


ROUNDS = 20


def test_uninstall_racing_keepalive_lifecycle_and_ui_calls_leaves_no_token(
    stack: LocalStack, forge: ForgeEmulator, ledger: Ledger
) -> None:
    uninstaller, keeper, installer = (container(stack, "ForgeTriggersFunction") for _ in range(3))
    ui = container(stack, "ForgeCallsFunction")

    def call(module: Any, method: str, path: str, headers: dict[str, str], body: Any, delay: float) -> None:
        threading.Event().wait(delay)  # shuffles the interleavings a little; nothing asserts on time
        invoke(module, event(method, path, ledger.headers(headers), body))

    survivors: dict[int, list[str]] = {}
    for round_ in range(ROUNDS):
        site = forge.site()
        installed = forge.headers(site, app_token=forge.app_token())
        assert (
            invoke(
                installer, event("POST", "/forge/lifecycle", ledger.headers(installed), forge.installed_event(site))
            )["statusCode"]
            == 200
        )
        later = 3 * 3600 + 60 * round_  # newer than the installed token: each racer would store its own
        newer = [forge.app_token(lifetime_s=later + i) for i in range(3)]
        ui_headers = forge.headers(
            site,
            app_token=newer[2],
            user_token=forge.app_token(lifetime_s=later, subject=PRINCIPAL),
            principal=PRINCIPAL,
        )
        racers = [
            (uninstaller, "POST", "/forge/uninstall", forge.headers(site), {}),
            (keeper, "POST", "/forge/keepalive", forge.headers(site, app_token=newer[0]), {}),
            (
                installer,
                "POST",
                "/forge/lifecycle",
                forge.headers(site, app_token=newer[1]),
                forge.installed_event(site, "avi:forge:upgraded:app"),
            ),
            (ui, "GET", "/api/status", ui_headers, None),
        ]
        rng = random.Random(round_)
        run_threads(*(functools.partial(call, *racer, rng.random() * 0.003) for racer in racers))
        ledger.tried += len(racers)
        left = stored_tokens(stack, site.installation_id)
        if left:
            survivors[round_] = sorted(left)
        [registry] = [
            i for i in installation_items(stack, "AppTable", site.installation_id) if i["sk"]["S"] == INSTALLATION_SK
        ]
        assert registry["status"]["S"] == "uninstalled"
    assert survivors == {}, f"tokens survived the uninstall (round: sort keys): {survivors}"


def test_a_product_event_delivered_twice_at_once_queues_one_job_and_answers_both(
    stack: LocalStack, forge: ForgeEmulator, site: Site, ledger: Ledger
) -> None:
    """Forge may deliver an event twice; here the duplicate arrives while the first is putting its job.

    The interleaving is made deterministic: the second delivery runs from inside the first one's
    SendMessageBatch call (another container, same moment as far as DynamoDB can tell).
    """
    first, second = container(stack, "ForgeTriggersFunction"), container(stack, "ForgeTriggersFunction")
    body = forge.page_event("8080", "ENG")
    answers: list[Any] = []

    def duplicate(**_: Any) -> None:
        if answers:
            return
        try:
            answers.append(invoke(second, event("POST", "/forge/events", ledger.headers(forge.headers(site)), body)))
        except Exception as exc:
            ledger.seen(repr(exc), "exception")
            answers.append(exc)

    client = aws.sqs()
    client.meta.events.register("before-call.sqs.SendMessageBatch", duplicate)
    try:
        response = invoke(first, event("POST", "/forge/events", ledger.headers(forge.headers(site)), body))
    finally:
        client.meta.events.unregister("before-call.sqs.SendMessageBatch", duplicate)
    ledger.tried += 2
    assert response["statusCode"] == 202
    assert len(queue_messages(stack, "JobsQueue")) == 1  # exactly once
    [other] = answers
    assert not isinstance(other, Exception), f"the duplicate delivery crashed the handler: {type(other).__name__}"
    assert other["statusCode"] < 500, other
    assert isinstance(body_of(other), dict)
    ledger.rejected += 1
