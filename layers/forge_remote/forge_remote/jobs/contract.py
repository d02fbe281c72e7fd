"""The job contract: what a background job is, how it is requested, and how requests travel.

A job is a function ``(ctx: JobContext, args: A) -> JobResult | None`` registered under a name
with ``@job("name", parse_args)``, where ``parse_args`` turns the request's JSON ``args`` into ``A``
(raising ``ValueError``, ``TypeError`` or ``KeyError`` for bad input). ``request_job`` is the one way
to ask for a run: it sends a small JSON document straight to the SQS jobs queue::

    {"job": "page-snapshot", "installationId": "ari:...", "args": {...}, "requestId": "...", "attempt": 0}

plus ``"notBefore"`` (epoch seconds: not run before then) and ``"priority": "interactive"`` (a user
is waiting) when they are not the defaults. Each message carries ``MessageGroupId`` = its
installation (``message_group``), which makes the standard jobs queue an SQS fair queue: an
installation with a disproportionate share of the messages in flight is served after the quiet
ones, so one busy site cannot starve the others. That is why requests do not travel through
EventBridge: a rule's SQS target sets one static ``MessageGroupId`` for every event it delivers, not
one per installation. A ``notBefore`` up to 15 minutes ahead is SQS's own ``DelaySeconds``; the
worker keeps back what remains of a later one.

The worker validates a request on arrival: an unknown job or bad arguments raise ``BadJobRequest`` and
the message goes to the DLQ at once (it could never succeed); everything else is retried or deferred.
It still accepts the EventBridge envelope (``detail``) that messages queued by earlier versions carry.

A bad argument's reason is read by people: the DLQ's ``reason``, the worker's log, and the site's
administrators on the status page (its dead-letter section). So it is a sentence that says what the
job needed, never a bare ``KeyError`` text: ``bad arguments for job page-snapshot: the job needs the
argument pageId (the id of the page to snapshot), which the request did not give``, or ``...: pageId
must be a page id (digits, at most 20), not 'abc'``. ``required`` and ``shown`` help a ``parse_args``
say so; whatever it raises, the reason is cut to ``MAX_ARGUMENT_REASON_CHARS`` and quotes no argument
value that could be a secret or an account id (``argument_reason``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from forge_remote import clock
from forge_remote.errors import BadJobRequest, ConfigurationError, ServiceUnavailable
from forge_remote.forge.payloads import MAX_JSON_DEPTH, json_depth
from forge_remote.storage.table_keys import ACCOUNT_ID_PATTERN, INSTALLATION_ID_PATTERN

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

    from forge_remote.confluence.client import ConfluenceClient
    from forge_remote.storage.interfaces import Results
    from forge_remote.storage.results import StoredResult

logger = logging.getLogger(__name__)

# The EventBridge envelope earlier versions put on the queue: still read (``from_message_body``).
JOB_SOURCE = "forge-remote.jobs"
JOB_DETAIL_TYPE = "JobRequest"
MAX_REQUEST_BYTES = 64 * 1024
SEND_ATTEMPTS = 4  # SendMessageBatch calls for one batch's failed entries before ServiceUnavailable
SEND_BATCH_ENTRIES = 10  # SendMessageBatch's limit
SEND_BATCH_BYTES = 256 * 1024  # what one SendMessageBatch call's bodies may add up to
MAX_DELAY_S = 900  # SQS's DelaySeconds limit for one message (15 minutes)
MAX_GROUP_ID_CHARS = 128  # SQS's MessageGroupId limit
# How urgent a request is. INTERACTIVE: a user is waiting for it (requested from the UI); BULK:
# everything else (product events, schedules, a job requesting another).
INTERACTIVE = "interactive"
BULK = "bulk"
PRIORITIES = (INTERACTIVE, BULK)
_JOB_NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")

A = TypeVar("A")


@dataclass(frozen=True)
class JobRequest:
    job: str
    installation_id: str
    args: dict[str, Any] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempt: int = 0
    requested_by: str | None = None  # the account that asked for it from the UI (personal data)
    # Epoch seconds on the stack's clock (``forge_remote.clock``) before which the worker does not run
    # it: a spread schedule's slot for this installation. None: as soon as it can.
    not_before: float | None = None
    priority: str = BULK  # INTERACTIVE when a user is waiting for it

    def __post_init__(self) -> None:
        _check_not_before(self.not_before)
        _check_priority(self.priority)

    def to_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "job": self.job,
            "installationId": self.installation_id,
            "args": self.args,
            "requestId": self.request_id,
            "attempt": self.attempt,
        }
        if self.requested_by:
            detail["requestedBy"] = self.requested_by
        if self.not_before is not None:
            detail["notBefore"] = self.not_before
        if self.priority != BULK:
            detail["priority"] = self.priority
        return detail

    @classmethod
    def from_detail(cls, detail: Any) -> JobRequest:
        """Validate a request document (raises ``BadJobRequest`` naming the problem)."""
        if not isinstance(detail, dict):
            raise BadJobRequest("job request is not a JSON object")
        job, installation_id = detail.get("job"), detail.get("installationId")
        args, request_id, attempt = detail.get("args", {}), detail.get("requestId"), detail.get("attempt", 0)
        if not isinstance(job, str) or not _JOB_NAME.fullmatch(job):
            raise BadJobRequest("job request has no valid job name")
        if not isinstance(installation_id, str) or not INSTALLATION_ID_PATTERN.fullmatch(installation_id):
            raise BadJobRequest("job request has no valid installationId")
        if not isinstance(args, dict):
            raise BadJobRequest("job request args is not an object")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
            attempt = 0
        requested_by = detail.get("requestedBy")
        if requested_by is not None and not (
            isinstance(requested_by, str) and ACCOUNT_ID_PATTERN.fullmatch(requested_by)
        ):
            raise BadJobRequest("job request has an invalid requestedBy")
        not_before = detail.get("notBefore")
        _check_not_before(not_before)
        priority = detail.get("priority", BULK)
        _check_priority(priority)
        return cls(
            job=job,
            installation_id=installation_id,
            args=args,
            request_id=request_id if isinstance(request_id, str) and 0 < len(request_id) <= 128 else uuid.uuid4().hex,
            attempt=attempt,
            requested_by=requested_by,
            not_before=None if not_before is None else float(not_before),
            priority=priority,
        )

    @classmethod
    def from_message_body(cls, body: str) -> JobRequest:
        """From an SQS body: a bare request (what ``send_job_requests`` sends) or the EventBridge
        envelope (``detail``) of a message an earlier version queued."""
        if len(body.encode()) > MAX_REQUEST_BYTES:
            raise BadJobRequest("job request too large")
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise BadJobRequest("job request is not valid JSON") from exc
        if json_depth(document) > MAX_JSON_DEPTH:
            # It would pass here and break json.dumps when the message is re-sent or dead-lettered.
            raise BadJobRequest(f"job request is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(document, dict) and "detail" in document and document.get("source") == JOB_SOURCE:
            document = document["detail"]
        return cls.from_detail(document)


def _check_not_before(value: object) -> None:
    """None, or a finite number of seconds, 0 or more (not a bool; an integer too long for a float is no time)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadJobRequest("job request has an invalid notBefore")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite or value < 0:
        raise BadJobRequest("job request has an invalid notBefore")


