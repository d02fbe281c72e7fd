"""UI routes (``/api/...``), called by the Forge app's UI through ``invokeRemote``.

Answers in-request (Forge gives UI calls 25 s and no retries). Every route verifies the FIT first
(``require_fit``) and gets a ``UiCall`` (``provide_ui_call``): the verified call, a deadline, and
Confluence clients as the user and as the app. The routes live in ``ui_routes/``, one module per
group; every module there with a ``router`` is served.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.utilities.typing import LambdaContext
from ui_routes import ROUTERS

from forge_remote.inbound.api import register_error_handlers, require_fit
from forge_remote.inbound.ui_calls import provide_ui_call
from forge_remote.inbound.wiring import HttpWiring
from forge_remote.telemetry.logs import use_function_logger

logger = Logger()
use_function_logger(logger)
wiring = HttpWiring.from_env()
wiring.settings.required("jobs_bus")  # POST /api/jobs puts job requests on it: fail at cold start, not then
app = APIGatewayHttpResolver()
app.use([require_fit(wiring.verifier), provide_ui_call(wiring)])  # provide_ui_call validates inputs too
register_error_handlers(app, retry_after_s=5)  # a person is waiting: retry soon
for router in ROUTERS:
    app.include_router(router)


@logger.inject_lambda_context(correlation_id_path='headers."x-b3-traceid"')
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
