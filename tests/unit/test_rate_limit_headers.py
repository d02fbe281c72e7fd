"""Confluence's rate-limit headers (``forge_remote/confluence/rate_limits.py``): every documented form,
the Beta- spellings, which pool refused, and hostile values that drop only their own part (hypothesis:
no text makes the parser raise or return a negative number)."""

from __future__ import annotations

import itertools
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from forge_remote.confluence.rate_limits import (
    MAX_HEADER_CHARS,
    MAX_POLICIES,
    LimitKind,
    QuotaPolicy,
    RateLimitReport,
)

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z, never the wall clock
GLOBAL_POLICY = '"global-app-quota";q=65000;w=3600'
TENANT_POLICY = '"tenant-app-quota";q=5000;w=3600'
UNKNOWN_POLICY = '"per-page-write";q=10;w=60'
GLOBAL = LimitKind.GLOBAL
TENANT = LimitKind.TENANT
BURST = LimitKind.BURST


def fw(digits: str) -> str:
    """``digits`` in fullwidth forms (U+FF10...): Unicode digits, not HTTP's."""
    return "".join(chr(0xFF10 + int(d)) for d in digits)


def report(headers: dict[str, str]) -> RateLimitReport:
    return RateLimitReport.from_headers(headers, NOW)


def names(r: RateLimitReport) -> list[str]:
    return [p.name for p in r.policies]


# -- X-RateLimit-* ----------------------------------------------------------------------------------------
def test_the_x_ratelimit_headers_alone() -> None:
    r = report(
        {
            "X-RateLimit-Limit": "65000",
            "X-RateLimit-Remaining": "12000",
            "X-RateLimit-Reset": "2026-01-01T01:00Z",  # the top of the next UTC hour
            "X-RateLimit-NearLimit": "true",
        }
    )
    assert (r.limit, r.remaining, r.reset_in_s, r.near_limit) == (65000, 12000, 3600.0, True)
    assert (r.reason, r.retry_after_s, r.policies) == (None, None, ())
    assert r.seen
    # No policy says which pool X-RateLimit-Remaining counts: not guessed.
    assert r.quota_remaining(GLOBAL) is None
    assert r.quota_remaining(TENANT) is None
    assert r.kind_refused() is None


def test_no_rate_limit_header_is_not_seen() -> None:
    r = report({"Content-Type": "application/json", "X-Ratelimit": "1", "RateLimits": "2"})
    assert not r.seen
    assert r == RateLimitReport(None, None, None, None, None, False, ())
    assert not report({}).seen


def test_a_reset_in_the_past_or_garbage_is_none() -> None:
    assert report({"X-RateLimit-Reset": "2025-12-31T23:00Z"}).reset_in_s is None
    assert report({"X-RateLimit-Reset": "soon"}).reset_in_s is None
    assert report({"X-RateLimit-Reset": "2026-01-01T00:30:00+00:00"}).reset_in_s == 1800.0


# -- the structured headers -----------------------------------------------------------------------------
def test_ratelimit_policy_alone_below_80_percent() -> None:
    """Below about 80% used there is no RateLimit header: the quota is known, what is left is not."""
    r = report({"RateLimit-Policy": GLOBAL_POLICY})
    assert r.policies == (QuotaPolicy("global-app-quota", 65000, 3600, None, None),)
    assert r.policy(GLOBAL) == r.policies[0]
    assert r.policy(TENANT) is None
    assert r.quota_remaining(GLOBAL) is None
    assert r.seen


def test_the_only_policy_takes_x_ratelimit_remaining() -> None:
    r = report({"RateLimit-Policy": GLOBAL_POLICY, "X-RateLimit-Remaining": "40000"})
    assert r.quota_remaining(GLOBAL) == 40000
    assert r.quota_remaining(TENANT) is None  # no policy names the tenant pool


