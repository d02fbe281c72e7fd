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
- ``call.inputs``: the request's query and body, already validated against what the route declares
  with ``@accepts(query=..., body=...)``; ``call.inputs[DAYS]`` is typed by the field. A route that
  declares nothing takes no query parameter and no body: anything else is a 400 before it runs, so a
  new route cannot forget to validate. Query parameters the route does not declare, or gives twice,
  are a 400; so is a body that is not one strict JSON object of declared fields (``payloads.json_object``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import parse_qsl

from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

from forge_remote.errors import MalformedEvent, UserTokenRequired
from forge_remote.forge.invocations import Invocation
from forge_remote.forge.payloads import MAX_BODY_BYTES, decode_body, json_object
from forge_remote.tokens.lease import TokenLease

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
    from aws_lambda_powertools.event_handler.api_gateway import Router
    from aws_lambda_powertools.event_handler.middlewares import NextMiddleware

    from forge_remote.confluence.client import ConfluenceClient
    from forge_remote.inbound.wiring import HttpWiring

UI_BUDGET_S = 25.0  # Forge's limit for a UI call
ANSWER_MARGIN_S = 2.0  # kept for shaping and sending the answer
APP_TOKEN_MIN_VALIDITY_S = 120.0  # a UI request is short: a token valid for two more minutes will do
MAX_QUERY_CHARS = 2048  # the shipped routes need a few dozen
MAX_QUERY_PARAMS = 32
MAX_DIGITS = 9  # a whole number's digits: int() stays trivial, and no bound of ours is longer
ACCEPTS_ATTR = "__ui_accepts__"
# What of a name nobody declared may be quoted back: short and plain, so never a piece of a token.
_QUOTABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,23}")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
RouteFunc = TypeVar("RouteFunc", bound=Callable[..., Any])


# -- what a route accepts ----------------------------------------------------------------------------
class InputField(Protocol[T_co]):
    """One query parameter or body field: its name, its value from what was sent, its value if absent.
    ``parse`` and ``missing`` raise ``MalformedEvent`` (a 400) with a message naming the field only."""

    @property
    def name(self) -> str: ...

    def parse(self, value: object) -> T_co: ...

    def missing(self) -> T_co: ...


@dataclass(frozen=True)
class WholeNumber:
    """A query parameter: ASCII digits only (``str.isdigit`` takes superscript and fullwidth digits,
    which ``int`` then refuses or reads), at most ``MAX_DIGITS`` of them, from ``low`` to ``high``;
    ``default`` if absent."""

    name: str
    default: int
    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.default <= self.high or len(str(self.high)) > MAX_DIGITS:
            raise ValueError(f"{self.name}: need 0 <= low <= default <= high < 10**{MAX_DIGITS}")

    def parse(self, value: object) -> int:
        if not (isinstance(value, str) and 0 < len(value) <= MAX_DIGITS and value.isascii() and value.isdigit()):
            raise self._refused()
        number = int(value)
        if not self.low <= number <= self.high:
            raise self._refused()
        return number

    def missing(self) -> int:
        return self.default

    def _refused(self) -> MalformedEvent:
        return MalformedEvent(f"{self.name} must be a whole number from {self.low} to {self.high}")


