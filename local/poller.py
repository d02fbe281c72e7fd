"""Lambda's SQS and DynamoDB-stream event source mappings and EventBridge Scheduler, played locally
against moto.

``SqsPoller`` does what the mapping does for the worker: receive up to ``BatchSize`` messages (from
the template's SQS event), build the real SQS event records, invoke the function, delete what
succeeded and leave what failed in the queue with whatever visibility the function gave it
(``ReportBatchItemFailures`` semantics). The queue's own ``RedrivePolicy`` moves a message to the DLQ
after ``maxReceiveCount`` receives; moto implements that on receive, as SQS does.

``StreamPoller`` does what a DynamoDB event source mapping does: read the table's stream from where
it stood when the poller started, keep the records the template's ``FilterCriteria`` match, and
invoke the function with them in batches.

Time: a deferred job is hidden by SQS for real seconds (a minute and up). The demo and the tests do
not wait for that: ``release_deferred()`` makes the failed records visible again at once. It stands
in for the passage of time, and is called by ``LocalRuntime.advance()`` together with the token clock.
A message sent with ``DelaySeconds`` (a spread schedule's slot) has no receipt handle to release: SQS
shows it after its real delay, which is why the local stack runs the digest unspread unless asked
(``LocalRuntime(digest_spread_minutes=...)``).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from local.stack import LocalStack

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

logger = logging.getLogger(__name__)

# (function logical id, event) -> the handler's raw result
Invoke = Callable[[str, Any], Any]


# -- what the template says
@dataclass(frozen=True)
class SqsEventSource:
    """A function's ``Type: SQS`` event: which queue, how many records per batch, partial failures."""

    function: str
    queue: str  # logical id of the queue
    batch_size: int = 10
    report_batch_item_failures: bool = False


@dataclass(frozen=True)
class StreamEventSource:
    """A function's ``Type: DynamoDB`` event: which table's stream, batch size, filter patterns."""

    function: str
    table: str  # logical id of the table
    batch_size: int = 100
    filters: tuple[dict[str, Any], ...] = ()
    report_batch_item_failures: bool = False


@dataclass(frozen=True)
class Schedule:
    """A function's ``Type: ScheduleV2`` event: Scheduler invokes the function with ``input`` as the event."""

    function: str
    name: str
    expression: Any
    input: Any


def _function_events(template: dict[str, Any], event_type: str) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for logical, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        for name, event in resource.get("Properties", {}).get("Events", {}).items():
            if event.get("Type") == event_type:
                found.append((logical, name, event.get("Properties", {})))
    return found


def sqs_event_sources(template: dict[str, Any]) -> list[SqsEventSource]:
    sources = []
    for function, _, props in _function_events(template, "SQS"):
        queue = props["Queue"]
        # The template names the queue by ``!GetAtt <Queue>.Arn``.
        arg = queue.get("Fn::GetAtt") if isinstance(queue, dict) else None
        if not arg:
            raise ValueError(f"{function}: SQS Queue must be !GetAtt <logical id>.Arn locally")
        logical = arg[0] if isinstance(arg, list) else str(arg).split(".", 1)[0]
        sources.append(
            SqsEventSource(
                function=function,
                queue=logical,
                batch_size=int(props.get("BatchSize", 10)),
                report_batch_item_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            )
        )
    return sources


def stream_event_sources(template: dict[str, Any]) -> list[StreamEventSource]:
    sources = []
    for function, _, props in _function_events(template, "DynamoDB"):
        stream = props["Stream"]
        arg = stream.get("Fn::GetAtt") if isinstance(stream, dict) else None
        if not arg:
            raise ValueError(f"{function}: DynamoDB Stream must be !GetAtt <table>.StreamArn locally")
        logical = arg[0] if isinstance(arg, list) else str(arg).split(".", 1)[0]
        filters = tuple(json.loads(f["Pattern"]) for f in props.get("FilterCriteria", {}).get("Filters", []))
        sources.append(
            StreamEventSource(
                function=function,
                table=logical,
                batch_size=int(props.get("BatchSize", 100)),
                filters=filters,
                report_batch_item_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            )
        )
    return sources