def test_policy_and_ratelimit_with_r_and_t() -> None:
    r = report({"RateLimit-Policy": GLOBAL_POLICY, "RateLimit": '"global-app-quota";r=11000;t=600'})
    assert r.policies == (QuotaPolicy("global-app-quota", 65000, 3600, 11000, 600.0),)
    assert r.quota_remaining(GLOBAL) == 11000


def test_the_structured_r_wins_over_x_ratelimit_remaining() -> None:
    r = report(
        {
            "RateLimit-Policy": GLOBAL_POLICY,
            "RateLimit": '"global-app-quota";r=11000;t=600',
            "X-RateLimit-Remaining": "99",
        }
    )
    assert r.quota_remaining(GLOBAL) == 11000
    assert r.remaining == 99


@pytest.mark.parametrize("order", list(itertools.permutations([GLOBAL_POLICY, TENANT_POLICY, UNKNOWN_POLICY])))
def test_several_policies_in_any_order(order: tuple[str, ...]) -> None:
    r = report(
        {
            "RateLimit-Policy": ", ".join(order),
            "RateLimit": '"tenant-app-quota";r=400;t=120, "global-app-quota";r=9000;t=600',
        }
    )
    assert names(r) == [entry.split(";")[0].strip('"') for entry in order]  # the header's order
    assert r.policy(GLOBAL) == QuotaPolicy("global-app-quota", 65000, 3600, 9000, 600.0)
    assert r.policy(TENANT) == QuotaPolicy("tenant-app-quota", 5000, 3600, 400, 120.0)
    assert r.policy(BURST) is None
    [unknown] = [p for p in r.policies if p.kind is None]
    assert unknown == QuotaPolicy("per-page-write", 10, 60, None, None)
    assert (r.quota_remaining(GLOBAL), r.quota_remaining(TENANT), r.quota_remaining(BURST)) == (9000, 400, None)


def test_with_two_pools_x_ratelimit_remaining_goes_to_the_pool_whose_quota_is_the_limit() -> None:
    both = {"RateLimit-Policy": f"{GLOBAL_POLICY}, {TENANT_POLICY}", "X-RateLimit-Remaining": "300"}
    assert report(both).quota_remaining(GLOBAL) is None  # which pool? not said: not guessed
    assert report(both).quota_remaining(TENANT) is None
    tenant = report({**both, "X-RateLimit-Limit": "5000"})
    assert (tenant.quota_remaining(TENANT), tenant.quota_remaining(GLOBAL)) == (300, None)
    named = report({**both, "RateLimit-Reason": "confluence-quota-global-based"})
    assert (named.quota_remaining(GLOBAL), named.quota_remaining(TENANT)) == (300, None)


def test_a_ratelimit_entry_without_a_policy_is_kept() -> None:
    r = report({"RateLimit-Policy": GLOBAL_POLICY, "RateLimit": '"burst-window";r=0;t=2, "global-app-quota";r=5'})
    assert r.policies == (
        QuotaPolicy("global-app-quota", 65000, 3600, 5, None),
        QuotaPolicy("burst-window", None, None, 0, 2.0),
    )
    assert r.policy(BURST) == r.policies[1]


def test_bare_token_names() -> None:
    r = report(
        {
            "RateLimit-Policy": "global-app-quota;q=65000;w=3600, tenant-app-quota;q=5000",
            "RateLimit": "tenant-app-quota;r=7",
        }
    )
    assert names(r) == ["global-app-quota", "tenant-app-quota"]
    assert r.policy(TENANT) == QuotaPolicy("tenant-app-quota", 5000, None, 7, None)


def test_unknown_parameters_are_ignored() -> None:
    r = report({"RateLimit-Policy": '"global-app-quota";q=65000;qu="concurrent-requests";w=3600;pk=:cHsdsRa894=:'})
    assert r.policies == (QuotaPolicy("global-app-quota", 65000, 3600, None, None),)


