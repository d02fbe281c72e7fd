"""Benchmarks: figures and ratios measured side by side in one run (``make bench`` / ``python -m bench``).

Each part lives in its own module and returns ``Section`` results (figures for ``--json`` and rows for
the final table): ``cold_start`` (handler import-and-init vs a bare boto3 + jwt process),
``fit_verify`` (``FitVerifier.verify`` vs ``jwt.decode`` with the same checks; a raw RS256 check as
information), ``warm_requests`` (keepalive traffic through the real forge_triggers handler vs the
naive anchor), ``anchor`` (a simulated day: expired tokens sent by background jobs), ``scale``
(scheduling 10,000 installations; worker throughput).

Timings are never asserted in tests: the machine is shared and noisy, so every comparison here is
made inside one run, on medians, with the two sides interleaved.
"""
