"""Configuration from environment variables (the table in the README's "Configure" section).

Read once per container through ``Settings.from_env()``; every value is validated so that a
misconfigured deployment fails loudly at cold start rather than on the first request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from forge_remote.confluence.api_hosts import is_loopback_host
from forge_remote.errors import ConfigurationError

PRODUCTION_JWKS_URL = "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json"
APP_ARI_PREFIX = "ari:cloud:ecosystem::app/"
DEFAULT_ALLOWED_API_HOSTS = ("api.atlassian.com",)
DEFAULT_TOKEN_MIN_VALIDITY_S = 600
DEFAULT_JOB_MAX_RECEIVES = 10  # attempts before the DLQ: about 2.5 h of waiting for a token
# The jobs queue's maxReceiveCount: room above the attempts for receives that are not attempts
# (wake-ups, restarts for invocation time), so that SQS never moves a job sooner than the worker would.
DEFAULT_JOB_QUEUE_MAX_RECEIVES = 30
# Offline user impersonation (partly preview at Atlassian): where the offlineUserAuthToken mutation is
# sent, and the context id it names. Both are settings because Atlassian may still move them.
DEFAULT_FORGE_GRAPHQL_URL = "https://api.atlassian.com/graphql"
DEFAULT_OFFLINE_TOKEN_CONTEXT_ID = "ari:cloud:confluence:{cloudId}:workspace/{cloudId}"  # noqa: S105 (an ARI)
CLOUD_ID_PLACEHOLDER = "{cloudId}"
# Settings some functions need and others do not (the template gives every function JOBS_QUEUE_URL and
# the worker JOBS_DLQ_URL); each function requires the ones it uses at cold start.
OPTIONAL_VARIABLES = {"jobs_queue_url": "JOBS_QUEUE_URL", "jobs_dlq_url": "JOBS_DLQ_URL"}

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def app_ari(app_id: str) -> str:
    """The FIT audience for an app id given bare (uuid) or as a full ARI."""
    app_id = app_id.strip()
    bare = app_id[len(APP_ARI_PREFIX) :] if app_id.startswith(APP_ARI_PREFIX) else app_id
    if not _UUID.fullmatch(bare):
        raise ConfigurationError("FORGE_APP_ID must be an app uuid or ari:cloud:ecosystem::app/<uuid>")
    return APP_ARI_PREFIX + bare.lower()


def jwks_url_setting(url: str) -> str:
    """``FORGE_JWKS_URL``, parsed: https, or plain http on a real loopback host (the local stack).

    The JWKS is the root of trust, so this is checked on the parsed URL, not by prefix:
    ``http://localhost@attacker.example/`` and ``http://127.0.0.1.attacker.example/`` are refused.
    """
    problem = "FORGE_JWKS_URL must be https (or http on a loopback host for the local stack), without userinfo"
    if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigurationError(problem)
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise ConfigurationError(problem) from exc
    if not host or "@" in parts.netloc or parts.fragment:
        raise ConfigurationError(problem)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host)):
        return url
    raise ConfigurationError(problem)


def context_id_template(template: str) -> str:
    """``OFFLINE_TOKEN_CONTEXT_ID``: an ARI naming ``{cloudId}``, with no other placeholder or space.

    Checked at cold start so that a typo fails loudly; whether the GraphQL URL may receive the app
    token is checked where it is used (``tokens/offline.py``), against ``ALLOWED_API_HOSTS``.
    """
    problem = "OFFLINE_TOKEN_CONTEXT_ID must be an ari:... template containing {cloudId}"
    rest = template.replace(CLOUD_ID_PLACEHOLDER, "")
    if (
        not template.startswith("ari:")
        or CLOUD_ID_PLACEHOLDER not in template
        or len(template) > 300
        or any(c in rest for c in "{}")
        or not template.isascii()
        or any(c.isspace() for c in template)
    ):
        raise ConfigurationError(problem)
    return template


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"{name} is required")
    return value


@dataclass(frozen=True)
class Settings:
    app_ari: str
    tokens_table: str
    app_table: str
    jwks_url: str = PRODUCTION_JWKS_URL
    jobs_queue_url: str | None = None
    jobs_dlq_url: str | None = None
    allowed_api_hosts: tuple[str, ...] = field(default=DEFAULT_ALLOWED_API_HOSTS)
    token_min_validity_s: int = DEFAULT_TOKEN_MIN_VALIDITY_S
    forge_graphql_url: str = DEFAULT_FORGE_GRAPHQL_URL
    offline_token_context_id: str = DEFAULT_OFFLINE_TOKEN_CONTEXT_ID
    # Attempts (receives that ran the job) before the worker dead-letters it, with the reason, once the
    # deferral schedule's time has passed too; and the queue's maxReceiveCount, the hard limit at which
    # the worker dead-letters it itself instead of leaving SQS's redrive to move it without a reason.
    job_max_receives: int = DEFAULT_JOB_MAX_RECEIVES
    job_queue_max_receives: int = DEFAULT_JOB_QUEUE_MAX_RECEIVES
    # Each trigger route's manifest module keys, as JSON (``forge/call_kinds.py``): the HTTP functions
    # require it, the others never read it.
    forge_trigger_modules: str | None = None

    def required(self, name: str) -> str:
        """A setting only some functions need (``jobs_queue_url``, ``jobs_dlq_url``).

        Call it at cold start, where the function is wired: a missing variable then fails the first
        invocation loudly, naming the variable, instead of the first request that needs it.
        """
        value = getattr(self, name, None)
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{OPTIONAL_VARIABLES.get(name, name)} is required by this function")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        hosts = tuple(h.strip().lower() for h in env.get("ALLOWED_API_HOSTS", "").split(",") if h.strip())
        raw_validity = env.get("TOKEN_MIN_VALIDITY_S", "").strip()
        try:
            validity = int(raw_validity) if raw_validity else DEFAULT_TOKEN_MIN_VALIDITY_S
        except ValueError as exc:
            raise ConfigurationError("TOKEN_MIN_VALIDITY_S must be a whole number of seconds") from exc
        if not 0 <= validity <= 4 * 3600:
            raise ConfigurationError("TOKEN_MIN_VALIDITY_S must be between 0 and 14400")
        jwks_url = jwks_url_setting(env.get("FORGE_JWKS_URL", "").strip() or PRODUCTION_JWKS_URL)
        max_receives = _receive_count(env, "JOB_MAX_RECEIVES", DEFAULT_JOB_MAX_RECEIVES)
        queue_max_receives = _receive_count(
            env, "JOB_QUEUE_MAX_RECEIVES", max(DEFAULT_JOB_QUEUE_MAX_RECEIVES, max_receives)
        )
        if queue_max_receives < max_receives:
            raise ConfigurationError("JOB_QUEUE_MAX_RECEIVES must be at least JOB_MAX_RECEIVES")
        return cls(
            app_ari=app_ari(_required(env, "FORGE_APP_ID")),
            tokens_table=_required(env, "TOKENS_TABLE"),
            app_table=_required(env, "APP_TABLE"),
            jwks_url=jwks_url,
            jobs_queue_url=env.get("JOBS_QUEUE_URL", "").strip() or None,
            jobs_dlq_url=env.get("JOBS_DLQ_URL", "").strip() or None,
            allowed_api_hosts=hosts or DEFAULT_ALLOWED_API_HOSTS,
            token_min_validity_s=validity,
            forge_graphql_url=env.get("FORGE_GRAPHQL_URL", "").strip() or DEFAULT_FORGE_GRAPHQL_URL,
            offline_token_context_id=context_id_template(
                env.get("OFFLINE_TOKEN_CONTEXT_ID", "").strip() or DEFAULT_OFFLINE_TOKEN_CONTEXT_ID
            ),
            job_max_receives=max_receives,
            job_queue_max_receives=queue_max_receives,
            forge_trigger_modules=env.get("FORGE_TRIGGER_MODULES", "").strip() or None,
        )


def _receive_count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a whole number") from exc
    if not 1 <= value <= 1000:  # SQS's own bounds for maxReceiveCount
        raise ConfigurationError(f"{name} must be between 1 and 1000")
    return value
