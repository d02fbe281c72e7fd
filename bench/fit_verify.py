"""Part 2, FIT verification with warm keys: ``FitVerifier.verify(headers)`` against ``jwt.decode``.

The headline is the project's own overhead over the library it chose: ``jwt.decode`` of the same
token with the same key object and the same checks (RS256 only, audience, issuer, leeway, required
claims: the verifier's own constants, so the two cannot drift apart). What ``verify`` adds on top is
the Authorization header, the ``kid`` lookup in the JWKS cache, the FIT lifetime cap, the app claims
(installationId, app.id, the apiBaseUrl allow-list, icLabel, principal) and the ``Invocation``.

A raw RS256 check (split, base64url-decode the signature, ``public_key.verify`` with ``cryptography``
alone) is printed too, as information only: it is the floor any verifier pays, and the gap between
it and ``jwt.decode`` is pyjwt's, not this project's. Blocks of calls rotate through the three sides.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.common import Row, Section, median, ratio

TARGET_RATIO = 1.15


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    """CPU time per call: all three sides are CPU-bound, and on a shared machine wall time would also
    count the time other processes had the core."""
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) / calls * 1e6


def interleaved(sides: dict[str, Callable[[], object]], calls: int, blocks: int) -> dict[str, list[float]]:
    """Per-call times of each side, ``blocks`` blocks of ``calls`` calls, the order rotating every block
    (load on a shared machine drifts: each side sees every position equally often)."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for block in range(blocks):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(per_call_us(sides[name], calls))
    return times


def breakdown(sides: dict[str, Callable[[], object]], fit: str, *, calls: int, blocks: int) -> dict[str, float]:
    """Where a verify's time goes: each piece alone, in rotating blocks too (median per call)."""
    from jwt.api_jws import PyJWS

    segments = [s.encode() for s in fit.split(".")]
    check: Callable[[bytes, str], bytes] | None = getattr(PyJWS, "_decode_base64url_segment", None)

    def segment_checks() -> None:
        if check is not None:
            for segment in segments:
                check(segment, "segment")

    first, *rest = sides.items()  # the base64url checks are part of the first piece, jwt.decode
    pieces = dict([first, ("  of which pyjwt's base64url checks of the 3 segments", segment_checks), *rest])
    times = interleaved(pieces, calls, blocks)
    return {name: median(values) for name, values in times.items()}


@dataclass
class Measured:
    times: dict[str, list[float]]
    components: dict[str, float]
    token_bytes: int
    jwks_fetches: int