def _check_priority(value: object) -> None:
    if not isinstance(value, str) or value not in PRIORITIES:
        raise BadJobRequest(f"job request has an invalid priority (one of: {', '.join(PRIORITIES)})")


@dataclass(frozen=True)
class JobContext:
    """What a job gets: who it runs for, a ready Confluence client (as the app), a way to act as a
    given user (``confluence_as``), and somewhere to put results."""

    request: JobRequest
    api_base_url: str
    confluence: ConfluenceClient
    results: JobResults
    remaining_ms: Callable[[], int]
    # Set by the worker: builds a client acting as an account (offline user impersonation).
    user_client_factory: Callable[[str], ConfluenceClient] | None = field(default=None, repr=False)
    # Set by the worker: the app token for a request to another Atlassian API than Confluence's (the
    # personal data report). The same lease as ``confluence``'s: valid long enough, re-checked per call,
    # and matched to the lease if the server refuses it.
    app_token: Callable[[], str] | None = field(default=None, repr=False)

    @property
    def installation_id(self) -> str:
        return self.request.installation_id

    def confluence_as(self, account_id: str) -> ConfluenceClient:
        """A Confluence client acting as ``account_id``: Confluence answers with what that user may see.

        Its token is an offline user token Forge mints for this account (cached per installation and
        account under the token rules). It never falls back to the app's token: a user Forge will not
        impersonate sends the job to the DLQ (``OfflineTokenRefused``), a mint that fails for now
        defers it. ``BadJobRequest`` if ``account_id`` is not an account id.
        """
        if not isinstance(account_id, str) or not ACCOUNT_ID_PATTERN.fullmatch(account_id):
            raise BadJobRequest("confluence_as needs an Atlassian account id")
        if self.user_client_factory is None:
            raise ConfigurationError("this context cannot act as a user (no offline token source)")
        return self.user_client_factory(account_id)


