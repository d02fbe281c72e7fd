"""The embedded local stack in one object: what ``make demo``, ``make local`` and the integration tests
all run, so the three cannot drift apart.

``LocalRuntime().start()`` brings up, on 127.0.0.1 only: moto in server mode (DynamoDB, SQS) with
the template's tables and queues; the Forge emulator (FIT signing key
and JWKS); the Confluence emulator; the five real handler modules with the environment the template
gives each; the HTTP gateway in front of the HTTP functions; the SQS poller in front of the worker;
and the scheduler timer. ``stop()`` undoes all of it, environment and clock included.

One stack of several (data residency, ``local/realms.py``): ``region``, ``stack_name`` and ``parameters``
(``DataRealm``, ``PeerAppTables``) make it one realm's, and ``moto_url`` joins the moto server another
stack's process runs instead of starting one (then neither reset nor stopped here).

A running stack picks up edits as a deploy would: ``reload_changed()`` (every second in the background
after ``start_watching()``) imports afresh the functions whose files changed under their ``CodeUri``
folder, or all of them when the library did (``local/reload.py`` says what is purged and kept).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Collection, Mapping
from contextlib import ExitStack, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import boto3
import requests

from forge_remote import clock
from forge_remote.config import PRODUCTION_JWKS_URL
from forge_remote.errors import ConfigurationError
from forge_remote.storage.table_keys import installation_pk
from local.cfn_yaml import http_routes
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import DEFAULT_APP_ID, ForgeEmulator, Site, new_installation_id
from local.gateway import LocalGateway
from local.handlers import ROOT, handler_module_name, load_handler
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
from local.reload import (
    LIBRARY_DIR,
    ImportState,
    Owns,
    RegistryState,
    SourceWatcher,
    any_of,
    describe_failure,
    drop_jobs,
    files_text,
    forget_bytecode,
    function_modules,
    kept_library_files,
    library_modules,
    purge_modules,
    restore_modules,
)
from local.stack import TEMPLATE, LocalStack

# Local-only settings on top of the template's: no X-Ray daemon and no CloudWatch to publish to.
LOCAL_FUNCTION_ENV = {"POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true"}
WATCHER_STOP_TIMEOUT_S = 30  # a reload stuck in an import must not keep stop() waiting forever

LoadHook = Callable[[Any], None]


class ReloadFailed(Exception):
    """A fresh import that did not happen; ``line`` is the report (the function keeps its previous code)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


