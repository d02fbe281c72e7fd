"""A job's bad arguments are told in a sentence a site administrator understands (the DLQ reason, the
worker's log, the status page's dead-letter section): what the job needed and what it was given, never a
bare ``KeyError`` text, never a secret or an account id, and never longer than a bound."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from forge_remote.errors import BadJobRequest
from forge_remote.jobs.contract import (
    MAX_ARGUMENT_REASON_CHARS,
    JobContext,
    JobRegistry,
    JobRequest,
    argument_reason,
    required,
    shown,
)
from tests.support import ROOT

INSTALLATION = "ari:cloud:ecosystem::installation/7f1c0a52-9a2b-4c1e-8e55-0d4a3b2c1f00"
WORKER = ROOT / "functions" / "confluence_worker"
SHIPPED = {
    "page-snapshot": "page_snapshot",
    "space-digest": "space_digest",
    "user-digest": "user_digest",
    "personal-data-report": "personal_data_report",
}
ANOTHER_ACCOUNT = "557058:0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
A_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiI1NTcwNTgifQ.c2lnbmF0dXJlLW9mLWEtdG9rZW4"


@pytest.fixture(scope="module")
def parsers() -> Iterator[dict[str, Callable[[Mapping[str, Any]], Any]]]:
    """Each shipped job's ``parse_args``, from the worker's own package."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(WORKER))
        yield {
            name: importlib.import_module(f"confluence_jobs.{module}").parse_args for name, module in SHIPPED.items()
        }


def refused(name: str, parse_args: Callable[[Mapping[str, Any]], Any], args: dict[str, Any]) -> str:
    """The reason the worker's job wrapper gives for ``args``; the job itself never runs."""
    registry = JobRegistry()
    ran: list[Any] = []
    registry.job(name, parse_args)(lambda _ctx, parsed: ran.append(parsed))
    request = JobRequest(job=name, installation_id=INSTALLATION, args=args)
    ctx = JobContext(request=request, api_base_url="", confluence=None, results=None, remaining_ms=lambda: 0)  # type: ignore[arg-type]
    with pytest.raises(BadJobRequest) as refusal:
        registry.get(name)(ctx)
    assert ran == []
    return refusal.value.reason


@pytest.mark.parametrize(
    ("job", "args", "said"),
    [
        (
            "page-snapshot",
            {},
            "the job needs the argument pageId (the id of the page to snapshot), which the request did not give",
        ),
        ("page-snapshot", {"pageId": "abc"}, "pageId must be a page id (digits, at most 20), not 'abc'"),
        ("page-snapshot", {"pageId": "12; DROP"}, "pageId must be a page id (digits, at most 20), not '12; DROP'"),
        ("page-snapshot", {"pageId": "²"}, "pageId must be a page id (digits, at most 20), not a text of 1 character"),
        ("page-snapshot", {"pageId": True}, "pageId must be a page id (digits, at most 20), not true"),
        ("page-snapshot", {"pageId": [12]}, "pageId must be a page id (digits, at most 20), not a list of 1 item"),
        (
            "page-snapshot",
            {"pageId": "1" * 21},
            "pageId must be a page id (digits, at most 20), not a text of 21 characters",
        ),
        (
            "page-snapshot",
            {"pageId": 12, "spaceKey": ""},
            "spaceKey must be a space key (a text of 1 to 255 characters), not an empty text",
        ),
        (
            "page-snapshot",
            {"pageId": 12, "version": "2"},
            "version must be the page's version number (a whole number), not '2'",
        ),
        (
            "space-digest",
            {"spaceKeys": "ENG"},
            "spaceKeys must be a list of space keys (the spaces to digest), not 'ENG'",
        ),
        (
            "space-digest",
            {"spaceKeys": ["ENG", 5]},
            "spaceKeys must list space keys (texts of 1 to 255 characters); its item 2 is 5",
        ),
        (
            "space-digest",
            {"spaceKeys": [f"S{i}" for i in range(101)]},
            "spaceKeys lists 101 spaces, and a digest takes at most 100",
        ),
        (
            "space-digest",
            {"hours": 0},
            "hours must be a whole number from 1 to 744 (how far back the digest looks), not 0",
        ),
        (
            "space-digest",
            {"hours": "24"},
            "hours must be a whole number from 1 to 744 (how far back the digest looks), not '24'",
        ),
        (
            "user-digest",
            {"days": 90},
            "days must be a whole number from 1 to 31 (how far back the digest looks), not 90",
        ),
        (
            "user-digest",
            {"accountId": 7},
            "accountId must be the Atlassian account id of the user the digest is for; it is a number",
        ),
        ("personal-data-report", {"days": 7}, "the job takes no arguments, and the request gave 1 (days)"),
    ],
)
def test_each_shipped_job_says_what_it_needed_and_what_it_was_given(
    parsers: dict[str, Callable[[Mapping[str, Any]], Any]], job: str, args: dict[str, Any], said: str
) -> None:
    assert refused(job, parsers[job], args) == f"bad arguments for job {job}: {said}"


def test_good_arguments_still_parse(parsers: dict[str, Callable[[Mapping[str, Any]], Any]]) -> None:
    snapshot = parsers["page-snapshot"]
    assert snapshot({"pageId": "12"}) == snapshot({"pageId": 12})
    assert snapshot({"pageId": "12", "spaceKey": "ENG", "version": 3}).version == 3
    assert parsers["space-digest"]({"spaceKeys": ["ENG"], "hours": 744}).space_keys == ("ENG",)
    assert parsers["user-digest"]({"accountId": ANOTHER_ACCOUNT, "days": 31}).account_id == ANOTHER_ACCOUNT
    assert parsers["personal-data-report"]({}) is None


