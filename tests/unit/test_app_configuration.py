"""The app's configuration the library reads: trigger module keys, the event -> job mapping, job results
bound to their installation, and the one job registry ``@job`` adds to."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forge_remote.errors import ConfigurationError
from forge_remote.forge.call_kinds import TRIGGER_ROUTES, TriggerModules
from forge_remote.forge.payloads import ForgeEvent
from forge_remote.jobs.contract import JobRegistry, JobResults
from forge_remote.jobs.intake import EventIntake

MODULES = {path: [f"{path.rsplit('/', 1)[1]}-endpoint", f"{path.rsplit('/', 1)[1]}-trigger"] for path in TRIGGER_ROUTES}


def page_event(event_type: str = "avi:confluence:updated:page", **content: Any) -> ForgeEvent:
    body = {"content": {"id": "65537", "space": {"key": "ENG"}, "version": {"number": 3}, **content}}
    return ForgeEvent(event_type=event_type, body=body, retry_count=0)


def intake(events: dict[str, Any]) -> EventIntake:
    return EventIntake(app_table="app", jobs_queue_url="https://sqs.example/jobs", events=events)


def test_trigger_modules_are_read_from_the_setting() -> None:
    modules = TriggerModules.from_json(json.dumps(MODULES))
    assert modules.routes["/forge/keepalive"] == frozenset({"keepalive-endpoint", "keepalive-trigger"})
    assert "uninstall-trigger" in modules.keys


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "is required"),
        ("", "is required"),
        ("{not json", "not valid JSON"),
        (json.dumps({k: v for k, v in MODULES.items() if k != "/forge/events"}), "exactly the routes"),
        (json.dumps({**MODULES, "/api/x": ["ui"]}), "exactly the routes"),
        (json.dumps({**MODULES, "/forge/events": []}), "list of module keys"),
        (json.dumps({**MODULES, "/forge/events": "events-endpoint"}), "list of module keys"),
    ],
)
def test_a_missing_or_malformed_setting_fails_the_cold_start_clearly(text: str | None, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        TriggerModules.from_json(text)


def test_a_mapped_page_event_requests_its_job_with_the_page_as_arguments() -> None:
    wanted = intake({"avi:confluence:updated:page": "page-snapshot"}).job_for(page_event())
    assert wanted == ("page-snapshot", {"pageId": "65537", "spaceKey": "ENG", "version": 3})


def test_an_unmapped_event_and_a_page_event_without_a_page_request_nothing() -> None:
    mapped = intake({"avi:confluence:updated:page": "page-snapshot"})
    assert mapped.job_for(page_event("avi:confluence:created:page")) is None
    assert mapped.job_for(page_event(id="not-a-number")) is None


def test_a_mapped_event_that_is_not_about_a_page_takes_no_arguments() -> None:
    event = ForgeEvent(event_type="avi:confluence:created:space", body={"space": {"key": "ENG"}}, retry_count=0)
    assert intake({event.event_type: "space-audit"}).job_for(event) == ("space-audit", {})


def test_a_mapping_function_chooses_the_job_and_its_arguments() -> None:
    def by_space(event: ForgeEvent) -> tuple[str, dict[str, Any]] | None:
        space = event.body["content"]["space"]["key"]
        return None if space == "SEC" else ("space-digest", {"spaceKeys": [space]})

    mapped = intake({"avi:confluence:updated:page": by_space})
    assert mapped.job_for(page_event()) == ("space-digest", {"spaceKeys": ["ENG"]})
    assert mapped.job_for(page_event(space={"key": "SEC"})) is None


class RecordingStore:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def put(
        self, installation_id: str, kind: str, key: str, record: dict[str, Any], *, ttl_s: int | None = None
    ) -> Any:
        self.calls.append(("put", installation_id, kind, key, record, ttl_s))

    def get(self, installation_id: str, kind: str, key: str) -> Any:
        self.calls.append(("get", installation_id, kind, key))

    def list(self, installation_id: str, kind: str) -> Any:
        self.calls.append(("list", installation_id, kind))
        return []


def test_a_job_s_results_are_its_own_installation_s() -> None:
    store = RecordingStore()
    results = JobResults(store, "ari:cloud:ecosystem::installation/own")  # type: ignore[arg-type]
    results.put("DIGEST", "day", {"n": 1}, ttl_s=60)
    results.get("DIGEST", "day")
    results.list("DIGEST")
    assert {call[1] for call in store.calls} == {"ari:cloud:ecosystem::installation/own"}
    assert store.calls[0] == ("put", "ari:cloud:ecosystem::installation/own", "DIGEST", "day", {"n": 1}, 60)


def test_a_job_name_is_registered_once() -> None:
    registry = JobRegistry()
    registry.job("audit", dict)(lambda ctx, args: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.job("audit", dict)(lambda ctx, args: None)
    assert registry.names() == ["audit"]
