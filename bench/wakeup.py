"""Waking parked jobs: from a fresh token to each waiting job done, with the wake-up and without it.

The anchor's day with a 3 h lull (no Forge call at all 03:00-06:00; part 4's second scenario): the
same Forge calls through the real trigger and UI handlers, a background job requested every 5
minutes and run by the real worker handler, and, on one side, the real token wake-up fed by the
tokens table's stream (moto). Time is simulated. SQS is played by a small queue model, since moto
hides messages for real seconds: a message is visible when its delay ends or when it is woken; the
event source mapping takes a visible message ``ESM_LAG_S`` later (its batching window); a stream
record reaches the wake-up ``STREAM_LAG_S`` after the write. Job requests are sent by the library's own
``send_job_requests``, and each record carries the attributes SQS gives Lambda and the worker reads
(receive count, first-receive and sent timestamps, on the stack's clock): without its first receive,
the worker's give-up check raised on every deferral, nothing was parked and the section measured
nothing. A record the worker reports failed without deferring it (an exception that escaped the
worker) is counted, and fails the section.

For every job that was parked: the delay from the first usable token stored after it was parked to
the job being done. Both sides send expired tokens 0 times (checked on every request a job makes).
"""

from __future__ import annotations

import heapq
import itertools
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.anchor import HOUR, PRELUDE_H, SCENARIOS, Call, call_event, forge_calls, token_exp
from bench.common import Row, Section, load_function, median, moto_stack, quiet

ESM_LAG_S = 5.0  # the worker's MaximumBatchingWindowInSeconds
STREAM_LAG_S = 1.0  # DynamoDB stream to Lambda: typically well under a second
QUEUE_VISIBILITY_S = 720  # the queue's VisibilityTimeout while a worker holds a message
TARGET_S = 60.0
JOB = "bench-touch"


class _Gone(Exception):
    pass


@dataclass
class _Message:
    body: str
    visible_at: float
    sent_at: float
    group: str | None = None
    receives: int = 0
    first_received_at: float | None = None
    handle: str = ""
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class SimQueue:
    """The jobs queue, in simulated time: what the worker and the wake-up call on SQS, and what the event
    source mapping does (receive what is visible, delete what succeeded, redrive past max receives)."""

    def __init__(self, now: Any, max_receives: int) -> None:
        self._now = now
        self.max_receives = max_receives
        self.messages: dict[str, _Message] = {}  # by message id
        self.dead: list[dict[str, Any]] = []
        self.visibility_changed: set[str] = set()  # receipt handles the functions deferred or woke

    # -- the SQS client calls the functions make
    def change_message_visibility(self, *, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> None:  # noqa: N803
        message = next((m for m in self.messages.values() if m.handle == ReceiptHandle), None)
        if message is None:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "ReceiptHandleIsInvalid"}}, "ChangeMessageVisibility")
        message.visible_at = self._now() + VisibilityTimeout
        self.visibility_changed.add(ReceiptHandle)

    def send_message(self, *, QueueUrl: str, MessageBody: str, **_: Any) -> None:  # noqa: N803 (the DLQ)
        self.dead.append({"body": MessageBody, **_})

    def send_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        """The jobs queue, as ``send_job_requests`` sends to it: every entry taken."""
        for entry in Entries:
            self.enqueue(entry["MessageBody"], delay_s=entry.get("DelaySeconds", 0), group=entry.get("MessageGroupId"))
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries], "Failed": []}

    # -- the event source mapping
    def enqueue(self, body: str, *, delay_s: float = 0, group: str | None = None) -> None:
        now = self._now()
        message = _Message(body=body, visible_at=now + delay_s, sent_at=now, group=group)
        self.messages[message.message_id] = message

    def next_visible(self) -> float | None:
        return min((m.visible_at for m in self.messages.values()), default=None)

    def receive(self, limit: int = 10) -> list[dict[str, Any]]:
        now = self._now()
        records: list[dict[str, Any]] = []
        for message in sorted(self.messages.values(), key=lambda m: m.visible_at):
            if len(records) == limit or message.visible_at > now:
                break
            if message.receives >= self.max_receives:  # the redrive policy, on receive
                del self.messages[message.message_id]
                self.dead.append({"body": message.body, "redriven": True})
                continue
            message.receives += 1
            if message.first_received_at is None:
                message.first_received_at = now
            message.handle = uuid.uuid4().hex
            message.visible_at = now + QUEUE_VISIBILITY_S
            # What SQS gives Lambda for every record (epoch milliseconds, here on the stack's clock).
            attributes = {
                "ApproximateReceiveCount": str(message.receives),
                "SentTimestamp": str(int(message.sent_at * 1000)),
                "ApproximateFirstReceiveTimestamp": str(int(message.first_received_at * 1000)),
                "SenderId": "AROAEXAMPLE:bench",
            }
            if message.group is not None:
                attributes["MessageGroupId"] = message.group
            records.append(
                {
                    "messageId": message.message_id,
                    "receiptHandle": message.handle,
                    "body": message.body,
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": "",
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:jobs",
                    "awsRegion": "us-east-1",
                }
            )
        return records

    def settle(self, records: list[dict[str, Any]], failed: set[str]) -> list[str]:
        """Delete what succeeded; returns their bodies."""
        done = []
        for record in records:
            if record["messageId"] not in failed:
                done.append(self.messages.pop(record["messageId"]).body)
        return done


