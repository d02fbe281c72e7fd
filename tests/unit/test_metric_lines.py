"""Counts with a dimension of their own (``telemetry/counts.py``): one EMF line each, aggregated both by the
dimension and without it, with a label that can never carry token content."""

from __future__ import annotations

import json

import pytest

import forge_remote.telemetry.counts as metric_counts


def test_an_emf_line_counts_one_by_service_and_dimension_and_by_service_alone() -> None:
    line = metric_counts.emf_line(
        "FitRejections", "reason", "bad signature", namespace="NS", service="svc", now_ms=1234
    )
    document = json.loads(line)
    (metrics,) = document["_aws"]["CloudWatchMetrics"]
    assert metrics == {
        "Namespace": "NS",
        "Dimensions": [["service", "reason"], ["service"]],
        "Metrics": [{"Name": "FitRejections", "Unit": "Count"}],
    }
    assert (document["_aws"]["Timestamp"], document["service"], document["reason"], document["FitRejections"]) == (
        1234,
        "svc",
        "bad signature",
        1,
    )
    assert "\n" not in line


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("HTTP 401", "HTTP 401"),
        ("eyJ{x}\n", "eyJ_x_"),
        ("  ", "unknown"),
        ("é" * 3, "_"),
        ("a" * 100, "a" * metric_counts.MAX_LABEL),
    ],
)
def test_a_dimension_value_is_a_short_plain_label(value: str, label: str) -> None:
    assert metric_counts.label(value) == label


def test_count_writes_one_line_and_never_without_a_namespace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ForgeRemoteUnit")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "unit")
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    metric_counts.count("ConfluenceRefusals", "status", "403")
    (line,) = capsys.readouterr().out.splitlines()
    assert (json.loads(line)["status"], json.loads(line)["service"]) == ("403", "unit")
    monkeypatch.setenv("POWERTOOLS_DEV", "true")  # dev mode turns metrics off unless they are enabled outright
    metric_counts.count("ConfluenceRefusals", "status", "403")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metric_counts.count("ConfluenceRefusals", "status", "404")
    assert [json.loads(x)["status"] for x in capsys.readouterr().out.splitlines()] == ["404"]
