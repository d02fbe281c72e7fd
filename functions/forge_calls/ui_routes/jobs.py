"""``POST /api/jobs``: a Confluence administrator of the site asks for a job to run now.

Body: ``{"job": "space-digest", "args": {...}}`` and nothing else (``@accepts``). Who may do it is
asked of Confluence, as the user (``GET /wiki/rest/api/user/current?expand=operations``:
``administer`` on the ``application``), never taken from the front end. The request records the
account that asked (``requestedBy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from forge_remote import aws
from forge_remote.errors import NotAllowed
from forge_remote.inbound.ui_calls import JsonObject, OneOf, accepts, ui_call

if TYPE_CHECKING:
    from forge_remote.confluence.client import ConfluenceClient

router = Router()

# Jobs the UI may request, and the most their arguments may hold. The worker validates the arguments.
UI_JOBS = frozenset({"space-digest", "page-snapshot"})
MAX_ARGS_BYTES = 4096
JOB = OneOf("job", UI_JOBS)
ARGS = JsonObject("args")


def is_site_admin(confluence: ConfluenceClient) -> bool:
    """Whether the client's user may administer Confluence on this site, as Confluence itself says."""
    user = confluence.get_json("/rest/api/user/current", {"expand": "operations"})
    operations = user.get("operations")
    return isinstance(operations, list) and any(
        isinstance(op, dict) and op.get("operation") == "administer" and op.get("targetType") == "application"
        for op in operations
    )


@router.post("/api/jobs")
@accepts(body=(JOB, ARGS), max_body_bytes=MAX_ARGS_BYTES)  # validated before Confluence is asked
def request_job() -> tuple[dict[str, Any], int]:
    call = ui_call(router)
    job, args = call.inputs[JOB], call.inputs[ARGS]
    if not is_site_admin(call.confluence_as_user()):
        raise NotAllowed("only a Confluence administrator of this site may request jobs")
    from forge_remote.jobs.contract import JobRequest, put_job_requests  # off the cold start of the other routes

    request = JobRequest(
        job=job, installation_id=call.invocation.installation_id, args=args, requested_by=call.invocation.principal
    )
    put_job_requests(aws.events(), call.wiring.settings.required("jobs_bus"), [request])
    return {"job": job, "requestId": request.request_id, "requestedBy": request.requested_by}, 202
