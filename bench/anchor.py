"""Part 4, the anchor: the naive pattern of atlassian-connect-express 11.5.3 (docs/protocol-facts.md, section 2),
and a simulated day in which background jobs use "the token".

``NaiveRemote`` does what ``getForgeAppToken`` and its request middleware do, per request: build a new
remote JWKS client (no cross-request key cache; the JWKS chosen from the *unverified* token's
apiBaseUrl), fetch the keys, verify the FIT, then store the ``x-forge-oauth-system`` header as "the
token" of the installation, unconditionally: a missing header overwrites it with nothing, and a slow
old request overwrites a newer token. It stores no expiry and checks none.

The day: Forge calls arrive (an hourly keepalive at a spread minute of each hour, bursts of UI traffic
in working hours); Forge's token cache hands out a token until it has 2 h left (so tokens are
delivered with ~2-4 h remaining), some calls carry the previous cached token, some are delivered
minutes late (out of order), a few carry no token header. A background job runs every 5 minutes and
sends "the token": the naive app the last one it stored; this project whatever
``TokenStore.get_valid(installation, TOKEN_MIN_VALIDITY_S)`` returns, or it defers on
``TokenUnavailable``. Each Forge call goes through the real handlers (forge_triggers for keepalives,
forge_calls for UI calls) and through ``NaiveRemote``. Simulated time moves with
``forge_remote.clock.advance``; FITs are signed fresh on wall time as each call is delivered.
Each day follows a 4 h prelude of keepalives, so it starts with what a previous day left behind.
A second scenario adds the motivating thread's condition: three hours with no Forge call at all
(missed scheduled triggers overnight). Every expired send of the naive app is attributed to what
left that token in its store.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import jwt

from bench.common import RequestCounter, Row, Section, load_function, moto_stack, quiet

JWKS_PRODUCTION = "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json"
JWKS_STAGING = "https://forge.cdn.stg.atlassian-dev.net/.well-known/jwks.json"
HOUR = 3600.0
PRELUDE_H = 4  # Forge calls before midnight, so the day starts with the state a previous day left
FIT_ISSUER = "forge/invocation-token"


class NaiveRemote:
    """The anchor. ``jwks_urls`` maps the production/staging URLs ACE would pick to local ones."""

    def __init__(
        self, dynamodb: Any, table: str, audience: str, jwks_urls: dict[str, str], *, fetch_keys: bool = True
    ) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.audience = audience
        self.jwks_urls = jwks_urls
        # False only in the day simulation, to keep its run time down: there the point is which token
        # is stored; the per-request fetch is measured in part 3. Keys are then fetched once and reused.
        self.fetch_keys = fetch_keys
        self._clients: dict[str, jwt.PyJWKClient] = {}
        self.status_codes: dict[int, int] = {}

    @staticmethod
    def create_table(dynamodb: Any, name: str) -> None:
        dynamodb.create_table(
            TableName=name,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
        fit = headers.get("authorization", "").partition(" ")[2]
        try:
            unverified = jwt.decode(fit, options={"verify_signature": False})
            api_base_url = str(unverified.get("app", {}).get("apiBaseUrl", ""))
            # ACE picks the JWKS from the unverified token's contents.
            url = JWKS_STAGING if ".stg." in api_base_url or "staging" in api_base_url else JWKS_PRODUCTION
            if self.fetch_keys:
                keys = jwt.PyJWKClient(self.jwks_urls[url])  # a new client, so a fresh fetch, per request
            else:
                if url not in self._clients:
                    self._clients[url] = jwt.PyJWKClient(self.jwks_urls[url], cache_keys=True)
                keys = self._clients[url]
            key = keys.get_signing_key_from_jwt(fit)
            claims = jwt.decode(fit, key.key, algorithms=["RS256"], audience=self.audience, issuer=FIT_ISSUER)
        except jwt.PyJWTError:
            return self._answer(401)
        installation_id = claims["app"]["installationId"]
        token = headers.get("x-forge-oauth-system")
        # Unconditional: no expiry, no "newer" check; a missing header stores nothing over the token.
        self.dynamodb.put_item(
            TableName=self.table,
            Item={"pk": {"S": installation_id}, "token": {"S": token} if token else {"NULL": True}},
        )
        return self._answer(204)

    def _answer(self, status: int) -> dict[str, Any]:
        self.status_codes[status] = self.status_codes.get(status, 0) + 1
        return {"statusCode": status}

    def forge_app_token(self, installation_id: str) -> str | None:
        """``getForgeAppToken``: whatever the last call left behind."""
        item = self.dynamodb.get_item(TableName=self.table, Key={"pk": {"S": installation_id}}).get("Item")
        if not item or "S" not in item.get("token", {}):
            return None
        value: str = item["token"]["S"]
        return value


def token_exp(token: str) -> float:
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    return float(exp)


# -- the simulated day ----------------------------------------------------------------------------------
SENT_NAIVE = ("sent_valid", "sent_expired", "sent_no_token")


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str  # for the summary table
    quiet_hours: tuple[float, float] | None = None  # no Forge call at all in [start, end) hours
    token_lifetime_s: float = 4 * HOUR  # Forge's maximum
    reissue_below_s: float = 2 * HOUR  # Forge mints a new token when the cached one has less left
    older_token_share: float = 0.05  # calls served with the previous cached token (still valid)
    late_share: float = 0.05  # calls delivered 30 s to 4 min late (out of order)
    no_header_share: float = 0.01  # calls without x-forge-oauth-system
    job_interval_s: float = 300.0


SCENARIOS = (
    Scenario("typical day", "typical day"),
    Scenario("a day with 3 h of no Forge calls at all (03:00-06:00)", "3 h without calls", quiet_hours=(3.0, 6.0)),
)


@dataclass
class Call:
    issued: float  # seconds into the day
    delivered: float
    kind: str  # "keepalive" or "ui"
    token: str | None = field(repr=False)
    older: bool = False


def forge_calls(rng: random.Random, forge: Any, day_start: float, scenario: Scenario) -> list[Call]:
    """The day's Forge calls, each with the token Forge's cache holds when the call is issued."""
    issued = [(h * HOUR + rng.uniform(0, HOUR), "keepalive") for h in range(-PRELUDE_H, 24)]
    for hour in range(8, 18):  # working hours: a few bursts of UI calls per hour
        for _ in range(rng.randint(1, 4)):
            t = hour * HOUR + rng.uniform(0, HOUR)
            for _ in range(rng.randint(5, 40)):
                issued.append((t, "ui"))
                t += rng.uniform(1, 20)
    if scenario.quiet_hours:
        start, end = scenario.quiet_hours
        issued = [c for c in issued if not start * HOUR <= c[0] < end * HOUR]
    issued.sort()

    current: tuple[str, float] | None = None  # (token, exp in seconds into the day)
    previous: tuple[str, float] | None = None
    calls: list[Call] = []
    for t, kind in issued:
        if current is None or current[1] - t < scenario.reissue_below_s:
            previous = current
            token = forge.app_token(lifetime_s=scenario.token_lifetime_s, issued_at=day_start + t)
            current = (token, t + scenario.token_lifetime_s)
        older = previous is not None and previous[1] > t and rng.random() < scenario.older_token_share
        chosen = previous if older else current
        assert chosen is not None
        delay = rng.uniform(30, 240) if rng.random() < scenario.late_share else rng.uniform(0.05, 1.0)
        token_value: str | None = chosen[0] if rng.random() >= scenario.no_header_share else None
        calls.append(Call(issued=t, delivered=t + delay, kind=kind, token=token_value, older=older))
    calls.sort(key=lambda c: c.delivered)
    return calls


def call_event(forge: Any, site: Any, call: Call) -> tuple[dict[str, Any], bool]:
    """The API Gateway event of one Forge call with a fresh FIT, and whether it is a UI call (forge_calls)
    rather than the keepalive (forge_triggers)."""
    from local.apigw import http_api_event

    ui = call.kind == "ui"
    headers = forge.headers(
        site,
        app_token=call.token,
        principal="557058:bench-user" if ui else None,
        module_key="ui-resolver" if ui else "keepalive-endpoint",
    )
    if ui:
        return http_api_event("GET", "/api/status", headers=headers), True
    return http_api_event("POST", "/forge/keepalive", headers=headers, body={}), False


class Day:
    """One simulated day for one installation: the real handlers, the naive app, and the job runs."""

    def __init__(self, stack: Any, forge: Any, scenario: Scenario, day_start: float) -> None:
        import boto3

        from forge_remote import aws
        from forge_remote.tokens.store import TokenStore

        self.forge, self.scenario, self.day_start = forge, scenario, day_start
        self.site = forge.site()
        self.calls_module = load_function(stack, "ForgeCallsFunction")
        self.counters = [RequestCounter().attach(aws.dynamodb())]
        self.triggers_module = load_function(stack, "ForgeTriggersFunction")
        self.counters.append(RequestCounter().attach(aws.dynamodb()))
        worker_env = stack.environment("ConfluenceWorkerFunction")
        self.min_validity = float(worker_env["TOKEN_MIN_VALIDITY_S"])
        self.worker_tokens = TokenStore(boto3.client("dynamodb"), worker_env["TOKENS_TABLE"])
        naive_client = boto3.client("dynamodb")
        NaiveRemote.create_table(naive_client, "naive-settings")
        self.naive_counter = RequestCounter().attach(naive_client)
        self.naive = NaiveRemote(
            naive_client,
            "naive-settings",
            forge.app_ari,
            {JWKS_PRODUCTION: forge.jwks_url, JWKS_STAGING: forge.jwks_url},
            fetch_keys=False,
        )
        self.ours = {"sent_valid": 0, "sent_expired": 0, "deferred": 0}
        self.anchor = {"sent_valid": 0, "sent_expired": 0, "sent_no_token": 0}
        self.ours_status: dict[int, int] = {}
        self.ours_jwks = 0
        # What left the naive app's stored token there: the cause of each of its expired sends.
        self.naive_stored_by = "nothing stored yet"
        self.newest_delivered_exp = 0.0
        self.expired_causes: dict[str, int] = {}

    def job_run(self) -> None:
        """A background job sends "the token": this project's valid one or a deferral; the naive last one."""
        from forge_remote import clock
        from forge_remote.errors import TokenUnavailable

        now = clock.now()
        try:
            token = self.worker_tokens.get_valid(self.site.installation_id, self.min_validity).token
            self.ours["sent_expired" if token_exp(token) <= now else "sent_valid"] += 1
        except TokenUnavailable:
            self.ours["deferred"] += 1
        naive_token = self.naive.forge_app_token(self.site.installation_id)
        if naive_token is None:
            self.anchor["sent_no_token"] += 1
        elif token_exp(naive_token) <= now:
            self.anchor["sent_expired"] += 1
            self.expired_causes[self.naive_stored_by] = self.expired_causes.get(self.naive_stored_by, 0) + 1
        else:
            self.anchor["sent_valid"] += 1

    def forge_call(self, call: Call) -> None:
        """One Forge call, delivered now with a fresh FIT, to the real handler and to the naive app."""
        from local.lambda_context import LocalLambdaContext

        event, ui = call_event(self.forge, self.site, call)
        module = self.calls_module if ui else self.triggers_module
        before = self.forge.jwks_fetches
        with quiet():
            response = module.lambda_handler(event, LocalLambdaContext(timeout_s=25 if ui else 6))
        self.ours_jwks += self.forge.jwks_fetches - before
        self.ours_status[response["statusCode"]] = self.ours_status.get(response["statusCode"], 0) + 1
        self.naive.handle(event)
        if call.token is None:
            self.naive_stored_by = "a call without the header stored last"
            return
        exp = token_exp(call.token)
        if call.older:
            self.naive_stored_by = "the previous cached token stored last"
        elif exp < self.newest_delivered_exp:
            self.naive_stored_by = "a late call overwrote a newer token"
        else:
            self.naive_stored_by = "no Forge call before the token expired"
        self.newest_delivered_exp = max(self.newest_delivered_exp, exp)

    def play(self, calls: list[Call]) -> int:
        """Calls and job runs in time order, moving the library's clock; returns the number of job runs."""
        from forge_remote import clock

        jobs = [i * self.scenario.job_interval_s for i in range(int(24 * HOUR / self.scenario.job_interval_s))]
        timeline: list[tuple[float, int, Call | None]] = [(c.delivered, 0, c) for c in calls]
        timeline += [(t, 1, None) for t in jobs]
        timeline.sort(key=lambda e: (e[0], e[1]))
        for at, _, call in timeline:
            lag = at - (clock.now() - self.day_start)
            if lag > 0:
                clock.advance(lag)
            if call is None:
                self.job_run()
            else:
                self.forge_call(call)
        return len(jobs)


