"""Secrecy (token rule 9), across the whole suite: no log line, response, job message, DLQ reason,
app-table item or exception text holds a token or a FIT. ``conftest.py`` moves the check to the end
of the session and repeats it when the session finishes (a leak fails the run either way)."""

from __future__ import annotations

import logging

import pytest

from local.forge_emulator import ForgeEmulator
from tests.reliability.ledger import Ledger

pytestmark = pytest.mark.reliability


def test_the_leak_check_finds_a_whole_a_partial_and_an_escaped_leak(forge: ForgeEmulator) -> None:
    probe = Ledger()
    fit = probe.secret("Bearer " + forge.sign(forge.fit_claims(forge.site())))
    token = probe.secret(forge.app_token())
    head, payload, signature = fit.split(".")
    probe.seen(f"a header segment alone is no secret: {head}")
    assert probe.leaks() == []
    probe.seen(f"exception: bad token {token}")
    probe.seen(f'{{"msg": "partial", "value": "{signature[30:90]}"}}')
    probe.seen(f"url?jwt={payload}&x=1")
    found = {leak.secret_prefix[:6] for leak in probe.leaks()}
    token_payload, token_signature = token.split(".")[1:]
    assert found == {payload[:6], signature[:6], token_payload[:6], token_signature[:6]}


def test_no_secret_was_logged_returned_or_raised(ledger: Ledger) -> None:
    logging.getLogger("forge_remote").warning("secrecy check: the collector is attached")
    assert any("secrecy check: the collector is attached" in text for _, text in ledger._outputs)
    leaks = ledger.leaks()
    assert leaks == [], "\n".join(f"{leak.secret_prefix} in {leak.where}" for leak in leaks)