def matches_filter(pattern: Any, value: Any) -> bool:
    """Lambda event filtering, the part templates here use: an object pattern matches an object whose
    fields all match; a list pattern matches a value equal to one of its entries (exact match)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and matches_filter(p, value[k]) for k, p in pattern.items())
    if isinstance(pattern, list):
        return any(value == entry for entry in pattern)
    raise ValueError(f"unsupported filter pattern {pattern!r}")


def schedules(template: dict[str, Any], resolve: Callable[[Any], Any] | None = None) -> list[Schedule]:
    """Every ``ScheduleV2`` event's schedule. An ``Input`` written with an intrinsic (``!Sub`` naming a
    parameter) is resolved by ``resolve`` (a ``LocalStack``'s, for its parameters), else with the
    template's parameter defaults."""
    if resolve is None:
        resolve = LocalStack(template=template).resolve
    found = []
    for function, name, props in _function_events(template, "ScheduleV2"):
        raw = resolve(props.get("Input"))
        found.append(
            Schedule(
                function=function,
                name=name,
                expression=props.get("ScheduleExpression"),
                input=json.loads(raw) if isinstance(raw, str) else (raw or {}),
            )
        )
    return found


# -- the event source mapping
@dataclass
class PollReport:
    batches: int = 0
    received: int = 0
    succeeded: int = 0
    failed: int = 0

    def add(self, other: PollReport) -> None:
        self.batches += other.batches
        self.received += other.received
        self.succeeded += other.succeeded
        self.failed += other.failed


def sqs_record(message: MessageTypeDef, queue_arn: str, region: str) -> dict[str, Any]:
    """One record of Lambda's SQS event, from a ReceiveMessage result (AttributeNames=All)."""
    attributes: dict[str, Any] = {}
    for name, value in message.get("MessageAttributes", {}).items():
        binary = value.get("BinaryValue")
        attributes[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": base64.b64encode(binary).decode() if binary else None,
            "stringListValues": list(value.get("StringListValues", [])),
            "binaryListValues": [base64.b64encode(b).decode() for b in value.get("BinaryListValues", [])],
            "dataType": value.get("DataType"),
        }
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def failed_message_ids(result: Any, batch_ids: list[str]) -> set[str]:
    """Which records failed, by Lambda's rules for ``ReportBatchItemFailures`` responses.

    Success: an empty or null response or list. Whole batch failed: a malformed response, or an
    itemIdentifier that is empty, null, or not a message of this batch.
    """
    if result is None or result == {}:
        return set()
    if not isinstance(result, dict):
        return set(batch_ids)
    failures = result.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return set(batch_ids)
    failed = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, str) or identifier not in batch_ids:
            return set(batch_ids)
        failed.add(identifier)
    return failed


@dataclass
class BackgroundPolling:
    """What ``make local`` runs: ``poll_round()`` every ``interval_s`` on a daemon thread, until ``stop()``.
    An error is logged and the next round tried, as an event source mapping keeps polling."""

    _thread: threading.Thread | None = field(default=None, kw_only=True)
    _stopping: threading.Event = field(default_factory=threading.Event, kw_only=True)

    def poll_round(self) -> None:
        raise NotImplementedError

    def start(self, interval_s: float = 1.0) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        name = type(self).__name__
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name=name, daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stopping.is_set():
            try:
                self.poll_round()
            except Exception:
                logger.exception("%s error; retrying", type(self).__name__)
            self._stopping.wait(interval_s)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # a daemon thread: never hold up shutdown for a slow round
            self._thread = None


@dataclass
class SqsPoller(BackgroundPolling):
    """Feeds one queue to one function, batch by batch."""

    source: SqsEventSource
    sqs: SQSClient
    queue_url: str
    queue_arn: str
    region: str
    invoke: Invoke
    _held: list[str] = field(default_factory=list)  # receipt handles of failed records
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def poll_once(self) -> PollReport:
        """One receive and, if it returned messages, one invocation."""
        with self._lock:
            messages = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(self.source.batch_size, 10),
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            if not messages:
                return PollReport()
            records = [sqs_record(m, self.queue_arn, self.region) for m in messages]
            ids = [r["messageId"] for r in records]
            try:
                result = self.invoke(self.source.function, {"Records": records})
            except Exception:
                # As on AWS: the whole batch stays in the queue until its visibility timeout ends.
                logger.exception("%s failed; the whole batch stays in the queue", self.source.function)
                failed = set(ids)
            else:
                failed = failed_message_ids(result, ids) if self.source.report_batch_item_failures else set()
            self._held.extend(r["receiptHandle"] for r in records if r["messageId"] in failed)
            self._delete([r for r in records if r["messageId"] not in failed])
            return PollReport(
                batches=1, received=len(records), succeeded=len(records) - len(failed), failed=len(failed)
            )

    def _delete(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), 10):
            chunk = records[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)]
            response = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]
            if response.get("Failed"):
                logger.warning("could not delete %d processed messages", len(response["Failed"]))

    def drain(self, max_batches: int = 1000) -> PollReport:
        """Poll until a receive finds nothing visible (deferred messages stay hidden)."""
        report = PollReport()
        for _ in range(max_batches):
            batch = self.poll_once()
            if not batch.received:
                return report
            report.add(batch)
        raise RuntimeError(f"queue still had visible messages after {max_batches} batches")

    def release_deferred(self) -> int:
        """Make every failed record visible again now: stands in for its visibility delay passing.

        Returns how many were released. A handle whose message has left the queue is skipped.
        """
        with self._lock:
            held, self._held = self._held, []
            released = 0
            for handle in held:
                try:
                    self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url, ReceiptHandle=handle, VisibilityTimeout=0
                    )
                    released += 1
                except ClientError:
                    continue
        if released:
            time.sleep(0.005)  # moto makes a message visible strictly after its visible-at millisecond
        return released

    @property
    def deferred(self) -> int:
        """How many failed records are waiting for ``release_deferred()``."""
        return len(self._held)

    def poll_round(self) -> None:
        self.drain()