def test_a_quoted_name_may_hold_separators_and_escapes() -> None:
    r = report({"RateLimit-Policy": r'"a,b;c";q=1, "say \"hi\" \\ ok";q=2'})
    assert [(p.name, p.quota) for p in r.policies] == [("a,b;c", 1), ('say "hi" \\ ok', 2)]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("global-app-quota", GLOBAL),
        ("GLOBAL-APP-QUOTA", GLOBAL),
        ("tenant-app-quota", TENANT),
        ("confluence-burst", BURST),
        ("Burst-10s", BURST),
        ("global-app-quota-v2", None),
        ("tenant", None),
        ("per-page-write", None),
    ],
)
def test_the_kind_of_a_policy_name(name: str, kind: LimitKind | None) -> None:
    assert QuotaPolicy(name, None, None, None, None).kind is kind


# -- Beta- ---------------------------------------------------------------------------------------------
def test_the_beta_headers_alone() -> None:
    r = report(
        {
            "Beta-RateLimit-Policy": GLOBAL_POLICY,
            "Beta-RateLimit": '"global-app-quota";r=100;t=60',
            "Beta-Retry-After": "45",
        }
    )
    assert r.policies == (QuotaPolicy("global-app-quota", 65000, 3600, 100, 60.0),)
    assert r.retry_after_s == 45.0
    assert r.seen


def test_the_unprefixed_header_wins_over_the_beta_one() -> None:
    r = report(
        {
            "Beta-RateLimit-Policy": '"global-app-quota";q=1;w=1',
            "RateLimit-Policy": GLOBAL_POLICY,
            "Beta-RateLimit": '"global-app-quota";r=1',
            "RateLimit": '"global-app-quota";r=2000',
            "Beta-Retry-After": "1",
            "Retry-After": "30",
        }
    )
    assert r.policies == (QuotaPolicy("global-app-quota", 65000, 3600, 2000, None),)
    assert r.retry_after_s == 30.0


def test_each_header_falls_back_to_its_own_beta_spelling() -> None:
    r = report({"RateLimit-Policy": GLOBAL_POLICY, "Beta-RateLimit": '"global-app-quota";r=42'})
    assert r.policies == (QuotaPolicy("global-app-quota", 65000, 3600, 42, None),)


def test_a_malformed_unprefixed_header_still_wins() -> None:
    """Presence decides, as documented: a broken unprefixed header is not patched from the Beta one."""
    r = report({"RateLimit-Policy": "!!!", "Beta-RateLimit-Policy": GLOBAL_POLICY})
    assert r.policies == ()


# -- Retry-After -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("Thu, 01 Jan 2026 00:02:00 GMT", 120.0),  # an HTTP-date
        ("Wed, 31 Dec 2025 23:59:00 GMT", None),  # in the past
        ("-5", None),
        ("soon", None),
        ("", None),
        ("inf", None),
        ("nan", None),
        (fw("30"), None),  # fullwidth digits: not an HTTP number
    ],
)
def test_retry_after(value: str, seconds: float | None) -> None:
    assert report({"Retry-After": value}).retry_after_s == seconds


# -- the reason, and which pool refused ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("confluence-quota-global-based", GLOBAL),
        ("confluence-quota-tenant-based", TENANT),
        ("confluence-burst-based", BURST),
        (" Confluence-Quota-Global-Based ", GLOBAL),
        ("jira-quota-global-based", None),
        ("confluence-per-page-write", None),
        ("", None),
    ],
)
def test_the_reason(value: str, kind: LimitKind | None) -> None:
    r = report({"RateLimit-Reason": value})
    assert r.reason is kind
    assert r.kind_refused() is kind
    assert r.seen  # even an unknown reason says the server speaks rate limits


def test_kind_refused_names_the_reason_before_any_empty_pool() -> None:
    r = report(
        {
            "RateLimit-Reason": "confluence-burst-based",
            "RateLimit-Policy": f"{GLOBAL_POLICY}, {TENANT_POLICY}",
            "RateLimit": '"tenant-app-quota";r=0;t=30',
        }
    )
    assert r.kind_refused() is BURST


