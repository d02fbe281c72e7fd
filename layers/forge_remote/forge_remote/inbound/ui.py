"""The UI function: the app's routes under ``/api/``, called by its Custom UI through ``invokeRemote``.

Every route verifies the FIT first (``require_fit``) and gets a ``UiCall`` (``provide_ui_call``):
the verified call, a deadline, and Confluence clients as the user and as the app. Forge gives a UI
call 25 s and no retries, so routes answer in-request.

``requestable_jobs`` turns on ``POST /api/jobs``: a Confluence administrator of the site asks for a
run of one of those jobs now (body ``{"job": <name>, "args": {...}}``). Who may is asked of
Confluence, as the user (``administer`` on the ``application``), never taken from the front end; the
request records the account that asked (``requestedBy``) and is ``interactive`` (someone is waiting for
it). The worker validates the arguments.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from forge_remote.errors import InstallationUninstalled, NotAllowed
from forge_remote.handler import LambdaHandler, import_modules
from forge_remote.inbound.api import register_error_handlers, require_fit
from forge_remote.inbound.ui_calls import JsonObject, OneOf, accepts, provide_ui_call, ui_call
from forge_remote.inbound.wiring import HttpWiring
from forge_remote.telemetry.logs import invocation_logging, use_function_logger

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
    from aws_lambda_powertools.event_handler.api_gateway import Router
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from forge_remote.confluence.client import ConfluenceClient

MAX_JOB_BODY_BYTES = 4096
UI_RETRY_AFTER_S = 5  # a person is waiting: retry soon


def routers_of(package: str) -> tuple[Router, ...]:
    """Every module's ``router`` in ``package``, in module name order (the same route table every start)."""
    from aws_lambda_powertools.event_handler.api_gateway import Router

    found = (getattr(module, "router", None) for module in import_modules(package))
    return tuple(router for router in found if isinstance(router, Router))


def is_site_admin(confluence: ConfluenceClient) -> bool:
    """Whether the client's user may administer Confluence on this site, as Confluence itself says."""
    user = confluence.get_json("/rest/api/user/current", {"expand": "operations"})
    operations = user.get("operations")
    return isinstance(operations, list) and any(
        isinstance(op, dict) and op.get("operation") == "administer" and op.get("targetType") == "application"
        for op in operations
    )


def job_request_router(jobs: Collection[str]) -> Router:
    """``POST /api/jobs`` for the named jobs (module docstring)."""
    from aws_lambda_powertools.event_handler.api_gateway import Router

    router = Router()  # type: ignore[no-untyped-call]
    job_field, args_field = OneOf("job", frozenset(jobs)), JsonObject("args")

    @router.post("/api/jobs")
    @accepts(body=(job_field, args_field), max_body_bytes=MAX_JOB_BODY_BYTES)  # validated before Confluence is asked
    def request_job_now() -> tuple[dict[str, Any], int]:
        from forge_remote.jobs.contract import INTERACTIVE, request_job  # off the cold start of the other routes
        from forge_remote.storage.installations import InstallationStatus

        call = ui_call(router)
        job, args = call.inputs[job_field], call.inputs[args_field]
        invocation = call.invocation
        # Checked before Confluence is asked: the worker would drop the request, and "requested" would be untrue.
        installation = call.wiring.installations.get(invocation.installation_id)
        if installation is not None and installation.status != InstallationStatus.ACTIVE:
            raise InstallationUninstalled("the app is uninstalled from this site: no job can be requested for it")
        if not is_site_admin(call.confluence_as_user()):
            raise NotAllowed("only a Confluence administrator of this site may request jobs")
        request_id = request_job(
            job,
            invocation.installation_id,
            args,
            requested_by=invocation.principal,
            priority=INTERACTIVE,  # the administrator is waiting for it
            queue_url=call.wiring.settings.required("jobs_queue_url"),
        )
        return {"job": job, "requestId": request_id, "requestedBy": invocation.principal}, 202

    return router


class UiHandler(LambdaHandler):
    """The UI function's Lambda handler: ``lambda_handler = ui_handler(routes="ui_routes")``."""

    def __init__(self, wiring: HttpWiring, routers: Collection[Router], logger: Logger | None = None) -> None:
        from aws_lambda_powertools import Logger
        from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

        self.wiring = wiring
        self.logger = logger or Logger()
        use_function_logger(self.logger)
        self.app: APIGatewayHttpResolver = APIGatewayHttpResolver()
        # provide_ui_call stores the delivered tokens and validates the route's inputs.
        self.app.use([require_fit(wiring.verifier, wiring.trigger_modules), provide_ui_call(wiring)])
        register_error_handlers(self.app, retry_after_s=UI_RETRY_AFTER_S)
        for router in routers:
            self.app.include_router(router)

        @invocation_logging(self.logger, correlation_id_path='headers."x-b3-traceid"')
        def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            return self.app.resolve(event, context)

        super().__init__(lambda_handler)


def ui_handler(*, routes: str, requestable_jobs: Collection[str] = ()) -> UiHandler:
    """The UI function's Lambda handler, built once per container from the environment.

    ``routes`` names the app's package of route modules: every module there with a Powertools
    ``Router`` named ``router`` is served. ``requestable_jobs``: the jobs ``POST /api/jobs`` may
    request (none: the route is not served).
    """
    from aws_lambda_powertools import Logger

    logger = Logger()
    use_function_logger(logger)  # before the first boto3 client: its log records go through it
    wiring = HttpWiring.from_env()
    routers = list(routers_of(routes))
    if requestable_jobs:
        wiring.settings.required("jobs_queue_url")  # fail at cold start, not when an admin asks
        routers.append(job_request_router(requestable_jobs))
    return UiHandler(wiring, routers, logger)
