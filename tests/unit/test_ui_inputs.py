"""What a UI route accepts (``inbound/ui_calls.py``): each input field's parsing, and a route's declared
query and body read from an API Gateway event, refusing whatever it did not declare."""

from __future__ import annotations

import json

import pytest

from forge_remote.errors import MalformedEvent
from forge_remote.inbound.ui_calls import MAX_QUERY_PARAMS, Accepts, JsonObject, OneOf, WholeNumber, query_pairs

DAYS = WholeNumber("days", default=7, low=1, high=90)
MODE = OneOf("mode", frozenset({"app", "user"}))
OPTIONS = JsonObject("options")


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("90", 90), ("007", 7)])
def test_a_whole_number_in_range_is_read(raw: str, value: int) -> None:
    assert DAYS.parse(raw) == value


@pytest.mark.parametrize("raw", ["0", "91", "", "+7", "-7", "7.0", "0x7", " 7", "\uff11", "\u00b2", "1" * 10, 7, None])
def test_anything_else_is_refused_naming_the_field_and_its_range(raw: object) -> None:
    with pytest.raises(MalformedEvent) as refused:
        DAYS.parse(raw)
    assert refused.value.reason == "days must be a whole number from 1 to 90"


def test_an_absent_whole_number_is_its_default() -> None:
    assert DAYS.missing() == 7


@pytest.mark.parametrize(("low", "default", "high"), [(5, 1, 10), (1, 11, 10), (-1, 0, 10), (0, 0, 10**9)])
def test_a_whole_number_field_must_be_declared_sensibly(low: int, default: int, high: int) -> None:
    with pytest.raises(ValueError, match="low <= default <= high"):
        WholeNumber("n", default=default, low=low, high=high)


def test_one_of_takes_only_its_choices_and_is_required() -> None:
    assert MODE.parse("user") == "user"
    for value in ("admin", ["user"], None, 1):
        with pytest.raises(MalformedEvent, match="mode must be one of: app, user"):
            MODE.parse(value)
    with pytest.raises(MalformedEvent, match="mode is required"):
        MODE.missing()


def test_a_json_object_field_takes_objects_only_and_defaults_to_empty() -> None:
    assert OPTIONS.parse({"a": [1]}) == {"a": [1]}
    assert OPTIONS.missing() == {}
    with pytest.raises(MalformedEvent, match="options must be a JSON object"):
        OPTIONS.parse([])


def test_a_route_reads_what_it_declared() -> None:
    accepts = Accepts(query=(DAYS,), body=(MODE, OPTIONS))
    inputs = accepts.read({"rawQueryString": "days=30", "body": json.dumps({"mode": "app"})})
    assert (inputs[DAYS], inputs[MODE], inputs[OPTIONS]) == (30, "app", {})
    assert accepts.read({"body": '{"mode": "user"}'})[DAYS] == 7
    with pytest.raises(KeyError, match="not declared"):
        inputs[WholeNumber("limit", default=1, low=1, high=2)]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"rawQueryString": "days=1&days=2"}, "given more than once"),
        ({"rawQueryString": "limit=1"}, "unknown query parameter 'limit'"),
        ({"rawQueryString": "eyJhbGciOiJSUzI1NiJ9.x.y=1"}, "(a name not shown)"),
        ({"body": '{"mode": "app", "extra": 1}'}, "unknown body field 'extra'"),
        ({"body": '{"mode": "app", "mode": "user"}'}, "a key more than once"),
    ],
)
def test_a_route_refuses_what_it_did_not_declare(event: dict[str, str], reason: str) -> None:
    with pytest.raises(MalformedEvent) as refused:
        Accepts(query=(DAYS,), body=(MODE,)).read(event)
    assert reason in refused.value.reason
    assert "eyJhbGciOiJSUzI1NiJ9" not in refused.value.reason  # a name nobody declared is never echoed whole


def test_a_route_that_declares_no_body_takes_none() -> None:
    with pytest.raises(MalformedEvent, match="takes no request body"):
        Accepts().read({"body": "{}"})
    assert Accepts().read({"body": "  "}) is not None


def test_a_field_declared_twice_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        Accepts(query=(DAYS, DAYS))


def test_query_pairs_keep_repeats_and_bound_their_number() -> None:
    assert query_pairs({"rawQueryString": "a=1&a=2&b="}) == [("a", "1"), ("a", "2"), ("b", "")]
    assert query_pairs({"queryStringParameters": {"a": "1"}}) == [("a", "1")]
    assert query_pairs({}) == []
    many = "&".join(f"p{i}=1" for i in range(MAX_QUERY_PARAMS + 1))
    with pytest.raises(MalformedEvent, match="more than"):
        query_pairs({"rawQueryString": many})
    with pytest.raises(MalformedEvent, match="UTF-8"):
        query_pairs({"rawQueryString": "a=%ff"})