def measure(quick: bool) -> Measured:
    """The three sides on one FIT, with the keys cached, against the Forge emulator's JWKS."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
    from cryptography.hazmat.primitives.hashes import SHA256

    from forge_remote.forge.invocations import ALGORITHM, FIT_ISSUER, LEEWAY_S, REQUIRED_CLAIMS, FitVerifier
    from forge_remote.forge.signing_keys import JwksCache
    from local.forge_emulator import ForgeEmulator

    forge = ForgeEmulator()
    forge.start()
    try:
        site = forge.site()
        # A UI call's FIT (a principal, a module key) with both tokens: the most a verify has to read.
        # Long-lived so it stays valid for the whole measurement (Forge's live ~25 s; 300 s is the cap).
        principal = "557058:0a1b2c3d-4e5f-6789-abcd-ef0123456789"
        fit = forge.sign(forge.fit_claims(site, principal=principal, module_key="status-page", lifetime_s=300))
        tokens = {"app_token": forge.app_token(), "user_token": forge.app_token()}
        headers = forge.headers(site, fit=fit, principal=principal, **tokens)
        jwks = JwksCache(forge.jwks_url)
        verifier = FitVerifier(
            audience=forge.app_ari, jwks=jwks, allowed_api_hosts=("api.atlassian.com",), leeway_s=LEEWAY_S
        )
        invocation = verifier.verify(headers)  # warms the key cache (one JWKS fetch)
        assert (invocation.installation_id, invocation.principal) == (site.installation_id, principal)
        public_key = jwks.key(forge.keys[0].kid).key
        padding, sha256 = PKCS1v15(), SHA256()
        claims = verifier.claims(headers["authorization"])

        def ours() -> None:
            verifier.verify(headers)

        def library() -> None:
            jwt.decode(
                fit,
                public_key,
                algorithms=[ALGORITHM],
                audience=forge.app_ari,
                issuer=FIT_ISSUER,
                leeway=LEEWAY_S,
                options={"require": list(REQUIRED_CLAIMS)},
            )

        def raw() -> None:
            header_b64, payload_b64, signature_b64 = fit.split(".")
            public_key.verify(_b64url(signature_b64), f"{header_b64}.{payload_b64}".encode(), padding, sha256)

        raw()  # raises InvalidSignature if the raw check were wrong
        library()
        # Short blocks, many rounds: the sides of one round see the same load, and medians settle.
        calls, blocks = (100, 61) if quick else (100, 201)
        times = interleaved({"verify": ours, "jwt.decode": library, "raw": raw}, calls, blocks)
        pieces: dict[str, Callable[[], object]] = {
            "jwt.decode(token, key, algorithms/aud/iss/leeway/require)": library,
            "verifier.claims(authorization): header, kid, key, pyjwt, lifetime": lambda: verifier.claims(
                headers["authorization"]
            ),
            "verifier._invocation(claims, headers): app claims, apiBaseUrl, Invocation": lambda: verifier._invocation(
                claims, headers
            ),
        }
        components = breakdown(pieces, fit, calls=calls, blocks=21 if quick else 61)
        return Measured(times, components, len(fit), forge.jwks_fetches)
    finally:
        forge.stop()


def run(quick: bool = False) -> Section:
    section = Section("FIT verification")
    measured = measure(quick)
    times = measured.times
    ours_us, decode_us, raw_us = median(times["verify"]), median(times["jwt.decode"]), median(times["raw"])
    # Paired: each block's verify against the other side's block of the same round (load drifts).
    overhead = median([ratio(a, b) for a, b in zip(times["verify"], times["jwt.decode"], strict=True)])
    over_raw = median([ratio(a, b) for a, b in zip(times["verify"], times["raw"], strict=True)])
    blocks, fetches = len(times["verify"]), measured.jwks_fetches
    section.figures.update(
        {
            "blocks": blocks,
            "token_bytes": measured.token_bytes,
            "verify_us": ours_us,
            "jwt_decode_us": decode_us,
            "raw_rs256_us": raw_us,
            "ratio": overhead,
            "ratio_vs_raw": over_raw,
            "jwks_fetches": fetches,
            "verify_blocks_us": times["verify"],
            "jwt_decode_blocks_us": times["jwt.decode"],
            "raw_blocks_us": times["raw"],
            "components_us": measured.components,
        }
    )
    print(f"  {blocks} rotating blocks, median CPU time per call (a UI call's FIT of {measured.token_bytes:,} bytes)")
    print(f"  FitVerifier.verify(headers), keys cached        {ours_us:8.1f} us")
    print(f"  jwt.decode, same token, key and checks          {decode_us:8.1f} us")
    print(f"  raw RS256 check (cryptography only)             {raw_us:8.1f} us")
    print(f"  ratio verify / jwt.decode (paired by round)     {overhead:8.2f}x   target <= {TARGET_RATIO:.2f}x")
    print(f"  ratio verify / raw RS256 (information)          {over_raw:8.2f}x   (JWKS fetches: {fetches})")
    print("  where a verify's time goes (each piece alone, median per call):")
    for name, us in measured.components.items():
        print(f"    {us:8.1f} us  {name}")
    section.rows.append(
        Row(
            "FIT verify vs jwt.decode, warm keys",
            f"{ours_us:.1f} us",
            f"{decode_us:.1f} us jwt.decode",
            overhead,
            f"<= {TARGET_RATIO:.2f}x",
            overhead <= TARGET_RATIO,
        )
    )
    section.rows.append(
        Row("FIT verify vs raw RS256 (information)", f"{ours_us:.1f} us", f"{raw_us:.1f} us raw", over_raw)
    )
    return section
