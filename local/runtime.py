"""The embedded local stack in one object: what ``make demo``, ``make local`` and the integration tests
all run, so the three cannot drift apart.

``LocalRuntime().start()`` brings up, on 127.0.0.1 only: moto in server mode (DynamoDB, SQS) with
the template's tables and queues; the Forge emulator (FIT signing key
and JWKS); the Confluence emulator; the four real handler modules with the environment the template
gives each; the HTTP gateway in front of the HTTP functions; the SQS poller in front of the worker;
and the scheduler timer. ``stop()`` undoes all of it, environment and clock included.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import redirect_stdout
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Self

import boto3
import requests

from forge_remote import clock
from forge_remote.config import PRODUCTION_JWKS_URL
from forge_remote.storage.table_keys import installation_pk
from local.cfn_yaml import http_routes
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import DEFAULT_APP_ID, ForgeEmulator, Site, new_installation_id
from local.gateway import LocalGateway
from local.handlers import load_handler
from local.lambda_context import LocalLambdaContext
from local.moto_server import MotoServer
from local.poller import (
    PollReport,
    ScheduleTimer,
    SqsPoller,
    StreamPoller,
    queue_depth,
    schedules,
    sqs_event_sources,
    stream_pollers,
)
from local.stack import TEMPLATE, LocalStack

# Local-only settings on top of the template's: no X-Ray daemon and no CloudWatch to publish to.
LOCAL_FUNCTION_ENV = {"POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true"}


@dataclass
class LocalFunction:
    """One loaded handler module, with the limits the template gives its function."""

    logical_id: str
    module: Any
    timeout_s: float
    memory_mb: int
    # Lambda runs one event at a time per container; the modules keep per-event state in globals.
    lock: threading.Lock


class LocalRuntime:
    """The whole function set on this machine. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        *,
        gateway_port: int = 0,
        app_id: str = DEFAULT_APP_ID,
        production_jwks: bool = False,
        allowed_api_hosts: str | None = None,
        token_min_validity_s: int | None = None,
        log_level: str = "WARNING",
        function_logs: IO[str] | None = None,
        digest_spread_minutes: int = 0,
    ) -> None:
        """``production_jwks``: verify FITs with Atlassian's production keys (a real Forge app through a
        tunnel) instead of the emulator's. ``allowed_api_hosts`` defaults to the Confluence emulator.
        ``function_logs``: where the handlers' Powertools logs go (default stderr, apart from narration).
        ``digest_spread_minutes``: the template's ``DigestSpreadMinutes``; 0 here (not the template's 60)
        so that a fired digest's jobs are on the queue at once: SQS would delay them for real minutes.
        """
        self._gateway_port = gateway_port
        self._production_jwks = production_jwks
        self._allowed_api_hosts = allowed_api_hosts
        self._token_min_validity_s = token_min_validity_s
        self._log_level = log_level
        self._function_logs = function_logs
        self._digest_spread_minutes = digest_spread_minutes
        self.moto = MotoServer()
        self.forge = ForgeEmulator(app_id)
        self.confluence = ConfluenceEmulator()
        self.functions: dict[str, LocalFunction] = {}
        self._saved_env: dict[str, str] | None = None
        self._werkzeug_level = logging.NOTSET
        self._http = requests.Session()
        self._stack: LocalStack | None = None
        self._gateway: LocalGateway | None = None
        self._poller: SqsPoller | None = None
        self._stream_pollers: list[StreamPoller] = []
        self._timer: ScheduleTimer | None = None

    # -- lifecycle
    def start(self) -> Self:
        self._saved_env = dict(os.environ)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        # werkzeug logs every request each loopback server (moto's included) answers: noise here.
        self._werkzeug_level = logging.getLogger("werkzeug").level
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.moto.start()
        self.moto.reset()  # a clean data plane even if this process ran a stack before
        jwks_url = self.forge.start()
        api_base_url = self.confluence.start()
        parameters = {
            "ForgeAppId": self.forge.app_ari,
            "ForgeJwksUrl": PRODUCTION_JWKS_URL if self._production_jwks else jwks_url,
            # The emulators are plain http on loopback: accepted only because these host:ports are allowed
            # (Confluence's, and the Forge emulator's GraphQL gateway for offline user tokens).
            "AllowedApiHosts": self._allowed_api_hosts or f"{api_base_url.split('/')[2]},{jwks_url.split('/')[2]}",
            "ForgeGraphqlUrl": self.forge.graphql_url,
            "LogLevel": self._log_level,
            "DigestSpreadMinutes": str(self._digest_spread_minutes),
        }
        if self._token_min_validity_s is not None:
            parameters["TokenMinValiditySeconds"] = str(self._token_min_validity_s)
        session = boto3.session.Session(region_name=self.moto.region)
        self._stack = LocalStack.from_template(TEMPLATE, parameters=parameters, region=self.moto.region).create(
            dynamodb=session.client("dynamodb"), sqs=session.client("sqs")
        )
        self._load_functions(self._stack)
        self._gateway = LocalGateway.from_template_routes(
            http_routes(self._stack.template), self.invoke, port=self._gateway_port
        )
        self._gateway.start()
        (source,) = sqs_event_sources(self._stack.template)  # the worker's queue
        self._poller = SqsPoller(
            source=source,
            sqs=session.client("sqs"),
            queue_url=self._stack.physical[source.queue],
            queue_arn=self._stack.arns[source.queue],
            region=self.moto.region,
            invoke=self.invoke,
        )
        self._timer = ScheduleTimer(schedules(self._stack.template, self._stack.resolve), self.invoke)
        self._stream_pollers = stream_pollers(self._stack, self.invoke, session=session)

    def _load_functions(self, stack: LocalStack) -> None:
        template_globals = stack.template.get("Globals", {}).get("Function", {})
        # Powertools binds its log stream when a module creates its Logger: point it away from stdout.
        with redirect_stdout(self._function_logs or sys.stderr):
            for logical_id, code_uri in stack.functions().items():
                props = stack.resources[logical_id].get("Properties", {})
                env = {**stack.environment(logical_id), **LOCAL_FUNCTION_ENV}
                # One after another: each module reads its environment at import, as on Lambda.
                self.functions[logical_id] = LocalFunction(
                    logical_id=logical_id,
                    module=load_handler(logical_id, code_uri, env),
                    timeout_s=float(props.get("Timeout", template_globals.get("Timeout", 3))),
                    memory_mb=int(props.get("MemorySize", template_globals.get("MemorySize", 128))),
                    lock=threading.Lock(),
                )

    def stop(self) -> None:
        """Stop every server and put the process back as it was (environment, clock, boto3 clients)."""
        if self._poller is not None:
            self._poller.stop()
        for stream_poller in self._stream_pollers:
            stream_poller.stop()
        self._stream_pollers = []
        self.functions.clear()
        for server in (self._gateway, self.confluence, self.forge):
            if server is not None:
                server.stop()
        self.moto.stop()
        self._http.close()
        logging.getLogger("werkzeug").setLevel(self._werkzeug_level)
        clock.reset()  # the runtime owned the stack clock while it ran: back to wall time
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None
        from forge_remote import aws

        aws.reset_clients()  # they point at the server that just stopped

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # -- parts
    @property
    def stack(self) -> LocalStack:
        if self._stack is None:
            raise RuntimeError("local runtime not started")
        return self._stack

    @property
    def gateway(self) -> LocalGateway:
        if self._gateway is None:
            raise RuntimeError("local runtime not started")
        return self._gateway

    @property
    def poller(self) -> SqsPoller:
        if self._poller is None:
            raise RuntimeError("local runtime not started")
        return self._poller

    @property
    def gateway_url(self) -> str:
        return self.gateway.url

    # -- driving it
    def invoke(self, logical_id: str, event: Any) -> Any:
        """Invoke a function's real handler as Lambda would: its own context, one event at a time."""
        function = self.functions[logical_id]
        context = LocalLambdaContext(
            function_name=f"{self.stack.stack_name}-{logical_id}",
            memory_limit_in_mb=function.memory_mb,
            timeout_s=function.timeout_s,
        )
        with function.lock:
            return function.module.lambda_handler(event, context)

    def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None
    ) -> requests.Response:
        """An HTTP request through the local gateway. ``body``: bytes/str as is, anything else as JSON."""
        kwargs: dict[str, Any] = {"headers": headers or {}, "timeout": 60}
        if isinstance(body, bytes | str):
            kwargs["data"] = body
        elif body is not None:
            kwargs["json"] = body
        return self._http.request(method, self.gateway.url + path, **kwargs)

    def fire_scheduler(self, input: Any = None, name: str | None = None) -> Any:
        """EventBridge Scheduler firing a schedule now (its template ``Input`` unless ``input`` is given)."""
        if self._timer is None:
            raise RuntimeError("local runtime not started")
        return self._timer.fire(name, input)

    def deliver_streams(self) -> int:
        """Hand the tables' new stream records to the functions they feed (the token wake-up); how many."""
        return sum(stream_poller.poll_once() for stream_poller in self._stream_pollers)

    def settle(self, max_rounds: int = 20) -> PollReport:
        """Stream records and queued jobs, in rounds, until neither has anything new: what AWS's event
        source mappings do in the background, done now. Returns what the job queue's poller did."""
        report = PollReport()
        for _ in range(max_rounds):
            delivered = self.deliver_streams()
            drained = self.poller.drain()
            report.add(drained)
            if not delivered and not drained.received:
                return report
        raise RuntimeError(f"still busy after {max_rounds} rounds of streams and queue")

    def start_polling(self, interval_s: float = 1.0) -> None:
        """Background polling of the job queue and the streams, as on AWS (``make local``)."""
        self.poller.start(interval_s)
        for stream_poller in self._stream_pollers:
            stream_poller.start(min(interval_s, 0.5))

    def advance(self, seconds: float) -> int:
        """Let ``seconds`` pass: token expiry moves on (the stack's clock) and deferred jobs become
        visible again (they were hidden for real seconds). Returns how many jobs were released."""
        clock.advance(seconds)
        return self.poller.release_deferred()

    # -- looking at it
    def site(self) -> Site:
        """A Confluence site whose apiBaseUrl is the Confluence emulator (a fresh installation id)."""
        api_base_url = self.confluence.start()  # already started: returns its base URL
        return Site(
            installation_id=new_installation_id(),
            cloud_id=api_base_url.rstrip("/").rsplit("/", 1)[1],
            api_base_url=api_base_url,
            site_url="https://local-site.atlassian.net",
        )

    def token_items(self, installation_id: str) -> list[dict[str, Any]]:
        """The tokens table's items for one installation (raw DynamoDB items: they hold the tokens)."""
        items: list[dict[str, Any]] = boto3.client("dynamodb").query(
            TableName=self.stack.physical["TokensTable"],
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": installation_pk(installation_id)}},
            ConsistentRead=True,
        )["Items"]
        return items

    def results(self, installation_id: str, kind: str) -> list[dict[str, Any]]:
        """Job results the worker stored for an installation (e.g. kind ``SNAPSHOT``)."""
        from forge_remote.storage.results import ResultStore

        return ResultStore(boto3.client("dynamodb"), self.stack.physical["AppTable"]).list(installation_id, kind)

    @property
    def dlq_url(self) -> str:
        """The worker queue's dead-letter queue, as its RedrivePolicy names it."""
        policy = self.stack.resources[self.poller.source.queue]["Properties"]["RedrivePolicy"]
        return self.stack.physical[policy["deadLetterTargetArn"]["Fn::GetAtt"][0]]

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """(visible, hidden) messages of the jobs queue and of its DLQ."""
        sqs = boto3.client("sqs")
        return {"queue": queue_depth(sqs, self.poller.queue_url), "dlq": queue_depth(sqs, self.dlq_url)}