def test_kind_refused_without_a_reason_is_the_empty_pool() -> None:
    tenant_empty = {
        "RateLimit-Policy": f"{GLOBAL_POLICY}, {TENANT_POLICY}",
        "RateLimit": '"global-app-quota";r=100, "tenant-app-quota";r=0',
    }
    assert report(tenant_empty).kind_refused() is TENANT
    both_empty = {**tenant_empty, "RateLimit": '"tenant-app-quota";r=0, "global-app-quota";r=0'}
    assert report(both_empty).kind_refused() is GLOBAL  # the wider pool first, whatever the order
    only_pool = {"RateLimit-Policy": GLOBAL_POLICY, "X-RateLimit-Remaining": "0"}
    assert report(only_pool).kind_refused() is GLOBAL
    unknown_empty = {"RateLimit-Policy": UNKNOWN_POLICY, "RateLimit": '"per-page-write";r=0'}
    assert report(unknown_empty).kind_refused() is None


def test_kind_refused_is_none_when_nothing_says() -> None:
    assert report({"Retry-After": "10"}).kind_refused() is None
    assert report({"X-RateLimit-Remaining": "0"}).kind_refused() is None  # which pool? not guessed
    assert report({"RateLimit-Policy": GLOBAL_POLICY, "RateLimit": '"global-app-quota";r=1'}).kind_refused() is None


# -- NearLimit and header names ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "near"),
    [("true", True), ("TRUE", True), (" True ", True), ("false", False), ("yes", False), ("1", False)],
)
def test_near_limit(value: str, near: bool) -> None:
    assert report({"X-RateLimit-NearLimit": value}).near_limit is near


def test_near_limit_absent_is_false() -> None:
    assert report({"X-RateLimit-Limit": "10"}).near_limit is False


ODD_CASE = {
    "x-ratelimit-limit": "65000",
    "X-RATELIMIT-REMAINING": "10",
    "x-RateLimit-reset": "2026-01-01T01:00Z",
    "X-Ratelimit-Nearlimit": "TRUE",
    "ratelimit-reason": "confluence-quota-tenant-based",
    "RATELIMIT-POLICY": TENANT_POLICY,
    "ratelimit": '"tenant-app-quota";r=10;t=5',
    "retry-AFTER": "7",
}


def expect_odd_case(r: RateLimitReport) -> None:
    assert (r.limit, r.remaining, r.reset_in_s, r.near_limit) == (65000, 10, 3600.0, True)
    assert (r.reason, r.retry_after_s) == (TENANT, 7.0)
    assert r.policies == (QuotaPolicy("tenant-app-quota", 5000, 3600, 10, 5.0),)


def test_header_names_in_any_case_in_a_plain_dict() -> None:
    expect_odd_case(report(ODD_CASE))


def test_header_names_in_requests_case_insensitive_dict() -> None:
    expect_odd_case(RateLimitReport.from_headers(CaseInsensitiveDict(ODD_CASE), NOW))


def test_beta_names_in_any_case() -> None:
    r = report({"beta-ratelimit-policy": GLOBAL_POLICY, "BETA-RETRY-AFTER": "3"})
    assert (names(r), r.retry_after_s) == (["global-app-quota"], 3.0)