@dataclass
class StreamPoller(BackgroundPolling):
    """Feeds one table's stream to one function. Reads from where the stream stood at ``open()``."""

    source: StreamEventSource
    streams: Any  # a dynamodbstreams client
    stream_arn: str
    region: str
    invoke: Invoke
    _iterators: dict[str, str] = field(default_factory=dict)  # shard id -> next iterator
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, position: str = "LATEST") -> StreamPoller:
        """Start reading: from now (``LATEST``, as a new event source mapping does) or from the
        stream's oldest record (``TRIM_HORIZON``)."""
        with self._lock:
            self._open_new_shards(position)
        return self

    def _open_new_shards(self, position: str) -> None:
        shards = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"].get("Shards", [])
        for shard in shards:
            if shard["ShardId"] not in self._iterators:
                self._iterators[shard["ShardId"]] = self.streams.get_shard_iterator(
                    StreamArn=self.stream_arn, ShardId=shard["ShardId"], ShardIteratorType=position
                )["ShardIterator"]

    def poll_round(self) -> None:
        self.poll_once()

    def poll_once(self) -> int:
        """Read what is new and invoke the function with the records its filters keep; returns how many."""
        with self._lock:
            self._open_new_shards("TRIM_HORIZON")  # a shard opened since: read it whole
            kept: list[dict[str, Any]] = []
            for shard_id, iterator in list(self._iterators.items()):
                response = self.streams.get_records(ShardIterator=iterator)
                self._iterators[shard_id] = response.get("NextShardIterator") or iterator
                for record in response.get("Records", []):
                    event_record = _stream_record(record, self.stream_arn, self.region)
                    if not self.source.filters or any(matches_filter(f, event_record) for f in self.source.filters):
                        kept.append(event_record)
        for start in range(0, len(kept), self.source.batch_size):
            result = self.invoke(self.source.function, {"Records": kept[start : start + self.source.batch_size]})
            if isinstance(result, dict) and result.get("batchItemFailures"):
                logger.warning("%s reported stream records failed: %s", self.source.function, result)
        return len(kept)


def stream_pollers(stack: Any, invoke: Invoke, *, session: Any = None, position: str = "LATEST") -> list[StreamPoller]:
    """One opened ``StreamPoller`` per ``Type: DynamoDB`` event of ``stack``'s template (a ``LocalStack``
    whose tables exist), reading from ``position``."""
    import boto3

    streams = streams_client(session or boto3.session.Session(region_name=stack.region))
    return [
        StreamPoller(
            source=source,
            streams=streams,
            stream_arn=stack.stream_arns[source.table],
            region=stack.region,
            invoke=invoke,
        ).open(position)
        for source in stream_event_sources(stack.template)
    ]


def streams_client(session: Any) -> Any:
    """A DynamoDB Streams client. Account-based endpoints are off: moto routes them to DynamoDB itself."""
    from botocore.config import Config

    return session.client("dynamodbstreams", config=Config(account_id_endpoint_mode="disabled"))


def _stream_record(record: Any, stream_arn: str, region: str) -> dict[str, Any]:
    """A GetRecords record as Lambda hands it over: JSON-safe, with ``eventSourceARN``."""
    dynamodb = dict(record.get("dynamodb", {}))
    created = dynamodb.get("ApproximateCreationDateTime")
    if created is not None and not isinstance(created, int | float):
        dynamodb["ApproximateCreationDateTime"] = int(created.timestamp())
    return {
        "eventID": record.get("eventID"),
        "eventName": record.get("eventName"),
        "eventVersion": record.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    }


def queue_depth(sqs: SQSClient, queue_url: str) -> tuple[int, int]:
    """(visible, in flight or delayed) messages: SQS's approximate counts, exact in moto."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


@dataclass
class ScheduleTimer:
    """EventBridge Scheduler: ``fire()`` invokes a scheduled function with its template ``Input``."""

    schedules: list[Schedule]
    invoke: Invoke

    def fire(self, name: str | None = None, input: Any = None) -> Any:
        """Invoke the named schedule (the only one if not named), with ``input`` replacing the template's."""
        matching = [s for s in self.schedules if name is None or s.name == name]
        if len(matching) != 1:
            raise KeyError(f"no single schedule named {name!r} (have {[s.name for s in self.schedules]})")
        schedule = matching[0]
        return self.invoke(schedule.function, schedule.input if input is None else input)