def simulate_day(scenario: Scenario, seed: int) -> dict[str, Any]:
    from forge_remote import clock
    from local.forge_emulator import ForgeEmulator

    forge = ForgeEmulator()
    forge.start()
    clock.reset()
    try:
        with moto_stack({"ForgeAppId": forge.app_ari, "ForgeJwksUrl": forge.jwks_url}) as stack:
            day_start = clock.now() + PRELUDE_H * HOUR  # the clock starts at the prelude
            day = Day(stack, forge, scenario, day_start)
            calls = forge_calls(random.Random(seed), forge, day_start, scenario)
            job_runs = day.play(calls)
            return {
                "scenario": scenario.name,
                "seed": seed,
                "forge_calls": len(calls),
                "keepalives": sum(c.kind == "keepalive" for c in calls),
                "ui_calls": sum(c.kind == "ui" for c in calls),
                "distinct_tokens": len({c.token for c in calls if c.token}),
                "older_token_calls": sum(c.older for c in calls),
                "late_calls": sum(c.delivered - c.issued >= 30 for c in calls),
                "no_header_calls": sum(c.token is None for c in calls),
                "job_runs": job_runs,
                "ours": day.ours,
                "anchor": day.anchor,
                "ours_writes": sum(c.writes for c in day.counters),
                "anchor_writes": day.naive_counter.writes,
                "ours_jwks_fetches": day.ours_jwks,
                "anchor_expired_causes": day.expired_causes,
                "ours_status": day.ours_status,
                "anchor_status": day.naive.status_codes,
            }
    finally:
        clock.reset()
        forge.stop()


