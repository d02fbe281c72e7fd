"""Part 3, warm requests: Forge keepalive calls through the real forge_triggers handler (API Gateway v2
event in, response out) against in-process moto, and the same events through the naive anchor.

One installation, 1,000 calls, a new app token every 100 calls (Forge's cache re-delivers the same
token in between). Every call carries its own freshly signed FIT, as Forge's do; all events are built
before timing starts. DynamoDB requests are counted by a ``before-call.dynamodb.*`` hook on each side's
boto3 client; JWKS fetches by the Forge emulator's JWKS endpoint. The two sides run interleaved, one
100-call segment at a time, on the same events; the first call of each side (a cold container: it
fetches the JWKS) is reported apart from the warm percentiles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import RequestCounter, Row, Section, load_function, median, moto_stack, percentile, quiet

CALLS = 1000
PER_TOKEN = 100


@dataclass
class Side:
    """One implementation's calls: latencies, DynamoDB requests, JWKS fetches, statuses."""

    name: str
    handle: Callable[[dict[str, Any]], dict[str, Any]]
    counter: RequestCounter
    latencies_ms: list[float] = field(default_factory=list)
    jwks_fetches: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def call(self, event: dict[str, Any], jwks_count: Callable[[], int]) -> None:
        before = jwks_count()
        with quiet():
            started = time.perf_counter()
            response = self.handle(event)
            self.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.jwks_fetches += jwks_count() - before
        code = int(response["statusCode"])
        self.statuses[code] = self.statuses.get(code, 0) + 1

    def figures(self, distinct_tokens: int) -> dict[str, Any]:
        warm = self.latencies_ms[1:]
        return {
            "first_call_ms": self.latencies_ms[0],
            "p50_ms": percentile(warm, 50),
            "p99_ms": percentile(warm, 99),
            "dynamodb_requests": self.counter.snapshot(),
            "dynamodb_writes": self.counter.writes,
            "dynamodb_reads": self.counter.reads,
            "writes_per_distinct_token": self.counter.writes / distinct_tokens,
            "jwks_fetches": self.jwks_fetches,
            "statuses": self.statuses,
        }


