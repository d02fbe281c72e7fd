"""boto3 clients, created once per container with bounded, standard-mode retries.

boto3 is imported here, on first use, so modules that only parse or verify stay cheap to import.
Endpoints come from boto3's own ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>`` (moto, local).
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient


@cache
def _client(service: str, region: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    # botocore logs whole request bodies at DEBUG, and token writes carry tokens (rule 9): whatever
    # the root log level, its wire logs stay off.
    for name in ("botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).level))

    # Forge gives triggers 5 s: short timeouts and 3 attempts keep a throttled call inside it.
    config = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=3)
    if region is None:
        return boto3.client(service, config=config)  # type: ignore[call-overload]
    return boto3.client(service, region_name=region, config=config)  # type: ignore[call-overload]


def dynamodb() -> DynamoDBClient:
    client: DynamoDBClient = _client("dynamodb")
    return client


def dynamodb_in(region: str) -> DynamoDBClient:
    """A DynamoDB client for another region (a realm migration writes a peer stack's table there)."""
    client: DynamoDBClient = _client("dynamodb", region)
    return client


def sqs() -> SQSClient:
    client: SQSClient = _client("sqs")
    return client


def reset_clients() -> None:
    """Forget cached clients (tests and the local stack switch endpoints)."""
    _client.cache_clear()
