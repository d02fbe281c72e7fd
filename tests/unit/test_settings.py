"""Settings from the environment (``config.py``): what each variable accepts, and that a bad one fails at
cold start naming the variable."""

from __future__ import annotations

import pytest

from forge_remote.config import (
    DEFAULT_JOB_MAX_RECEIVES,
    DEFAULT_JOB_QUEUE_MAX_RECEIVES,
    DEFAULT_OFFLINE_TOKEN_CONTEXT_ID,
    Settings,
    context_id_template,
    jwks_url_setting,
)
from forge_remote.errors import ConfigurationError

APP = "5c7bd2a4-0f1e-4d3b-9a6c-2e8f1b7d4a90"
BASE = {"FORGE_APP_ID": APP, "TOKENS_TABLE": "tokens", "APP_TABLE": "app"}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_blank_optional_variables_mean_their_defaults() -> None:
    loaded = settings(JOBS_QUEUE_URL="  ", TOKEN_MIN_VALIDITY_S="", OFFLINE_TOKEN_CONTEXT_ID=" ")
    assert loaded.jobs_queue_url is None
    assert loaded.token_min_validity_s == 600
    assert loaded.offline_token_context_id == DEFAULT_OFFLINE_TOKEN_CONTEXT_ID
    assert (loaded.job_max_receives, loaded.job_queue_max_receives) == (
        DEFAULT_JOB_MAX_RECEIVES,
        DEFAULT_JOB_QUEUE_MAX_RECEIVES,
    )


def test_the_queue_limit_follows_a_higher_attempt_count() -> None:
    assert settings(JOB_MAX_RECEIVES="50").job_queue_max_receives == 50
    assert settings(JOB_MAX_RECEIVES="5", JOB_QUEUE_MAX_RECEIVES="8").job_queue_max_receives == 8


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"JOB_MAX_RECEIVES": "0"}, "JOB_MAX_RECEIVES"),
        ({"JOB_MAX_RECEIVES": "1001"}, "JOB_MAX_RECEIVES"),
        ({"JOB_MAX_RECEIVES": "ten"}, "JOB_MAX_RECEIVES"),
        ({"JOB_MAX_RECEIVES": "20", "JOB_QUEUE_MAX_RECEIVES": "10"}, "JOB_QUEUE_MAX_RECEIVES"),
        ({"TOKEN_MIN_VALIDITY_S": "-1"}, "TOKEN_MIN_VALIDITY_S"),
        ({"OFFLINE_TOKEN_CONTEXT_ID": "ari:cloud:confluence::site/no-placeholder"}, "OFFLINE_TOKEN_CONTEXT_ID"),
        ({"APP_TABLE": " "}, "APP_TABLE"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        settings(**env)


def test_a_setting_only_some_functions_need_is_required_where_it_is_used() -> None:
    loaded = settings(JOBS_QUEUE_URL="https://sqs.example/q")
    assert loaded.required("jobs_queue_url") == "https://sqs.example/q"
    with pytest.raises(ConfigurationError, match="JOBS_DLQ_URL is required"):
        loaded.required("jobs_dlq_url")
    assert not hasattr(loaded, "jobs_bus")  # job requests go straight to the queue: there is no bus


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost@attacker.example/jwks.json",
        "http://127.0.0.1.attacker.example/jwks.json",
        "https://forge.example/jwks.json#x",
        "https://forge.example:99999/jwks.json",
        "https://forge.example/jw ks.json",
        "ftp://forge.example/jwks.json",
    ],
)
def test_the_jwks_url_is_checked_on_the_parsed_url(url: str) -> None:
    with pytest.raises(ConfigurationError, match="FORGE_JWKS_URL"):
        jwks_url_setting(url)


def test_the_jwks_url_may_be_plain_http_on_loopback_only() -> None:
    assert jwks_url_setting("http://127.0.0.1:9000/jwks.json") == "http://127.0.0.1:9000/jwks.json"
    assert jwks_url_setting("https://forge.example/jwks.json") == "https://forge.example/jwks.json"


@pytest.mark.parametrize(
    "template",
    [
        "ari:cloud:confluence:{cloudId}:workspace/{cloudId}",
        "ari:cloud:confluence::site/{cloudId}",
    ],
)
def test_an_offline_context_template_names_the_cloud_id(template: str) -> None:
    assert context_id_template(template) == template


@pytest.mark.parametrize(
    "template",
    ["cloud:{cloudId}", "ari:{cloudId}:{siteId}", "ari:{cloudId} x", "ari:" + "x" * 300 + "{cloudId}", "ari:{cloudid}"],
)
def test_a_malformed_offline_context_template_fails_loudly(template: str) -> None:
    with pytest.raises(ConfigurationError):
        context_id_template(template)
