"""Powertools idempotency records in the app table, each use under a partition of its own.

Product-event deliveries (``jobs/intake.py``) and job runs (``jobs/run_once.py``) keep their records in the
app table with ``pk`` a static value and Powertools' hash as ``sk``, expiring through the table's ``ttl``.
Import this only where it is used: Powertools' idempotency costs about 0.3 s of import.
"""

from __future__ import annotations

from typing import Any

from forge_remote import aws


def app_table_store(app_table: str, static_pk: str) -> Any:
    """A Powertools ``DynamoDBPersistenceLayer`` on the app table, under ``pk = static_pk``."""
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(
        table_name=app_table,
        key_attr="pk",
        sort_key_attr="sk",
        static_pk_value=static_pk,
        expiry_attr="ttl",  # the table's TTL attribute: DynamoDB removes expired records
        boto3_client=aws.dynamodb(),
    )