class JobResults:
    """The job's own installation's results: a job cannot name, read or write another installation's.

    ``put(kind, key, record)`` upserts a JSON record under ``<KIND>#<key>`` (cut to DynamoDB's item
    size if it must be, and set to expire; see ``storage/results.py``); ``get`` and ``list`` read back.
    """

    def __init__(self, store: Results, installation_id: str) -> None:
        self._store = store
        self._installation_id = installation_id

    def put(self, kind: str, key: str, record: dict[str, Any], *, ttl_s: int | None = None) -> StoredResult:
        return self._store.put(self._installation_id, kind, key, record, ttl_s=ttl_s)

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return self._store.get(self._installation_id, kind, key)

    def list(self, kind: str) -> list[dict[str, Any]]:
        return self._store.list(self._installation_id, kind)


@dataclass(frozen=True)
class JobResult:
    """A short, secret-free summary for logs and metrics."""

    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job(Generic[A]):
    name: str
    run: Callable[[JobContext, A], JobResult | None]
    parse_args: Callable[[Mapping[str, Any]], A]

    def __call__(self, ctx: JobContext) -> JobResult | None:
        try:
            args = self.parse_args(ctx.request.args)
        except (KeyError, ValueError, TypeError) as exc:
            raise BadJobRequest(argument_reason(self.name, exc, ctx.request.args)) from exc
        return self.run(ctx, args)


# -- argument errors, in words a site administrator reads (module docstring)
MAX_ARGUMENT_REASON_CHARS = 300  # of what ``parse_args`` said; the DLQ reason itself is cut at 500
MAX_SHOWN_CHARS = 16  # a value longer than this is described, never quoted: tokens and account ids are longer
_ARGUMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
# What may be quoted of a value: short, printable ASCII without quotes, backslashes, markup or ':'
# (account ids and ARIs have one, "557058:..."); anything else is described ("a text of 40 characters").
_SHOWABLE = re.compile(rf"^[A-Za-z0-9 _.,;!?#%()*+/=@^|~-]{{1,{MAX_SHOWN_CHARS}}}$")
# A run of id or token characters, 16 or longer: with a digit in it, an account id, a token, an ARI.
_ID_RUN = re.compile(rf"[A-Za-z0-9:_\-./+=]{{{MAX_SHOWN_CHARS},}}")
_HIDDEN = "[hidden]"  # what stands where such a run, or a value of the arguments, was