@dataclass
class LocalFunction:
    """One loaded handler module, with the limits the template gives its function."""

    logical_id: str
    module: Any
    timeout_s: float
    memory_mb: int
    # Lambda runs one event at a time per container; the modules keep per-event state in globals.
    # A reload swaps ``module`` under it too: an event in flight ends on the old code, the next gets the new.
    lock: threading.Lock
    code_uri: str = ""  # the template's CodeUri, without the trailing slash


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
        functions_root: Path | None = None,
        watch_library: bool = True,
        region: str = "us-east-1",
        stack_name: str = "forge-remote-local",
        moto_url: str | None = None,
        parameters: Mapping[str, str] | None = None,
        function_env: Mapping[str, str] | None = None,
    ) -> None:
        """``production_jwks``: verify FITs with Atlassian's production keys (a real Forge app through a
        tunnel) instead of the emulator's. ``allowed_api_hosts`` defaults to the Confluence emulator.
        ``function_logs``: where the handlers' Powertools logs go (default stderr, apart from narration).
        ``digest_spread_minutes``: the template's ``DigestSpreadMinutes``; 0 here (not the template's 60)
        so that a fired digest's jobs are on the queue at once: SQS would delay them for real minutes.
        ``functions_root``: where the template's ``CodeUri`` folders are (default: this repository; a test
        points it at a copy of ``functions/`` it may edit). ``watch_library``: ``reload_changed`` also
        watches ``forge_remote`` (a change there reloads every function).
        ``region`` and ``stack_name``: where and under which names the template's tables and queues are
        made. ``moto_url``: a moto server another process runs, joined (not started, reset or stopped).
        ``parameters``: template parameters on top of the ones set here (they win). ``function_env``:
        local values for environment variables the template sets (every function that sets one gets the
        value), e.g. ``MIGRATION_SETTLE_S``; a name no function sets is a ``ConfigurationError`` at ``start()``.
        """
        self._gateway_port = gateway_port
        self._production_jwks = production_jwks
        self._allowed_api_hosts = allowed_api_hosts
        self._token_min_validity_s = token_min_validity_s
        self._log_level = log_level
        self._function_logs = function_logs
        self._digest_spread_minutes = digest_spread_minutes
        self._stack_name = stack_name
        self._parameters = dict(parameters or {})
        self._function_env = dict(function_env or {})
        self.moto = MotoServer(region=region, url=moto_url)
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
        self._functions_root = (functions_root or ROOT).resolve()
        self._watch_library = watch_library
        self._load_hooks: dict[str, list[LoadHook]] = {}
        self._watcher: SourceWatcher | None = None
        self._reload_lock = threading.Lock()  # one reload at a time: the watcher thread's, or a caller's
        self._pending: dict[str, set[Path]] = {}  # changed files of a function whose reload failed
        self._pending_library: set[Path] = set()  # the same for the library: every function retries
        self._watch_thread: threading.Thread | None = None
        self._watch_stop = threading.Event()  # set by stop(): a reload still waiting for a function gives up
        self._import_state: ImportState | None = None
        self._imported_afresh = False  # then stop() puts sys.modules, sys.path and the job registry back
        self._library_imported_afresh = False

    # -- lifecycle
    def start(self) -> Self:
        self._saved_env = dict(os.environ)
        self._import_state = ImportState.capture()
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
        if not self.moto.joined:
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
        parameters.update(self._parameters)
        session = boto3.session.Session(region_name=self.moto.region)
        stack = LocalStack.from_template(
            TEMPLATE, parameters=parameters, region=self.moto.region, stack_name=self._stack_name
        )
        self._check_function_env(stack)
        if self.moto.joined:  # the server outlives this stack's runs: an earlier run's tables may be there
            stack.remove_leftovers(dynamodb=session.client("dynamodb"), sqs=session.client("sqs"))
        self._stack = stack.create(dynamodb=session.client("dynamodb"), sqs=session.client("sqs"))
        # Before the imports: a file saved while they run is then seen as changed, not missed.
        self._watcher = SourceWatcher(self._watched_folders(self._stack))
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

    def _watched_folders(self, stack: LocalStack) -> tuple[Path, ...]:
        folders = [self._functions_root / code_uri for code_uri in sorted(set(stack.functions().values()))]
        return (*folders, *([LIBRARY_DIR] if self._watch_library else []))

    def _load_functions(self, stack: LocalStack) -> None:
        template_globals = stack.template.get("Globals", {}).get("Function", {})
        # Another copy of the functions: this process may already hold the repository's own modules of the
        # same names (confluence_jobs), which must not stand in for the copy's.
        afresh = self._functions_root != ROOT
        self._imported_afresh = afresh
        # Powertools binds its log stream when a module creates its Logger: point it away from stdout.
        with redirect_stdout(self._function_logs or sys.stderr):
            for logical_id, code_uri in stack.functions().items():
                props = stack.resources[logical_id].get("Properties", {})
                function = LocalFunction(
                    logical_id=logical_id,
                    module=None,
                    timeout_s=float(props.get("Timeout", template_globals.get("Timeout", 3))),
                    memory_mb=int(props.get("MemorySize", template_globals.get("MemorySize", 128))),
                    lock=threading.Lock(),
                    code_uri=code_uri,
                )
                self.functions[logical_id] = function
                if afresh:
                    drop_jobs(purge_modules(self._owns(logical_id)))
                # One after another: each module reads its environment at import, as on Lambda.
                function.module = self._import_handler(logical_id)
                for hook in self._load_hooks.get(logical_id, []):
                    hook(function.module)

    def _check_function_env(self, stack: LocalStack) -> None:
        known = {name for logical_id in stack.functions() for name in stack.environment_names(logical_id)}
        unknown = sorted(set(self._function_env) - known)
        if unknown:
            raise ConfigurationError(
                f"no function in template.yaml sets {', '.join(unknown)}: nothing to give a local value"
            )

    def function_environment(self, logical_id: str) -> dict[str, str]:
        """What the function's module is imported with: the template's environment, the local values of
        ``function_env`` for the names it sets, and the local-only settings (``LOCAL_FUNCTION_ENV``)."""
        env = self.stack.environment(logical_id)
        env.update({name: value for name, value in self._function_env.items() if name in env})
        return {**env, **LOCAL_FUNCTION_ENV}

    def _import_handler(self, logical_id: str) -> Any:
        env = self.function_environment(logical_id)
        return load_handler(logical_id, self.functions[logical_id].code_uri, env, root=self._functions_root)

    def stop(self) -> None:
        """Stop every server and put the process back as it was (environment, clock, boto3 clients, and the
        modules, import path and job registry a reload or another ``functions_root`` changed)."""
        self._stop_watching()
        self._watcher = None
        if self._poller is not None:
            self._poller.stop()
        for stream_poller in self._stream_pollers:
            stream_poller.stop()
        self._stream_pollers = []
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
        if self._import_state is not None and self._imported_afresh:
            # Later loads in this process (tests) must find the modules and jobs they would have found.
            owners = [self._owns(logical_id) for logical_id in self.functions]
            self._import_state.restore(any_of([*owners, *([library_modules] if self._library_imported_afresh else [])]))
        self._import_state = None
        self.functions.clear()
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

    # -- picking up edits
    def on_load(self, logical_id: str, hook: LoadHook) -> None:
        """Call ``hook(handler)`` with the function's handler now (if loaded), and with every handler a reload
        brings, before that one serves an event: how local wiring (the job outcomes journal's observer)
        outlives a reload. A hook that raises on a new handler fails that reload."""
        if self._stack is not None and logical_id not in self.functions:
            raise KeyError(f"no function {logical_id!r} in the template")
        with self._reload_lock:  # not between a reload's hooks and its swap
            self._load_hooks.setdefault(logical_id, []).append(hook)
            function = self.functions.get(logical_id)
            if function is not None and function.module is not None:
                with function.lock:
                    hook(function.module)

    def start_watching(self, interval_s: float = 1.0, notify: Callable[[str], None] = print) -> None:
        """Reload edited functions in the background (``make local``): ``reload_changed()`` every ``interval_s``
        seconds, each line it returns given to ``notify``. ``stop()`` ends it."""
        if self._watcher is None:
            raise RuntimeError("local runtime not started")
        if self._watch_thread is not None:
            raise RuntimeError("already watching")
        self._watch_stop.clear()

        def watch() -> None:
            while not self._watch_stop.wait(interval_s):
                try:
                    lines = self.reload_changed()
                except Exception as exc:  # a bug here must stop neither the watching nor the stack
                    lines = [f"looking for changed sources failed: {type(exc).__name__}: {exc}"]
                for line in lines:
                    with contextlib.suppress(Exception):  # whatever notify does, the next change is still seen
                        notify(line)

        self._watch_thread = threading.Thread(target=watch, name="local-reload", daemon=True)
        self._watch_thread.start()

    def _stop_watching(self) -> None:
        self._watch_stop.set()
        thread, self._watch_thread = self._watch_thread, None
        if thread is not None:
            thread.join(timeout=WATCHER_STOP_TIMEOUT_S)

    def reload_changed(self) -> list[str]:
        """Import afresh every function whose sources changed since the last look (a library change: all of
        them), as Lambda runs a function after a deploy; one line per function says what happened.

        ``reloaded <function> (<files> changed)``; or ``<function> not reloaded ...: file:line: Type: message``,
        and the function keeps running its previous code until one of its files changes again (then the
        files of the failed reload are retried with it). Synchronous: the watcher thread calls it, tests too.
        """
        with self._reload_lock:
            if self._watcher is None:
                raise RuntimeError("local runtime not started")
            changed = self._watcher.changes()
            if not changed:
                return []
            forget_bytecode(changed)
            library = {path for path in changed if self._watch_library and path.is_relative_to(LIBRARY_DIR)}
            by_function: dict[str, set[Path]] = {}
            for logical_id, function in self.functions.items():
                folder = self._functions_root / function.code_uri
                mine = {path for path in changed if path.is_relative_to(folder)}
                if mine:
                    by_function[logical_id] = mine
            # A library change not applied yet is retried at any change: a function's fix may be what it needs.
            if library or self._pending_library:
                return self._reload_library(library | self._pending_library, by_function)
            lines: list[str] = []
            for logical_id in sorted(by_function):
                lines.append(
                    self._reload_function(logical_id, by_function[logical_id] | self._pending.pop(logical_id, set()))
                )
            return lines

    def _reload_function(self, logical_id: str, changed: set[Path]) -> str:
        function = self.functions[logical_id]
        with function.lock:
            if self._watch_stop.is_set():
                return f"{logical_id} not reloaded: the stack is stopping"
            try:
                (module,) = self._import_afresh([logical_id], changed, library=False).values()
            except ReloadFailed as failure:
                self._pending[logical_id] = changed
                return failure.line
            function.module = module
        return f"reloaded {logical_id} ({files_text(changed, self._shown)} changed)"

    def _reload_library(self, library: set[Path], by_function: dict[str, set[Path]]) -> list[str]:
        logical_ids = sorted(self.functions)
        changed = {
            logical_id: library | by_function.get(logical_id, set()) | self._pending.get(logical_id, set())
            for logical_id in logical_ids
        }
        with ExitStack() as held:
            # Every function at once (in one order: nothing else takes two): none runs while the library is
            # swapped, so none mixes old modules with new ones, nor catches an exception class of the other.
            for logical_id in logical_ids:
                held.enter_context(self.functions[logical_id].lock)
            if self._watch_stop.is_set():
                return ["the library's change not applied: the stack is stopping"]
            try:
                loaded = self._import_afresh(logical_ids, set[Path]().union(*changed.values()), library=True)
            except ReloadFailed as failure:
                self._pending_library = library
                self._pending = {
                    logical_id: paths - library for logical_id, paths in changed.items() if paths - library
                }
                return [failure.line]
            for logical_id, module in loaded.items():
                self.functions[logical_id].module = module
        self._pending_library, self._pending = set(), {}
        kept = kept_library_files()
        return [
            *(
                f"reloaded {logical_id} ({files_text(changed[logical_id], self._shown)} changed)"
                for logical_id in logical_ids
            ),
            *(
                f"{self._shown(path)} is not reloaded (its state is the whole stack's): restart the stack to use it"
                for path in sorted(library)
                if path.resolve() in kept
            ),
        ]

    def _import_afresh(self, logical_ids: list[str], changed: Collection[Path], *, library: bool) -> dict[str, Any]:
        """The functions' handlers imported afresh, hooks applied (the caller holds their locks): each one's
        own modules purged first, and with ``library`` every ``forge_remote`` module but the kept ones.

        All or none: if one fails, ``sys.modules``, the job registry and the environment are as they were,
        and ``ReloadFailed`` names the function, the file and the error.
        """
        saved_modules = dict(sys.modules)
        saved_jobs = RegistryState.capture()
        saved_env = dict(os.environ)
        owners: list[Owns] = [self._owns(logical_id) for logical_id in logical_ids]
        self._imported_afresh = True
        self._library_imported_afresh |= library
        loaded: dict[str, Any] = {}
        current = logical_ids[0]
        try:
            importlib.invalidate_caches()  # a folder's listing is cached: a new module would not be found
            if library:
                purge_modules(library_modules)
            with redirect_stdout(self._function_logs or sys.stderr):
                for current, owns in zip(logical_ids, owners, strict=True):
                    drop_jobs(purge_modules(owns))
                    module = self._import_handler(current)
                    for hook in self._load_hooks.get(current, []):
                        hook(module)
                    loaded[current] = module
        except BaseException as exc:
            restore_modules(saved_modules, any_of([*owners, *([library_modules] if library else [])]))
            saved_jobs.restore()
            if not isinstance(exc, Exception | SystemExit):
                raise
            raise ReloadFailed(self._failure_line(current, exc, changed, library=library)) from exc
        finally:
            # The process's environment stays the one the start left. Only the keys a function sets are put
            # back, never the whole: other threads read the environment meanwhile.
            names = {name for logical_id in logical_ids for name in self.stack.environment(logical_id)}
            for name in names | LOCAL_FUNCTION_ENV.keys():
                if name in saved_env:
                    os.environ[name] = saved_env[name]
                else:
                    os.environ.pop(name, None)
        return loaded

    def _failure_line(self, logical_id: str, error: BaseException, changed: Collection[Path], *, library: bool) -> str:
        roots = [self._functions_root / function.code_uri for function in self.functions.values()] + [LIBRARY_DIR]
        where = describe_failure(error, prefer=changed, roots=roots, shown=self._shown)
        if library:
            return f"{logical_id} not reloaded, nor any other function (the library changed; their previous code still runs): {where}"
        return f"{logical_id} not reloaded (its previous code still runs): {where}"

    def _owns(self, logical_id: str) -> Owns:
        code_uri = self.functions[logical_id].code_uri
        return function_modules(self._functions_root / code_uri, code_uri, handler_module_name(logical_id))

    def _shown(self, path: Path) -> str:
        """A path as the developer knows it: from the functions' root or the repository's."""
        for root in (self._functions_root, ROOT):
            with contextlib.suppress(ValueError):
                return str(path.relative_to(root))
        return str(path)

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
