"""Where a token may be sent (``confluence/api_hosts.py``, token rule 8): what the allow-list refuses
beyond the host, since ``urlsplit`` and HTTP clients read a URL more leniently than it looks."""

from __future__ import annotations

import pytest

from forge_remote.confluence.api_hosts import is_loopback_host, require_allowed_api_base
from forge_remote.errors import DisallowedApiBaseUrl

ALLOWED = ["api.atlassian.com"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://api.atlassian.com/ex/confluence/a\tb", "whitespace or control"),
        (" https://api.atlassian.com/ex", "whitespace or control"),
        ("https://api.atlassian.com/ex/\x00", "whitespace or control"),
        ("https://api.atlassian.com/ex/confluencé", "non-ASCII"),
        ("https://api.atlassian.com/ex/../admin", "dot segments"),
        ("https://api.atlassian.com/ex/%2e%2e/admin", "dot segments"),
        ("https://api.atlassian.com//ex", "dot segments"),
        ("https://api.atlassian.com/ex#frag", "not a plain base URL"),
        ("https://@api.atlassian.com/ex", "not a plain base URL"),
        ("https://[api.atlassian.com/ex", "not a valid URL"),
        ("https:///ex", "not a plain base URL"),
    ],
)
def test_a_url_that_could_be_read_two_ways_is_refused(url: str, reason: str) -> None:
    with pytest.raises(DisallowedApiBaseUrl, match=reason):
        require_allowed_api_base(url, ALLOWED)


def test_an_allowed_url_comes_back_as_given_without_its_trailing_slash() -> None:
    url = "https://api.atlassian.com/ex/confluence/0f1e-2d3c/"
    assert require_allowed_api_base(url, ALLOWED) == url[:-1]


def test_allow_list_entries_are_trimmed_and_case_insensitive_and_may_name_a_port() -> None:
    assert require_allowed_api_base("https://Example.COM:8443/x", [" example.com:8443 ", ""]) == (
        "https://Example.COM:8443/x"
    )
    with pytest.raises(DisallowedApiBaseUrl, match="not in ALLOWED_API_HOSTS"):
        require_allowed_api_base("https://example.com:8443/x", ["example.com"])  # a bare host means port 443


def test_the_refusal_names_the_host_but_nothing_else_of_the_url() -> None:
    with pytest.raises(DisallowedApiBaseUrl) as refused:
        require_allowed_api_base("https://evil.example/ex/secret-path", ALLOWED)
    assert "evil.example" in refused.value.reason
    assert "secret-path" not in refused.value.reason


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("10.0.0.1", False),
        ("", False),
    ],
)
def test_loopback_means_a_loopback_address_not_a_name_that_starts_like_one(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_plain_http_to_ipv6_loopback_is_the_local_stack() -> None:
    assert require_allowed_api_base("http://[::1]:8787/ex", ["::1:8787"]) == "http://[::1]:8787/ex"