# -- malformed ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "1e3", "0x10", "", " ", fw("65000"), "1 2", "9" * 16])
def test_garbage_x_ratelimit_numbers_are_none(value: str) -> None:
    r = report({"X-RateLimit-Limit": value, "X-RateLimit-Remaining": value, "Retry-After": "5"})
    assert (r.limit, r.remaining) == (None, None)
    assert r.retry_after_s == 5.0  # the rest is still read


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('"global-app-quota";q=-5;w=3600', QuotaPolicy("global-app-quota", None, 3600, None, None)),
        ('"global-app-quota";q=65000.5;w=3600', QuotaPolicy("global-app-quota", None, 3600, None, None)),
        ('"global-app-quota";q=abc;w=', QuotaPolicy("global-app-quota", None, None, None, None)),
        ('"global-app-quota";q;w=3600', QuotaPolicy("global-app-quota", None, 3600, None, None)),
        ('"global-app-quota";q=' + fw("65") + ";w=60", QuotaPolicy("global-app-quota", None, 60, None, None)),
        ('"global-app-quota";q=1e3;w=60;=5;;', QuotaPolicy("global-app-quota", None, 60, None, None)),
        ('"global-app-quota";q=1;q=2', QuotaPolicy("global-app-quota", 2, None, None, None)),  # the last wins
        ('"global-app-quota";q=2;q=x', QuotaPolicy("global-app-quota", 2, None, None, None)),  # a bad one is dropped
        ('"global-app-quota";q=' + "9" * 16, QuotaPolicy("global-app-quota", None, None, None, None)),
    ],
)
def test_a_bad_policy_parameter_drops_only_itself(entry: str, expected: QuotaPolicy) -> None:
    assert report({"RateLimit-Policy": f"{entry}, {TENANT_POLICY}"}).policies == (
        expected,
        QuotaPolicy("tenant-app-quota", 5000, 3600, None, None),
    )


@pytest.mark.parametrize(
    ("params", "remaining", "reset"),
    [
        ("r=-1;t=-1", None, None),
        ("r=1.5;t=1.5", None, 1.5),  # t may be a decimal, r may not
        ("r=10;t=abc", 10, None),
        ("r=10;t=1e3", 10, None),
        ("r=10;t=inf", 10, None),
        ("r=10;t=.5", 10, None),
        ("r=10;t=5.", 10, None),
        ("r=0;t=0", 0, 0.0),
    ],
)
def test_a_bad_ratelimit_parameter_drops_only_itself(params: str, remaining: int | None, reset: float | None) -> None:
    r = report({"RateLimit": f'"global-app-quota";{params}'})
    assert (r.policies[0].remaining, r.policies[0].reset_in_s) == (remaining, reset)


@pytest.mark.parametrize(
    "bad",
    [
        '"tenant-app-quota;q=5000',  # unterminated: it runs to the end of the header
        '"tenant-app-quota"x;q=5000',  # text after the closing quote
        '"";q=5000',  # an empty name
        '"a\\x";q=5000',  # an escape Structured Fields do not have
        '"квота";q=5000',  # non-ASCII in a string
        "квота;q=5000",  # non-ASCII in a token
        "5000;q=5000",  # a number is not a name
        '("a" "b");q=5000',  # an inner list
        "?1;q=5000",  # a boolean
        ";q=5000",  # no name at all
    ],
)
def test_a_bad_name_drops_only_its_entry(bad: str) -> None:
    r = report({"RateLimit-Policy": f"{GLOBAL_POLICY}, {bad}"})
    assert r.policies == (QuotaPolicy("global-app-quota", 65000, 3600, None, None),)


def test_empty_entries_are_skipped() -> None:
    r = report({"RateLimit-Policy": f" ,, {GLOBAL_POLICY} , ,{TENANT_POLICY},", "RateLimit": ","})
    assert names(r) == ["global-app-quota", "tenant-app-quota"]
    assert report({"RateLimit-Policy": ""}).policies == ()


def test_a_repeated_name_keeps_its_first_entry() -> None:
    r = report(
        {
            "RateLimit-Policy": f'{GLOBAL_POLICY}, "global-app-quota";q=1',
            "RateLimit": '"global-app-quota";r=5, "global-app-quota";r=6',
        }
    )
    assert r.policies == (QuotaPolicy("global-app-quota", 65000, 3600, 5, None),)


def test_a_header_over_the_length_cap_is_ignored_whole() -> None:
    huge = GLOBAL_POLICY + ", " + '"x";q=1, ' * 1200  # about 10 KB
    assert len(huge) > 10_000
    r = report({"RateLimit-Policy": huge, "X-RateLimit-Limit": "65000", "Retry-After": "9" * 10_240})
    assert r.policies == ()
    assert r.retry_after_s is None
    assert r.limit == 65000  # the other headers still count
    assert r.seen
    at_cap = GLOBAL_POLICY + " " * (MAX_HEADER_CHARS - len(GLOBAL_POLICY))
    assert len(at_cap) == MAX_HEADER_CHARS
    assert names(report({"RateLimit-Policy": at_cap})) == ["global-app-quota"]
    assert report({"RateLimit-Policy": at_cap + " "}).policies == ()