def _sum(days: list[dict[str, Any]], *path: str) -> int:
    total = 0
    for day in days:
        value: Any = day
        for key in path:
            value = value[key]
        total += int(value)
    return total


def run(quick: bool = False) -> Section:
    section = Section("anchor: a simulated day")
    days_per_scenario = 1 if quick else 3
    print(
        "  Forge: tokens minted with a 4 h lifetime and reissued below 2 h left; 5% of calls carry the previous\n"
        "  cached token, 5% arrive 30 s-4 min late (out of order), 1% carry no token header; an hourly keepalive\n"
        "  and UI bursts 08:00-18:00. A background job every 5 min sends 'the token'.\n"
        f"  {days_per_scenario} day(s) per scenario (fixed seeds), each after a 4 h prelude of Forge calls."
    )
    for index, scenario in enumerate(SCENARIOS):
        days = [simulate_day(scenario, seed=100 * index + d) for d in range(days_per_scenario)]
        report_scenario(section, scenario, days)
    return section


def report_scenario(section: Section, scenario: Scenario, days: list[dict[str, Any]]) -> None:
    jobs = _sum(days, "job_runs")
    figures: dict[str, Any] = {"days": days, "job_runs": jobs}
    for side, outcomes in (("ours", ("sent_valid", "sent_expired", "deferred")), ("anchor", SENT_NAIVE)):
        for outcome in outcomes:
            figures[f"{side}_{outcome}"] = _sum(days, side, outcome)
    causes: dict[str, int] = {}
    for day in days:
        for cause, n in day["anchor_expired_causes"].items():
            causes[cause] = causes.get(cause, 0) + n
    figures["anchor_expired_causes"] = causes
    section.figures[scenario.name] = figures

    def line(label: str, mine: Any, theirs: Any) -> None:
        print(f"    {label:<34} {mine:>14} {theirs:>14}")

    print(f"\n  {scenario.name}:")
    print(
        f"    Forge calls {_sum(days, 'forge_calls')} (keepalive {_sum(days, 'keepalives')}, "
        f"UI {_sum(days, 'ui_calls')}); distinct tokens {_sum(days, 'distinct_tokens')}; with the previous "
        f"token {_sum(days, 'older_token_calls')}; late {_sum(days, 'late_calls')}; "
        f"no header {_sum(days, 'no_header_calls')}"
    )
    print(f"    background job runs {jobs}")
    line("", "this project", "naive (ACE)")
    line("sent with a valid token", figures["ours_sent_valid"], figures["anchor_sent_valid"])
    line("sent with an EXPIRED token", figures["ours_sent_expired"], figures["anchor_sent_expired"])
    line("sent with no token (undefined)", 0, figures["anchor_sent_no_token"])
    line("deferred (waits for a token)", figures["ours_deferred"], "-")
    line("DynamoDB writes", _sum(days, "ours_writes"), _sum(days, "anchor_writes"))
    line("JWKS fetches", _sum(days, "ours_jwks_fetches"), "1 per call*")
    print("    * measured in part 3; here the naive side reuses its keys, to keep the run short")
    if causes:
        print("    why the naive app sent expired tokens:")
        for cause, n in sorted(causes.items(), key=lambda kv: -kv[1]):
            print(f"      {n:>4}  {cause}")
    statuses = [d["ours_status"] for d in days]
    if any(set(s) - {200, 204} for s in statuses):
        section.notes.append(f"{scenario.name}: unexpected handler statuses {statuses}")
        print(f"    NOTE: unexpected handler statuses {statuses}")
    section.rows.append(
        Row(
            f"expired-token job sends, {scenario.label}",
            f"{figures['ours_sent_expired']} of {jobs} ({figures['ours_deferred']} deferred)",
            f"{figures['anchor_sent_expired']} (+{figures['anchor_sent_no_token']} no token)",
            None,
            "0",
            figures["ours_sent_expired"] == 0,
        )
    )