@pytest.mark.parametrize("given", [ANOTHER_ACCOUNT, "557058:x y", f"{ANOTHER_ACCOUNT}/../{A_TOKEN}", A_TOKEN + " "])
def test_an_account_id_argument_is_never_repeated(
    parsers: dict[str, Callable[[Mapping[str, Any]], Any]], given: str
) -> None:
    """user-digest's ``accountId`` is somebody's account id, or almost: no part of it is echoed."""
    reason = refused("user-digest", parsers["user-digest"], {"accountId": given + "!"})
    assert reason == (
        "bad arguments for job user-digest: accountId must be the Atlassian account id of the user the "
        "digest is for; it is a text that is not one"
    )


@pytest.mark.parametrize("value", [ANOTHER_ACCOUNT, "557058:x", A_TOKEN, "5b10ac8d82e05b22cc7d4ef5", "it's"])
def test_shown_quotes_only_short_plain_values(value: str) -> None:
    assert value not in shown(value)
    assert shown(value).startswith(("a text of", "an empty text"))


def test_a_parser_that_echoes_its_input_has_the_secrets_cut_out() -> None:
    """A job author's message may quote what it was given; the reason does not."""

    def parse(args: Mapping[str, Any]) -> str:
        raise ValueError(f"label {args['label']!r} is not allowed for {args['owner']} (see {args['note']})")

    args = {"label": A_TOKEN, "owner": "557058:x", "note": "5b10ac8d82e05b22cc7d4ef5"}
    reason = refused("label-audit", parse, args)
    assert reason == "bad arguments for job label-audit: label '[hidden]' is not allowed for [hidden] (see [hidden])"
    for piece in (*A_TOKEN.split("."), "557058", "5b10ac8d"):
        assert piece not in reason


def test_a_python_error_about_an_id_it_was_not_given_hides_the_id_too() -> None:
    """No argument holds it, but it has the shape of an account id or a token: cut out."""
    reason = argument_reason("label-audit", ValueError("invalid literal for int(): '5b10ac8d82e05b22cc7d4ef5'"), {})
    assert reason == "bad arguments for job label-audit: invalid literal for int(): '[hidden]'"


def test_names_and_words_are_kept_even_when_long() -> None:
    error = ValueError("includeArchivedPages must be true or false; personal-data-report needs none")
    reason = argument_reason("label-audit", error, {"includeArchivedPages": "sometimes-perhaps-never"})
    assert reason.endswith(": includeArchivedPages must be true or false; personal-data-report needs none")


def test_a_bare_key_error_becomes_a_sentence() -> None:
    """README's ``args["label"]``: the job names the argument, with what it is for when it says so."""

    def bare(args: Mapping[str, Any]) -> str:
        return str(args["label"])

    def described(args: Mapping[str, Any]) -> str:
        return str(required(args, "label", "the label to audit"))

    assert refused("label-audit", bare, {}) == (
        "bad arguments for job label-audit: the job needs the argument label, which the request did not give"
    )
    assert refused("label-audit", described, {"labels": ["a"]}) == (
        "bad arguments for job label-audit: the job needs the argument label (the label to audit), which the "
        "request did not give"
    )


@pytest.mark.parametrize(
    ("error", "args"),
    [
        (KeyError("weekly"), {"mode": "weekly"}),  # MODES[args["mode"]]: a value, not a missing argument
        (KeyError("key"), {"key": {"nested": 1}}),  # args["key"]["other"] or the like
    ],
)
def test_a_key_error_about_a_value_does_not_claim_an_argument_is_missing(error: KeyError, args: dict[str, Any]) -> None:
    assert argument_reason("label-audit", error, args) == (
        "bad arguments for job label-audit: one of its arguments has a value the job does not know what to do with"
    )


@pytest.mark.parametrize("key", [ANOTHER_ACCOUNT, "5b10ac8d82e05b22cc7d4ef5", A_TOKEN, 3, None])
def test_a_key_error_naming_no_readable_argument_names_none(key: object) -> None:
    assert argument_reason("label-audit", KeyError(key), {}) == (
        "bad arguments for job label-audit: the job needs an argument that the request did not give"
    )


def test_the_reason_is_bounded_and_a_message_of_nothing_still_says_something() -> None:
    prefix = "bad arguments for job label-audit: "
    long = argument_reason("label-audit", ValueError("word " * 10_000), {})
    assert len(prefix) + MAX_ARGUMENT_REASON_CHARS - 10 <= len(long) <= len(prefix) + MAX_ARGUMENT_REASON_CHARS
    assert long.endswith(" word...")  # cut between words, and says so
    unbroken = argument_reason("label-audit", ValueError("w" * 10_000), {})
    assert len(unbroken) == len(prefix) + MAX_ARGUMENT_REASON_CHARS
    assert argument_reason("label-audit", TypeError(), {}) == f"{prefix}they are not what the job takes (TypeError)"


def test_argument_names_of_an_unexpected_argument_are_listed_readably(
    parsers: dict[str, Callable[[Mapping[str, Any]], Any]],
) -> None:
    args = {"days": 1, "spaceKeys": [], ANOTHER_ACCOUNT: 1, **{f"extra{c}": 1 for c in "abcdef"}}
    reason = refused("personal-data-report", parsers["personal-data-report"], args)
    assert reason == (
        "bad arguments for job personal-data-report: the job takes no arguments, and the request gave 9 "
        "(days, extraa, extrab, extrac, extrad, 4 more)"
    )
