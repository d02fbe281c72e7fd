"""Part 5b, worker throughput: page-snapshot and space-digest jobs from a moto SQS queue through the real
confluence_worker handler, against the Confluence emulator on loopback (cursor pagination), driven as
tests/support.py (LocalWorld) drives it: receive up to 10, shape Lambda's SQS event, call the handler, delete
what succeeded (the event source mapping's part, outside the timing).

The floor it is compared with: the very Confluence requests the worker made, replayed in the same
order with a bare ``requests.Session`` (same token). The difference is the worker's own cost: token
lookup, installation record, Powertools batch handling, parsing, results written to DynamoDB (moto).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import Row, Section, load_function, median, moto_stack, quiet, ratio

SPACES = {"ENG": "Engineering", "OPS": "Operations", "DOC": "Documentation"}


def _sqs_event(sqs: Any, queue_url: str, queue_arn: str) -> dict[str, Any]:
    from local.poller import sqs_record

    messages = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0
    ).get("Messages", [])
    return {"Records": [sqs_record(m, queue_arn, "us-east-1") for m in messages]}


def _enqueue(sqs: Any, queue_url: str, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def _replay(api_origin: str, seen: list[Any]) -> float:
    """Seconds for the same Confluence requests with a bare requests.Session."""
    import requests

    session = requests.Session()
    started = time.perf_counter()
    for method, path, query, token in seen:
        response = session.request(
            method,
            api_origin + path,
            params=query,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=10,
        )
        response.json()
    return time.perf_counter() - started


@dataclass
class Drained:
    batch_ms: list[float] = field(default_factory=list)
    done: int = 0
    failed_records: int = 0


def drain_through(worker: Any, sqs: Any, queue_url: str, queue_arn: str) -> Drained:
    """Feed the queue to the worker ten at a time until it is empty; delete what succeeded."""
    from local.lambda_context import LocalLambdaContext

    result = Drained()
    while True:
        event = _sqs_event(sqs, queue_url, queue_arn)
        if not event["Records"]:
            return result
        with quiet():
            started = time.perf_counter()
            response = worker.lambda_handler(event, LocalLambdaContext("worker", timeout_s=120))
            result.batch_ms.append((time.perf_counter() - started) * 1000)
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        result.failed_records += len(failed)
        for record in event["Records"]:
            if record["messageId"] not in failed:
                result.done += 1
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=record["receiptHandle"])


def install(stack: Any, forge: Any, site: Any) -> None:
    """The installed lifecycle call through forge_triggers: installation record and a 3 h token."""
    from local.apigw import http_api_event
    from local.lambda_context import LocalLambdaContext

    triggers = load_function(stack, "ForgeTriggersFunction")
    headers = forge.headers(site, app_token=forge.app_token(lifetime_s=3 * 3600))
    event = http_api_event("POST", "/forge/lifecycle", headers=headers, body=forge.installed_event(site))
    with quiet():
        response = triggers.lambda_handler(event, LocalLambdaContext(timeout_s=6))
    if response["statusCode"] != 200:
        raise RuntimeError(f"installing the bench site failed: {response}")


def job_bodies(confluence: Any, installation_id: str, pages_per_space: int, snapshots: int, digests: int) -> list[str]:
    """Spaces and pages in the emulator, and the job requests (message bodies, as ``send_job_requests``
    sends them) to run on them."""
    from forge_remote.jobs.contract import JobRequest

    rng = random.Random(7)
    recent = datetime.now(UTC) - timedelta(hours=2)
    page_ids: list[str] = []
    for key, name in SPACES.items():
        confluence.add_space(key, name)
        page_ids += [
            str(confluence.add_page(key, f"{key} page {i}", last_modified=recent)["id"]) for i in range(pages_per_space)
        ]
    requests_ = [
        JobRequest(job="page-snapshot", installation_id=installation_id, args={"pageId": pid})
        for pid in rng.sample(page_ids, snapshots)
    ]
    keys = list(SPACES)
    requests_ += [
        JobRequest(job="space-digest", installation_id=installation_id, args={"spaceKeys": [keys[i % len(keys)]]})
        for i in range(digests)
    ]
    rng.shuffle(requests_)
    return [json.dumps(r.to_detail(), separators=(",", ":")) for r in requests_]


def run_into(section: Section, quick: bool) -> None:
    import boto3

    from local.confluence_emulator import ConfluenceEmulator
    from local.forge_emulator import ForgeEmulator, Site, new_installation_id

    pages_per_space = 120 if quick else 300
    snapshots, digests = (40, 3) if quick else (150, 6)
    forge, confluence = ForgeEmulator(), ConfluenceEmulator()
    forge.start()
    api_base_url = confluence.start()
    try:
        host = api_base_url.split("/")[2]
        params = {"ForgeAppId": forge.app_ari, "ForgeJwksUrl": forge.jwks_url, "AllowedApiHosts": host}
        with moto_stack(params) as stack:
            cloud_id = api_base_url.rstrip("/").rsplit("/", 1)[1]
            site = Site(new_installation_id(), cloud_id, api_base_url, "https://bench.atlassian.net")
            install(stack, forge, site)
            bodies = job_bodies(confluence, site.installation_id, pages_per_space, snapshots, digests)
            sqs = boto3.client("sqs")
            queue_url, queue_arn = stack.physical["JobsQueue"], stack.arns["JobsQueue"]
            _enqueue(sqs, queue_url, bodies)
            worker = load_function(stack, "ConfluenceWorkerFunction")
            seen_before = len(confluence.requests_seen)
            started = time.perf_counter()
            drained = drain_through(worker, sqs, queue_url, queue_arn)
            wall_s = time.perf_counter() - started
            seen = list(confluence.requests_seen[seen_before:])
            floor_s = _replay("/".join(api_base_url.split("/")[:3]), seen)
    finally:
        confluence.stop()
        forge.stop()

    jobs, handler_s = len(bodies), sum(drained.batch_ms) / 1000
    searches = sum(1 for s in seen if str(s[1]).endswith("/search"))
    figures = {
        "jobs": jobs,
        "page_snapshot_jobs": snapshots,
        "space_digest_jobs": digests,
        "pages_per_space": pages_per_space,
        "done": drained.done,
        "failed_records": drained.failed_records,
        "batches": len(drained.batch_ms),
        "handler_seconds": handler_s,
        "wall_seconds": wall_s,
        "jobs_per_second": jobs / handler_s if handler_s else 0.0,
        "batch_p50_ms": median(drained.batch_ms),
        "confluence_requests": len(seen),
        "confluence_search_requests": searches,
        "replayed_requests_seconds": floor_s,
    }
    section.figures["worker"] = figures
    print(
        f"  confluence_worker: {jobs} jobs ({snapshots} page-snapshot, {digests} space-digest; "
        f"{pages_per_space} recent pages per space) in {len(drained.batch_ms)} SQS batches"
    )
    print(f"    done {drained.done}, failed records {drained.failed_records}")
    print(
        f"    handler time {handler_s:.2f} s, {figures['jobs_per_second']:.1f} jobs/s; "
        f"batch p50 {figures['batch_p50_ms']:.0f} ms"
    )
    print(f"    Confluence requests {len(seen)} ({searches} searches, cursor pages included)")
    print(f"    the same requests replayed with a bare requests.Session: {floor_s:.2f} s")
    section.rows += [
        Row(
            f"worker: {jobs} jobs vs their requests alone",
            f"{handler_s:.2f} s ({figures['jobs_per_second']:.0f} jobs/s)",
            f"{floor_s:.2f} s, {len(seen)} requests",
            ratio(handler_s, floor_s),
        ),
        Row(
            "worker: jobs done",
            f"{drained.done} of {jobs}",
            "-",
            None,
            f"all {jobs}",
            drained.done == jobs and drained.failed_records == 0,
        ),
    ]