class _TouchClient:
    """Stands in for ConfluenceClient: each request takes the lease's token and checks its expiry."""

    def __init__(self, counts: dict[str, int], token: Any, now: Any) -> None:
        self._counts, self._token, self._now = counts, token, now

    def get_json(self, path: str, params: Any = None) -> dict[str, Any]:
        exp = token_exp(self._token())
        self._counts["sent_expired" if exp <= self._now() else "sent_valid"] += 1
        return {}


class LullDay:
    """One simulated day for one installation, through the real handlers, on one side (wake-up or not)."""

    def __init__(self, stack: Any, forge: Any, *, wake: bool) -> None:

        from forge_remote import aws, clock
        from local.lambda_context import LocalLambdaContext
        from local.poller import stream_pollers

        self.forge, self.wake = forge, wake
        self.day_start = clock.now() + PRELUDE_H * HOUR
        worker_env = stack.environment("ConfluenceWorkerFunction")
        self.queue = SimQueue(clock.now, int(worker_env["JOB_MAX_RECEIVES"]))
        aws.sqs = lambda: self.queue  # type: ignore[assignment,return-value]  # restored by simulate()
        self.triggers = load_function(stack, "ForgeTriggersFunction")
        self.calls_module = load_function(stack, "ForgeCallsFunction")
        self.worker = load_function(stack, "ConfluenceWorkerFunction")
        wakeup = load_function(stack, "TokenWakeupFunction")
        self.counts = {"sent_valid": 0, "sent_expired": 0}
        self.worker.runner.client_factory = lambda _base, token, **_kw: _TouchClient(self.counts, token, clock.now)
        if JOB not in self.worker.runner.registry.names():
            self.worker.runner.registry.job(JOB, lambda args: args)(
                lambda ctx, _args: ctx.confluence.get_json("/wiki/touch")
            )
        self.first_parked: dict[str, float] = {}
        real_park = self.worker.parking.park

        def park(installation_id: str, request_id: str, **kwargs: Any) -> None:
            self.first_parked.setdefault(request_id, self.now())
            real_park(installation_id, request_id, **kwargs)

        self.worker.parking.park = park
        (self.stream,) = stream_pollers(
            stack, lambda _fn, event: wakeup.lambda_handler(event, LocalLambdaContext(timeout_s=30))
        )
        self.site = forge.site()
        self.min_validity = float(worker_env["TOKEN_MIN_VALIDITY_S"])
        self.usable_arrivals: list[float] = []  # when a token usable by jobs was stored
        self._stored_at: float | None = None
        self.requested: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.worker_errors = 0  # records reported failed that the worker did not defer: it raised

    def now(self) -> float:
        from forge_remote import clock

        return clock.now() - self.day_start  # seconds into the day

    def deliver(self, call: Call) -> bool:
        """One Forge call through the real handler; True if it stored a token usable by jobs."""
        from forge_remote import clock
        from local.lambda_context import LocalLambdaContext

        event, ui = call_event(self.forge, self.site, call)
        module = self.calls_module if ui else self.triggers
        module.lambda_handler(event, LocalLambdaContext(timeout_s=25 if ui else 6))
        states = [s for s in self.worker.runner.tokens.states(self.site.installation_id) if s.subject == "system"]
        if not states or states[0].received_at == self._stored_at:
            return False
        self._stored_at = states[0].received_at
        if states[0].expires_at - clock.now() < self.min_validity:
            return False
        self.usable_arrivals.append(self.now())
        return True

    def run_worker(self) -> None:
        from forge_remote.jobs.contract import JobRequest
        from local.lambda_context import LocalLambdaContext

        records = self.queue.receive()
        if not records:
            return
        self.queue.visibility_changed.clear()
        response = self.worker.lambda_handler({"Records": records}, LocalLambdaContext(timeout_s=120))
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        # A deferral sets the message's visibility; a failed record without one escaped the worker.
        self.worker_errors += sum(
            1 for r in records if r["messageId"] in failed and r["receiptHandle"] not in self.queue.visibility_changed
        )
        for body in self.queue.settle(records, failed):
            self.done.setdefault(JobRequest.from_message_body(body).request_id, self.now())

    def request_job(self) -> None:
        from forge_remote.jobs.contract import JobRequest, send_job_requests

        request = JobRequest(job=JOB, installation_id=self.site.installation_id)
        self.requested[request.request_id] = self.now()
        send_job_requests(self.queue, "bench-jobs-queue", [request])  # type: ignore[arg-type]

    def play(self, calls: list[Call]) -> None:
        """Forge calls, job requests, stream deliveries and worker invocations, in time order."""
        from forge_remote import clock

        order = itertools.count()
        end = 24 * HOUR
        timeline: list[tuple[float, int, Call | None]] = [(c.delivered, next(order), c) for c in calls]
        timeline += [(float(t), next(order), None) for t in range(0, int(end), 300)]
        heapq.heapify(timeline)
        stream_due: float | None = None
        while True:
            visible = self.queue.next_visible()
            esm_due = None if visible is None else max(visible - self.day_start, self.now()) + ESM_LAG_S
            options = [t for t in (timeline[0][0] if timeline else None, stream_due, esm_due) if t is not None]
            if not options:
                return
            at = min(options)
            if at > self.now():
                clock.advance(at - self.now())
            if at == stream_due:
                stream_due = None
                if self.wake:  # backoff only: the stream's records reach nobody
                    self.stream.poll_once()
            elif at == esm_due:
                self.run_worker()
            else:
                _, _, call = heapq.heappop(timeline)
                if call is None:
                    self.request_job()
                elif self.deliver(call):
                    stream_due = self.now() + STREAM_LAG_S

    def figures(self) -> dict[str, Any]:
        delays = []
        for request_id, parked_at in self.first_parked.items():
            token_at = next((t for t in self.usable_arrivals if t >= parked_at), None)
            if request_id in self.done and token_at is not None:
                delays.append(self.done[request_id] - token_at)
        return {
            "wake": self.wake,
            "jobs": len(self.requested),
            "done": len(self.done),
            "parked": len(self.first_parked),
            "dead": len(self.queue.dead),
            "worker_errors": self.worker_errors,
            "delays": sorted(delays),
            **self.counts,
        }