def test_a_thousand_entries_keep_the_first_sixteen() -> None:
    many = [a + b for a in string.ascii_letters for b in string.ascii_letters + string.digits][:1000]
    value = ",".join(many)
    assert len(value) <= MAX_HEADER_CHARS
    r = report({"RateLimit-Policy": value, "RateLimit": ",".join(f"{name};r=1" for name in reversed(many[:400]))})
    assert len(r.policies) == MAX_POLICIES
    assert names(r) == many[:MAX_POLICIES]


def test_an_entry_past_the_sixteenth_of_its_header_is_not_read() -> None:
    others = ", ".join(f"p{i};r=1" for i in range(MAX_POLICIES))
    r = report({"RateLimit-Policy": GLOBAL_POLICY, "RateLimit": f'{others}, "global-app-quota";r=5'})
    assert r.policy(GLOBAL) == QuotaPolicy("global-app-quota", 65000, 3600, None, None)
    assert len(r.policies) == MAX_POLICIES


def test_a_thousand_long_entries_are_over_the_cap() -> None:
    assert report({"RateLimit-Policy": ", ".join(f'"p{i}";q={i};w=60' for i in range(1000))}).policies == ()


def test_non_ascii_drops_only_the_bad_part() -> None:
    r = report(
        {
            "RateLimit-Policy": f'"глобал";q=1, {GLOBAL_POLICY};w٣=1',
            "X-RateLimit-Limit": fw("65000"),
            "X-RateLimit-Remaining": "12",
            "RateLimit-Reason": "confluence-quota-global-based\u200b",
            "X-RateLimit-Reset": fw("2026") + "-01-01T01:00Z",
        }
    )
    assert r.policies == (QuotaPolicy("global-app-quota", 65000, 3600, None, None),)
    assert (r.limit, r.remaining, r.reason, r.reset_in_s) == (None, 12, None, None)


# -- never raises, never negative ------------------------------------------------------------------------
HEADER_NAMES = [
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-NearLimit",
    "RateLimit-Reason",
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
    "Beta-RateLimit",
    "Beta-RateLimit-Policy",
    "Beta-Retry-After",
]
FRAGMENTS = [
    '"',
    "\\",
    ",",
    ";",
    "=",
    "q",
    "w",
    "r",
    "t",
    "-",
    ".",
    "0",
    "7",
    "65000",
    " ",
    "global-app-quota",
    "é",
    "(",
    "?1",
    "e9",
    "Z",
    "T",
    ":",
]
values = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join))
odd_case = st.sampled_from(HEADER_NAMES).flatmap(
    lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c.lower() for c, u in zip(name, upper, strict=True))
    )
)


def every_number(r: RateLimitReport) -> list[float]:
    numbers = [r.limit, r.remaining, r.reset_in_s, r.retry_after_s]
    for p in r.policies:
        numbers += [p.quota, p.window_s, p.remaining, p.reset_in_s]
    return [n for n in numbers if n is not None]


@settings(max_examples=400, deadline=None)
@given(headers=st.dictionaries(odd_case, values, max_size=len(HEADER_NAMES)))
def test_any_text_never_raises_and_gives_no_negative_number(headers: dict[str, str]) -> None:
    r = RateLimitReport.from_headers(headers, NOW)
    assert all(n >= 0 for n in every_number(r)), r
    assert len(r.policies) <= MAX_POLICIES
    assert all(p.name for p in r.policies)
    assert r.seen == bool(headers)
    for kind in LimitKind:
        remaining = r.quota_remaining(kind)
        assert remaining is None or remaining >= 0
    assert r.kind_refused() in (None, *LimitKind)