@dataclass(frozen=True)
class OneOf:
    """A body field: one of a few strings (its type checked first: ``[] in a_set`` raises)."""

    name: str
    choices: frozenset[str]

    def parse(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise MalformedEvent(f"{self.name} must be one of: {', '.join(sorted(self.choices))}")
        return value

    def missing(self) -> str:
        raise MalformedEvent(f"{self.name} is required: one of {', '.join(sorted(self.choices))}")


@dataclass(frozen=True)
class JsonObject:
    """A body field: a JSON object (its contents are the receiver's to check); ``{}`` if absent."""

    name: str

    def parse(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise MalformedEvent(f"{self.name} must be a JSON object")
        return value

    def missing(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Accepts:
    """What a route takes. ``body`` None: no body at all; else a JSON object of exactly these fields."""

    query: tuple[InputField[Any], ...] = ()
    body: tuple[InputField[Any], ...] | None = None
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        for fields in (self.query, self.body or ()):
            names = [f.name for f in fields]
            if len(set(names)) != len(names):
                raise ValueError(f"a field is declared twice: {names}")

    def read(self, raw_event: Mapping[str, Any]) -> UiInputs:
        """The request's validated inputs, or ``MalformedEvent``."""
        values = self._query(raw_event)
        values.update(self._body(raw_event))
        return UiInputs(values)

    def _query(self, raw_event: Mapping[str, Any]) -> dict[str, Any]:
        given: dict[str, str] = {}
        for name, value in query_pairs(raw_event):
            if name in given:  # API Gateway would join them with a comma: refuse rather than guess
                raise MalformedEvent(f"query parameter {_quoted(name)} is given more than once")
            given[name] = value
        return _declared_values(self.query, given, "query parameter")

    def _body(self, raw_event: Mapping[str, Any]) -> dict[str, Any]:
        raw = decode_body(raw_event.get("body"), raw_event.get("isBase64Encoded") is True)
        if self.body is None:
            if raw.strip():
                raise MalformedEvent("this route takes no request body")
            return {}
        if len(raw) > self.max_body_bytes:
            raise MalformedEvent(f"body larger than {self.max_body_bytes} bytes")
        return _declared_values(self.body, json_object(raw, strict=True), "body field")


def _declared_values(fields: Sequence[InputField[Any]], given: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Each declared field parsed from ``given`` (or its default); a name not declared is refused."""
    declared = {f.name: f for f in fields}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        takes = ", ".join(declared) or "none"
        raise MalformedEvent(f"unknown {what} {_quoted(unknown[0])} (this route takes: {takes})")
    return {f.name: f.parse(given[f.name]) if f.name in given else f.missing() for f in fields}


NOTHING = Accepts()  # what a route that declares nothing takes


def accepts(
    *,
    query: Sequence[InputField[Any]] = (),
    body: Sequence[InputField[Any]] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Callable[[RouteFunc], RouteFunc]:
    """Declare a UI route's query parameters and body fields (above or below ``@router.get``: it marks
    the function itself, which is what the router holds). ``provide_ui_call`` validates against it."""
    declared = Accepts(tuple(query), None if body is None else tuple(body), max_body_bytes)

    def mark(func: RouteFunc) -> RouteFunc:
        setattr(func, ACCEPTS_ATTR, declared)
        return func

    return mark


def route_accepts(func: object) -> Accepts:
    """What a route function declared, or ``NOTHING``."""
    declared = getattr(func, ACCEPTS_ATTR, NOTHING)
    return declared if isinstance(declared, Accepts) else NOTHING


class UiInputs:
    """A request's validated inputs: ``inputs[FIELD]`` is the field's value, typed as the field parses."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, declared: InputField[T]) -> T:
        if declared.name not in self._values:
            raise KeyError(f"{declared.name} is not declared in this route's @accepts")
        return cast("T", self._values[declared.name])


def query_pairs(raw_event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every ``name=value`` of the query, in order and repeats kept, percent-decoded as UTF-8.

    ``rawQueryString`` is what the caller sent (API Gateway's ``queryStringParameters`` has already
    joined repeats with commas); the latter is read only when the former is absent (sam local, tests).
    """
    raw = raw_event.get("rawQueryString")
    if isinstance(raw, str) and raw:
        if len(raw) > MAX_QUERY_CHARS:
            raise MalformedEvent(f"query string longer than {MAX_QUERY_CHARS} characters")
        try:
            return parse_qsl(raw, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_PARAMS)
        except UnicodeDecodeError as exc:
            raise MalformedEvent("query string is not valid UTF-8 once percent-decoded") from exc
        except ValueError as exc:  # max_num_fields
            raise MalformedEvent(f"query string has more than {MAX_QUERY_PARAMS} parameters") from exc
    parameters = raw_event.get("queryStringParameters")
    if not isinstance(parameters, dict):
        return []
    if len(parameters) > MAX_QUERY_PARAMS:
        raise MalformedEvent(f"query string has more than {MAX_QUERY_PARAMS} parameters")
    pairs = [(k, v) for k, v in parameters.items() if isinstance(k, str) and isinstance(v, str)]
    if len(pairs) != len(parameters):
        raise MalformedEvent("query string is malformed")
    if sum(len(k) + len(v) + 2 for k, v in pairs) > MAX_QUERY_CHARS:
        raise MalformedEvent(f"query string longer than {MAX_QUERY_CHARS} characters")
    return pairs


def _powertools_own(func: object) -> bool:
    """Whether a "route" is one Powertools made itself (it routes a 404 through the middlewares too)."""
    return getattr(func, "__module__", None) == ApiGatewayResolver.__module__


def _quoted(name: str) -> str:
    return repr(name) if _QUOTABLE_NAME.fullmatch(name) else "(a name not shown)"


@dataclass
class UiCall:
    invocation: Invocation
    wiring: HttpWiring
    lambda_remaining_ms: Callable[[], int] | None = None
    started: float = field(default_factory=time.monotonic)
    captured: dict[str, str] = field(default_factory=dict)
    inputs: UiInputs = field(default_factory=lambda: UiInputs({}))

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
        from forge_remote.confluence.client import ConfluenceClient  # requests stays off the cold start

        return ConfluenceClient(
            self.invocation.api_base_url,
            token,
            allowed_hosts=self.wiring.settings.allowed_api_hosts,
            remaining_ms=self.remaining_ms,
            max_attempts=2,  # a person is waiting: one retry at most
            safety_margin_s=0.0,  # remaining_ms already keeps ANSWER_MARGIN_S for the answer
            # Counted in the fleet's hour, never refused by it: the quota's headroom is the UI's.
            meter=self.wiring.budget.meter(self.invocation.installation_id, background=False),
        )


def provide_ui_call(wiring: HttpWiring) -> Callable[[APIGatewayHttpResolver, NextMiddleware], Response[Any]]:
    """A middleware (after ``require_fit``) that gives the route its ``UiCall``, inputs validated.

    The tokens are stored first (token rule 1: a genuine call delivered them, whatever else it got
    wrong); then the query and body are checked against the matched route's ``@accepts`` (Powertools
    puts the matched route in ``app.context["_route"]``), a ``MalformedEvent`` (400) if they do not fit.
    Without that context every route is held to ``NOTHING``: validation fails closed, never open.
    """

    def with_ui_call(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response[Any]:
        context = app.lambda_context
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        invocation = app.context["invocation"]
        captured = wiring.capture_tokens(invocation, delivered_by="ui")
        route_func = getattr(app.context.get("_route"), "func", None)
        inputs = UiInputs({})
        if not _powertools_own(route_func):  # its 404 handler: an unknown route stays a 404, not a 400
            inputs = route_accepts(route_func).read(app.current_event.raw_event)
        app.append_context(ui_call=UiCall(invocation, wiring, remaining, captured=captured, inputs=inputs))
        return next_middleware(app)

    return with_ui_call


def ui_call(router: Router | APIGatewayHttpResolver) -> UiCall:
    """The ``UiCall`` of the request being handled, from a route of ``router``."""
    found: UiCall = router.context["ui_call"]
    return found