def run(quick: bool = False) -> Section:
    import boto3

    from bench.anchor import JWKS_PRODUCTION, JWKS_STAGING, NaiveRemote
    from forge_remote import aws
    from local.apigw import http_api_event
    from local.forge_emulator import ForgeEmulator
    from local.lambda_context import LocalLambdaContext

    section = Section("warm requests")
    forge = ForgeEmulator()
    forge.start()
    try:
        with moto_stack({"ForgeAppId": forge.app_ari, "ForgeJwksUrl": forge.jwks_url}) as stack:
            site = forge.site()
            triggers = load_function(stack, "ForgeTriggersFunction")
            ours = Side(
                "forge_triggers",
                lambda event: triggers.lambda_handler(event, LocalLambdaContext("forge-triggers", timeout_s=6)),
                RequestCounter().attach(aws.dynamodb()),
            )
            naive_client = boto3.client("dynamodb")
            NaiveRemote.create_table(naive_client, "naive-settings")
            naive = NaiveRemote(
                naive_client,
                "naive-settings",
                forge.app_ari,
                {JWKS_PRODUCTION: forge.jwks_url, JWKS_STAGING: forge.jwks_url},
            )
            anchor = Side("naive", naive.handle, RequestCounter().attach(naive_client))

            # Strictly later expiries, so that each new token is newer (Forge's are).
            tokens = [forge.app_token(lifetime_s=3 * 3600 + 60 * k) for k in range(CALLS // PER_TOKEN)]
            events = [
                http_api_event(
                    "POST",
                    "/forge/keepalive",
                    headers=forge.headers(
                        site,
                        app_token=tokens[i // PER_TOKEN],
                        fit=forge.sign(forge.fit_claims(site, lifetime_s=300)),  # outlives the run (300 s is the cap)
                    ),
                    body={},
                )
                for i in range(CALLS)
            ]
            for segment in range(CALLS // PER_TOKEN):
                chunk = events[segment * PER_TOKEN : (segment + 1) * PER_TOKEN]
                for side in (ours, anchor) if segment % 2 == 0 else (anchor, ours):
                    for event in chunk:
                        side.call(event, lambda: forge.jwks_fetches)
            section.figures["token_store_write_count"] = triggers.wiring.tokens.write_count
            section.figures["jwks_cache_fetch_count"] = triggers.wiring.verifier._jwks.fetch_count
    finally:
        forge.stop()
    report(section, ours, anchor, len(tokens))
    return section


def report(section: Section, ours: Side, anchor: Side, distinct: int) -> None:
    o, a = ours.figures(distinct), anchor.figures(distinct)
    # The first call of each segment stores a new token; the others are re-deliveries (no write).
    o["new_token_p50_ms"] = median([ours.latencies_ms[i] for i in range(PER_TOKEN, CALLS, PER_TOKEN)])
    o["redelivered_token_p50_ms"] = median([ms for i, ms in enumerate(ours.latencies_ms) if i % PER_TOKEN])
    section.figures.update({"calls": CALLS, "distinct_tokens": distinct, "ours": o, "anchor": a})

    def line(label: str, mine: Any, theirs: Any = "") -> None:
        print(f"  {label:<42} {mine:>18} {theirs:>16}")

    print(f"  {CALLS} keepalive calls, one installation, a new token every {PER_TOKEN} calls ({distinct} tokens)")
    line("", "forge_triggers", "naive (ACE)")
    line("first call (cold container), ms", f"{o['first_call_ms']:.2f}", f"{a['first_call_ms']:.2f}")
    line("warm p50, ms", f"{o['p50_ms']:.2f}", f"{a['p50_ms']:.2f}")
    line("warm p99, ms", f"{o['p99_ms']:.2f}", f"{a['p99_ms']:.2f}")
    line("  p50 when the token is re-delivered, ms", f"{o['redelivered_token_p50_ms']:.2f}")
    line("  p50 when the token is new (1 write), ms", f"{o['new_token_p50_ms']:.2f}")
    line("DynamoDB write requests", o["dynamodb_writes"], a["dynamodb_writes"])
    line("  per distinct token", f"{o['writes_per_distinct_token']:.2f}", f"{a['writes_per_distinct_token']:.2f}")
    line("  all DynamoDB requests", fmt_ops(o["dynamodb_requests"]), fmt_ops(a["dynamodb_requests"]))
    line("  TokenStore.write_count", section.figures["token_store_write_count"])
    line("DynamoDB read requests", o["dynamodb_reads"], a["dynamodb_reads"])
    line("JWKS fetches", o["jwks_fetches"], a["jwks_fetches"])
    line("  JwksCache.fetch_count", section.figures["jwks_cache_fetch_count"])
    line("statuses", fmt_ops(o["statuses"]), fmt_ops(a["statuses"]))
    print("  (each new token is one TransactWriteItems: the token and the installation's 'still installed' update;")
    print("   every delivery first reads what the store holds, so a token invalidated elsewhere is stored again)")
    if set(o["statuses"]) != {204}:
        section.notes.append(f"forge_triggers answered {o['statuses']}")

    section.rows += [
        Row("warm keepalive p50", f"{o['p50_ms']:.2f} ms", f"{a['p50_ms']:.2f} ms naive", o["p50_ms"] / a["p50_ms"]),
        Row("warm keepalive p99", f"{o['p99_ms']:.2f} ms", f"{a['p99_ms']:.2f} ms naive", o["p99_ms"] / a["p99_ms"]),
        Row(
            f"DynamoDB writes / {CALLS} calls, {distinct} tokens",
            f"{o['dynamodb_writes']} ({o['writes_per_distinct_token']:.1f}/token)",
            f"{a['dynamodb_writes']} naive",
            o["dynamodb_writes"] / max(1, a["dynamodb_writes"]),
            "<= 1 per token",
            o["dynamodb_writes"] <= distinct,
        ),
        Row(
            f"DynamoDB reads / {CALLS} calls, {distinct} tokens",
            str(o["dynamodb_reads"]),
            f"{a['dynamodb_reads']} naive (reads nothing, checks nothing)",
            None,
            "<= 1 per call",
            o["dynamodb_reads"] <= CALLS,
        ),
        Row(
            f"JWKS fetches / {CALLS} calls",
            f"{o['jwks_fetches']} (first call)" if o["jwks_fetches"] == 1 else str(o["jwks_fetches"]),
            f"{a['jwks_fetches']} naive",
            o["jwks_fetches"] / max(1, a["jwks_fetches"]),
            "0 after the first",
            o["jwks_fetches"] <= 1,
        ),
    ]


def fmt_ops(counts: dict[Any, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in counts.items()) or "-"
