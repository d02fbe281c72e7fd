"""Counts that carry a dimension of their own (FIT rejections and signing key outages by reason, Confluence
refusals by status), published at once as one CloudWatch embedded-metric-format (EMF) line on stdout, where
Lambda's log capture hands it to CloudWatch, as Powertools' metrics do.

Why not the function's Powertools ``Metrics``: every metric in its set shares the set's dimensions, so
a ``reason`` there would split ``TokensStored`` and the rest by reason too. And why not Powertools'
``single_metric``: it takes one dimension set, and an alarm cannot sum over a dimension (it cannot use
SEARCH), so each line here is aggregated twice, by ``service`` and ``<dimension>`` for the dashboard and
by ``service`` alone for the alarms. Nothing is imported beyond the standard library, and nothing is
raised: publishing a metric must not change an answer. The settings are Powertools' own
(``POWERTOOLS_METRICS_NAMESPACE``, ``POWERTOOLS_SERVICE_NAME``, ``POWERTOOLS_METRICS_DISABLED``).

A dimension value is a short label chosen by this code (never token content); it is cut to a safe
alphabet and length anyway.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

logger = logging.getLogger(__name__)

MAX_LABEL = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9 ._:/-]+")
_TRUE = ("1", "true", "yes", "on")


def label(value: str) -> str:
    """``value`` as a dimension value: safe characters only, at most ``MAX_LABEL`` long, never empty."""
    return _UNSAFE.sub("_", value).strip()[:MAX_LABEL].strip() or "unknown"


def _disabled() -> bool:
    """Powertools' rule: ``POWERTOOLS_METRICS_DISABLED`` if set, else off in ``POWERTOOLS_DEV`` mode."""
    explicit = os.environ.get("POWERTOOLS_METRICS_DISABLED")
    if explicit is not None:
        return explicit.strip().lower() in _TRUE
    return os.environ.get("POWERTOOLS_DEV", "").strip().lower() in _TRUE


def emf_line(
    name: str, dimension: str, value: str, *, namespace: str, service: str, now_ms: int, amount: int = 1
) -> str:
    """One EMF document: ``name`` = ``amount``, by (service, dimension) and by service alone."""
    document = {
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [["service", dimension], ["service"]],
                    "Metrics": [{"Name": name, "Unit": "Count"}],
                }
            ],
        },
        "service": service,
        dimension: label(value),
        name: amount,
    }
    return json.dumps(document, separators=(",", ":"))


def count(name: str, dimension: str, value: str, amount: int = 1) -> None:
    """Publish ``name`` = ``amount`` (1 unless said) for this function's service, with ``dimension`` = ``value``."""
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE")
    if not namespace or _disabled():
        return
    try:
        service = os.environ.get("POWERTOOLS_SERVICE_NAME") or "service_undefined"
        now_ms = int(time.time() * 1000)
        line = emf_line(name, dimension, value, namespace=namespace, service=service, now_ms=now_ms, amount=amount)
        sys.stdout.write(line + "\n")
    except Exception as exc:  # a metric is never worth a failed request
        logger.warning("metric %s not published: %s", name, type(exc).__name__)
