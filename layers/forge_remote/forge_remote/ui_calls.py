"""What a UI route gets: the verified call, a deadline, and Confluence clients as the user and as the app.

A UI call (``invokeRemote`` from the app's Custom UI) has 25 s and no retries (Forge's contract). A
route reads everything it needs from ``UiCall``, put in the resolver's context by ``provide_ui_call``
(a middleware after ``require_fit``):

- ``call.invocation``: the verified FIT (installation, user, site).
- ``call.confluence_as_user()``: a client with the request's own ``x-forge-oauth-user`` token, used
  within this request only: Confluence then answers with what this user may see. A call that carried
  no user token gets ``UserTokenRequired`` (403 JSON): never the app's token in its place.
- ``call.confluence_as_app()``: a client with the installation's stored app token, read through the
  token store's rules (valid long enough, re-checked before every request).
- ``call.remaining_ms()``: what is left of the answer's budget; both clients stop waiting and stop
  sending before it runs out (``RetryLater``), so a route can answer with what it has.
- ``call.captured``: what became of the tokens the call delivered. Every UI call stores them (token
  rule 1) before its route runs, so a person opening any page keeps the installation's jobs supplied
  and wakes the jobs waiting for a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forge_remote.errors import UserTokenRequired
from forge_remote.fit import Invocation
from forge_remote.lease import TokenLease

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
    from aws_lambda_powertools.event_handler.api_gateway import Router
    from aws_lambda_powertools.event_handler.middlewares import NextMiddleware

    from forge_remote.confluence import ConfluenceClient
    from forge_remote.http_wiring import HttpWiring

UI_BUDGET_S = 25.0  # Forge's limit for a UI call
ANSWER_MARGIN_S = 2.0  # kept for shaping and sending the answer
APP_TOKEN_MIN_VALIDITY_S = 120.0  # a UI request is short: a token valid for two more minutes will do


@dataclass
class UiCall:
    invocation: Invocation
    wiring: HttpWiring
    lambda_remaining_ms: Callable[[], int] | None = None
    started: float = field(default_factory=time.monotonic)
    captured: dict[str, str] = field(default_factory=dict)

    def remaining_ms(self) -> int:
        """Milliseconds left before the answer must leave: Forge's 25 s or the Lambda's, less a margin."""
        left_s = UI_BUDGET_S - (time.monotonic() - self.started)
        if self.lambda_remaining_ms is not None:
            left_s = min(left_s, self.lambda_remaining_ms() / 1000)
        return max(0, int((left_s - ANSWER_MARGIN_S) * 1000))

    def confluence_as_user(self) -> ConfluenceClient:
        """Confluence as the signed-in user, with this request's own user token."""
        token = self.invocation.user_token
        if not token or not self.invocation.principal:
            raise UserTokenRequired(
                "this route acts as the signed-in user, and the call carried no user token "
                "(enable appUserToken on the endpoint the UI module uses)"
            )
        return self._client(lambda: token)

    def confluence_as_app(self) -> ConfluenceClient:
        """Confluence as the app, with the installation's stored token (``TokenUnavailable`` if none)."""
        lease = TokenLease(self.wiring.tokens, self.invocation.installation_id, APP_TOKEN_MIN_VALIDITY_S)
        lease.acquire()
        return self._client(lease.token)

    def _client(self, token: Callable[[], str]) -> ConfluenceClient:
        from forge_remote.confluence import ConfluenceClient  # requests stays off the cold start

        return ConfluenceClient(
            self.invocation.api_base_url,
            token,
            allowed_hosts=self.wiring.settings.allowed_api_hosts,
            remaining_ms=self.remaining_ms,
            max_attempts=2,  # a person is waiting: one retry at most
            safety_margin_s=0.0,  # remaining_ms already keeps ANSWER_MARGIN_S for the answer
        )


def provide_ui_call(wiring: HttpWiring) -> Callable[[APIGatewayHttpResolver, NextMiddleware], Response[Any]]:
    """A middleware (after ``require_fit``) that gives the route its ``UiCall``."""

    def with_ui_call(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response[Any]:
        context = app.lambda_context
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        invocation = app.context["invocation"]
        captured = wiring.capture_tokens(invocation, delivered_by="ui")
        app.append_context(ui_call=UiCall(invocation, wiring, remaining, captured=captured))
        return next_middleware(app)

    return with_ui_call


def ui_call(router: Router | APIGatewayHttpResolver) -> UiCall:
    """The ``UiCall`` of the request being handled, from a route of ``router``."""
    found: UiCall = router.context["ui_call"]
    return found