def simulate(scenario_index: int, seed: int, *, wake: bool) -> dict[str, Any]:
    from forge_remote import aws, clock
    from local.forge_emulator import ForgeEmulator

    forge = ForgeEmulator()
    forge.start()
    clock.reset()
    real_sqs = aws.sqs
    try:
        with moto_stack({"ForgeAppId": forge.app_ari, "ForgeJwksUrl": forge.jwks_url}) as stack:
            day = LullDay(stack, forge, wake=wake)
            calls = forge_calls(random.Random(seed), forge, day.day_start, SCENARIOS[scenario_index])
            with quiet():
                day.play(calls)
            return day.figures()
    finally:
        aws.sqs = real_sqs
        clock.reset()
        forge.stop()


def run(quick: bool = False) -> Section:
    section = Section("wake-up: parked jobs after a 3 h lull")
    days = 1 if quick else 3
    print(
        "  The anchor's day with no Forge call 03:00-06:00; a job every 5 min through the real worker.\n"
        f"  Queue model: visible when its delay ends or when woken; taken {ESM_LAG_S:.0f} s later (batching\n"
        f"  window); a stored token reaches the wake-up {STREAM_LAG_S:.0f} s after the write.\n"
        f"  {days} day(s), fixed seeds."
    )
    sides: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for day in range(days):
        for wake in (True, False):
            sides[wake].append(simulate(1, seed=100 + day, wake=wake))
    figures: dict[str, Any] = {}
    for wake, label in ((True, "with wake-up"), (False, "backoff only")):
        runs = sides[wake]
        delays = sorted(d for r in runs for d in r["delays"])
        figures[label] = {
            "jobs": sum(r["jobs"] for r in runs),
            "done": sum(r["done"] for r in runs),
            "parked": sum(r["parked"] for r in runs),
            "dead": sum(r["dead"] for r in runs),
            "worker_errors": sum(r["worker_errors"] for r in runs),
            "sent_expired": sum(r["sent_expired"] for r in runs),
            "sent_valid": sum(r["sent_valid"] for r in runs),
            "p50_s": median(delays),
            "max_s": max(delays, default=float("nan")),
            "delays_measured": len(delays),
        }
    section.figures = figures
    ours, other = figures["with wake-up"], figures["backoff only"]
    print(f"    {'':<38} {'with wake-up':>14} {'backoff only':>14}")
    for key, label in (
        ("jobs", "jobs requested"),
        ("done", "jobs done"),
        ("parked", "jobs parked (waited for a token)"),
        ("p50_s", "token -> done, p50 (s)"),
        ("max_s", "token -> done, max (s)"),
        ("dead", "dead-lettered"),
        ("sent_expired", "requests with an expired token"),
    ):
        mine, theirs = ours[key], other[key]
        fmt = (lambda v: f"{v:.0f}") if key.endswith("_s") else str
        print(f"    {label:<38} {fmt(mine):>14} {fmt(theirs):>14}")
    errors = ours["worker_errors"] + other["worker_errors"]
    if errors:
        label = "records the worker failed by raising"
        print(f"    {label:<38} {ours['worker_errors']:>14} {other['worker_errors']:>14}")
    section.rows.append(
        Row(
            "parked job: token -> done (max, p50)",
            f"{ours['max_s']:.0f} s, {ours['p50_s']:.0f} s",
            f"{other['max_s']:.0f} s, {other['p50_s']:.0f} s",
            None,
            f"<= {TARGET_S:.0f} s",
            ours["max_s"] <= TARGET_S and ours["delays_measured"] > 0 and errors == 0,
        )
    )
    section.rows.append(
        Row(
            "expired-token sends, 3 h lull, wake-up",
            f"{ours['sent_expired']} of {ours['sent_valid'] + ours['sent_expired']}",
            f"{other['sent_expired']}",
            None,
            "0",
            ours["sent_expired"] == 0 and other["sent_expired"] == 0,
        )
    )
    return section