class MissingArgument(KeyError):
    """``parse_args`` found no argument ``name``; ``meaning`` says what it is for ("the id of the page")."""

    def __init__(self, name: str, meaning: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.meaning = meaning


def required(args: Mapping[str, Any], name: str, meaning: str = "") -> Any:
    """``args[name]``; if the request did not give it, a ``MissingArgument`` that says what it is for."""
    try:
        return args[name]
    except KeyError:
        raise MissingArgument(name, meaning) from None


def kind_of(value: object) -> str:
    """What a value is, in words, never what it holds: ``a text of 40 characters``, ``a list of 2 items``."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str | list | tuple):
        kind, unit = ("text", "character") if isinstance(value, str) else ("list", "item")
        return f"a {kind} of {len(value)} {unit}{'' if len(value) == 1 else 's'}" if value else f"an empty {kind}"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def _id_like(text: str) -> bool:
    """Holds a run that could be an account id, a token or an ARI (``_ID_RUN`` with a digit in it)."""
    return any(_has_digit(run.group()) for run in _ID_RUN.finditer(text))


def _has_digit(text: str) -> bool:
    return any(c.isdigit() for c in text)


def shown(value: object) -> str:
    """A bad argument's value as a reason may show it: quoted if it is a short plain text or number that
    cannot be a secret or an account id (``'abc'``, ``12.5``, ``true``), else only what it is (``kind_of``)."""
    if isinstance(value, str) and _SHOWABLE.fullmatch(value) and not _ID_RUN.search(value):
        return f"'{value}'"
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= MAX_SHOWN_CHARS else "a number"
    return kind_of(value)


def argument_names(names: Iterable[object], *, limit: int = 5) -> str:
    """Argument names for a reason: those that read as names, at most ``limit``, the rest counted."""
    names = list(names)
    readable = sorted(n for n in names if isinstance(n, str) and _readable_name(n))[:limit]
    rest = len(names) - len(readable)
    return ", ".join([*readable, *([f"{rest} more" if readable else f"{rest} unnamed"] if rest else [])])


def _readable_name(name: str) -> bool:
    return bool(_ARGUMENT_NAME.fullmatch(name)) and not _id_like(name)


def argument_reason(job: str, error: Exception, args: Mapping[str, Any]) -> str:
    """The DLQ reason for ``parse_args`` raising ``error`` on ``args``: ``bad arguments for job <job>: ...``
    with a sentence about what was wrong (a bare ``KeyError`` becomes "the job needs the argument ...").

    Bounded (``MAX_ARGUMENT_REASON_CHARS``), and it quotes no value it cannot show (``shown``): the
    arguments' own values are cut out of the message wherever it repeats them, and so is any run that
    looks like an id or a token.
    """
    if isinstance(error, KeyError):
        said = _missing(error, args)
    else:
        said = str(error).strip() or f"they are not what the job takes ({type(error).__name__})"
    said = _without_secrets(said[: MAX_ARGUMENT_REASON_CHARS * 4], args)
    if len(said) > MAX_ARGUMENT_REASON_CHARS:
        cut = said[: MAX_ARGUMENT_REASON_CHARS - 3]
        at_word = cut.rfind(" ")
        said = (cut[:at_word] if at_word > MAX_ARGUMENT_REASON_CHARS // 2 else cut).rstrip() + "..."
    return f"bad arguments for job {job}: {said}"


def _missing(error: KeyError, args: Mapping[str, Any]) -> str:
    name = error.args[0] if error.args else None
    meaning = error.meaning if isinstance(error, MissingArgument) and error.meaning else ""
    if isinstance(name, str) and (name in args or name in _texts_in(args)[1]):
        # Not a missing argument: the job looked a value up in a table of its own, or a key inside one.
        return "one of its arguments has a value the job does not know what to do with"
    if not isinstance(name, str) or not _readable_name(name):
        return "the job needs an argument that the request did not give"
    what = f" ({meaning[:120]})" if meaning else ""
    return f"the job needs the argument {name}{what}, which the request did not give"


def _without_secrets(text: str, args: Mapping[str, Any]) -> str:
    """``text`` with the texts of ``args`` it may not quote cut out (keys that do not read as names,
    values ``shown`` would not quote), then any run that looks like an id or a token."""
    keys, values = _texts_in(args)
    secret = {k for k in keys if not _readable_name(k)} | {v for v in values if shown(v) != f"'{v}'"}
    for value in sorted({v for v in secret if len(v) >= 4}, key=len, reverse=True):
        text = text.replace(value, _HIDDEN)
    return _ID_RUN.sub(lambda m: _HIDDEN if _has_digit(m.group()) else m.group(), text)


def _texts_in(args: Mapping[str, Any], limit: int = 40_000) -> tuple[set[str], set[str]]:
    """The keys and the text values in ``args``, at any depth (the first ``limit`` items looked at)."""
    keys: set[str] = set()
    values: set[str] = set()
    stack: list[Any] = [args]
    for _ in range(limit):
        if not stack:
            break
        item = stack.pop()
        if isinstance(item, str):
            values.add(item)
        elif isinstance(item, Mapping):
            keys.update(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return keys, values


class JobRegistry:
    """Names to jobs. ``registry.job("name", parse_args)`` decorates a job function."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job[Any]] = {}

    def job(
        self, name: str, parse_args: Callable[[Mapping[str, Any]], A]
    ) -> Callable[[Callable[[JobContext, A], JobResult | None]], Callable[[JobContext, A], JobResult | None]]:
        if not _JOB_NAME.fullmatch(name):
            raise ValueError(f"invalid job name {name!r}")

        def register(fn: Callable[[JobContext, A], JobResult | None]) -> Callable[[JobContext, A], JobResult | None]:
            known = self._jobs.get(name)
            if known is not None and not _reimported(known.run, fn):
                raise ValueError(f"job {name!r} is already registered")
            self._jobs[name] = Job(name=name, run=fn, parse_args=parse_args)
            return fn

        return register

    def get(self, name: str) -> Job[Any]:
        try:
            return self._jobs[name]
        except KeyError:
            raise BadJobRequest(f"unknown job {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._jobs)


def _reimported(known: Callable[..., Any], fn: Callable[..., Any]) -> bool:
    """``fn`` is ``known``'s module loaded afresh (a new container in tests, the local stack's reload): the
    same job, replaced. The same function twice, or another one under the name, is a mistake."""
    same_code = getattr(known, "__code__", None), getattr(fn, "__code__", None)
    return (
        known is not fn
        and all(same_code)
        and getattr(same_code[0], "co_filename", 1) == getattr(same_code[1], "co_filename", 2)
        and getattr(same_code[0], "co_firstlineno", 1) == getattr(same_code[1], "co_firstlineno", 2)
        and getattr(known, "__qualname__", 1) == getattr(fn, "__qualname__", 2)
    )


JOBS = JobRegistry()  # the registry ``@job`` adds to, and the worker runs from
job = JOBS.job


def request_job(
    job: str,
    installation_id: str,
    args: Mapping[str, Any] | None = None,
    *,
    requested_by: str | None = None,
    priority: str = BULK,
    not_before: float | None = None,
    queue_url: str | None = None,
) -> str:
    """Ask for one run of ``job`` for ``installation_id``; returns the request id.

    The request is sent to the jobs queue (``JOBS_QUEUE_URL``, or ``queue_url``) with the
    installation as its message group (module docstring); the worker validates it on arrival (an
    unknown job or bad arguments go to the DLQ with the reason). ``requested_by`` is the account that
    asked from the UI, kept as personal data; ``priority`` is ``INTERACTIVE`` when a user waits for
    it; ``not_before`` (epoch seconds) holds it back until then. Raises ``ServiceUnavailable`` if the
    queue did not take it, so the caller's own source retries.
    """
    from forge_remote import aws
    from forge_remote.config import Settings

    request = JobRequest(
        job=job,
        installation_id=installation_id,
        args=dict(args or {}),
        requested_by=requested_by,
        not_before=not_before,
        priority=priority,
    )
    send_job_requests(aws.sqs(), queue_url or Settings.from_env().required("jobs_queue_url"), [request])
    return request.request_id


def message_group(installation_id: str) -> str:
    """The ``MessageGroupId`` of an installation's job requests: the fair queue's tenant.

    The installation id itself when SQS allows it (at most 128 characters), else a digest of it.
    """
    if len(installation_id) <= MAX_GROUP_ID_CHARS:
        return installation_id
    return "sha256:" + hashlib.sha256(installation_id.encode()).hexdigest()


def send_job_requests(sqs: SQSClient, queue_url: str, requests: Iterable[JobRequest]) -> int:
    """Send requests to the jobs queue with ``SendMessageBatch``, 10 a call (its limit), retrying
    the entries that failed.

    Each message's group is its installation (``message_group``), and one whose ``not_before`` is
    ahead is delayed by SQS up to 15 minutes (the worker holds back the rest). Returns how many were
    sent; raises ``ServiceUnavailable`` if some still fail after ``SEND_ATTEMPTS`` calls, so the
    caller's event source (Forge, the scheduler) retries rather than losing work.
    """
    batch: list[tuple[JobRequest, str]] = []
    size = sent = 0
    for request in requests:
        body = json.dumps(request.to_detail(), separators=(",", ":"))
        if batch and (len(batch) == SEND_BATCH_ENTRIES or size + len(body.encode()) > SEND_BATCH_BYTES):
            sent += _send_batch(sqs, queue_url, batch)
            batch, size = [], 0
        batch.append((request, body))
        size += len(body.encode())
    if batch:
        sent += _send_batch(sqs, queue_url, batch)
    return sent


def _entry(index: int, request: JobRequest, body: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Id": str(index),
        "MessageBody": body,
        "MessageGroupId": message_group(request.installation_id),
    }
    if request.not_before is not None:
        ahead = math.ceil(request.not_before - clock.now())
        if ahead > 0:
            entry["DelaySeconds"] = min(MAX_DELAY_S, ahead)
    return entry


def _send_batch(sqs: SQSClient, queue_url: str, batch: list[tuple[JobRequest, str]]) -> int:
    pending = batch
    for attempt in range(SEND_ATTEMPTS):
        entries = [_entry(i, request, body) for i, (request, body) in enumerate(pending)]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)  # type: ignore[arg-type]
        failed = response.get("Failed") or []
        if not failed:
            return len(batch)
        failed_ids = {f.get("Id") for f in failed}
        codes = sorted({str(f.get("Code")) for f in failed})
        # A response naming none of the entries sent (never seen) sends them all again: the worker runs
        # a request id once, so a duplicate costs nothing, where a lost request would.
        pending = [item for i, item in enumerate(pending) if str(i) in failed_ids] or pending
        logger.warning("SendMessageBatch failed for %d of %d job requests (%s)", len(pending), len(entries), codes)
        if attempt + 1 < SEND_ATTEMPTS:  # no wait after the last: the caller is told at once
            time.sleep(0.05 * 2**attempt)  # brief backoff: the callers (Forge, the scheduler) retry for longer
    raise ServiceUnavailable(f"{len(pending)} job requests could not be sent to the jobs queue")
