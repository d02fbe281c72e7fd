"""What the dashboard and alarms read is really published, by the code paths that should publish it:
FIT rejections by reason (never a token), Confluence refusals by status, the scheduler's token census;
and the dashboard, the alarms and the README's "What to look at first" agree on names.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from forge_remote.telemetry import counts
from local.cfn_yaml import load_template
from local.forge_emulator import ForgeEmulator, Site
from local.lambda_context import LocalLambdaContext
from local.stack import TEMPLATE
from tests.support import ROOT, Gateway, LocalWorld

README = (ROOT / "README.md").read_text(encoding="utf-8")
RESOURCES: dict[str, Any] = load_template(TEMPLATE)["Resources"]


def emf_documents(text: str) -> list[dict[str, Any]]:
    """Every embedded-metric-format document printed (Powertools' and the layer's counts)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            found.append(json.loads(line))
    return found


def datapoints(text: str, name: str) -> list[dict[str, Any]]:
    return [d for d in emf_documents(text) if name in d]


def dashboard_body() -> dict[str, Any]:
    """The dashboard's body with every ``${...}`` of its ``!Sub`` replaced by a placeholder (a number
    where it stands for one: an annotation's ``"value": ${RateLimitQuota}``)."""
    body = RESOURCES["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    numbers = re.sub(r'("value":\s*)\$\{[^}]+\}', r"\g<1>0", body)
    parsed: dict[str, Any] = json.loads(re.sub(r"\$\{[^}]+\}", "placeholder", numbers))
    return parsed


# -- published by the code --------------------------------------------------------------------------------
def test_a_refused_fit_is_counted_by_reason_and_names_no_token(
    gateway: Gateway, forge: ForgeEmulator, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    token = forge.app_token()
    headers = forge.headers(site, app_token=token, fit=forge.sign({"iss": "nobody"}))
    assert gateway("POST", "/forge/keepalive", headers)["statusCode"] == 401
    assert gateway("POST", "/forge/keepalive", {"content-type": "application/json"})["statusCode"] == 401
    out = capsys.readouterr().out
    rejections = datapoints(out, "FitRejections")
    assert [d["reason"] for d in rejections] == ["missing claim exp", "missing Authorization header"]
    assert all(d["service"] == "forge-triggers" for d in rejections)
    assert rejections[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "reason"], ["service"]]
    assert token not in out
    assert headers["authorization"].split()[1] not in out


def test_a_verified_call_of_the_wrong_kind_is_counted_too(
    gateway: Gateway, forge: ForgeEmulator, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    user_call = forge.headers(site, principal="557058:someone", app_token=forge.app_token())
    assert gateway("POST", "/forge/keepalive", user_call)["statusCode"] == 403
    assert [d["reason"] for d in datapoints(capsys.readouterr().out, "FitRejections")] == [
        "wrong call kind for this route"
    ]


def test_confluence_refusals_are_counted_by_status(local_world: LocalWorld, capsys: pytest.CaptureFixture[str]) -> None:
    local_world.install()
    (request,) = local_world.pages(1)
    local_world.confluence.fail_next(1, status=429, retry_after="0")
    local_world.enqueue(request)
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []  # retried in the invocation, done
    refusals = datapoints(capsys.readouterr().out, "ConfluenceRefusals")
    assert [(d["status"], d["service"]) for d in refusals] == [("429", "confluence-worker")]


def test_the_token_census_counts_installations_holding_a_usable_token(
    local_world: LocalWorld, forge: ForgeEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    local_world.install()  # three hours left: usable
    mine = local_world.site
    short = Site(forge.site().installation_id, mine.cloud_id, mine.api_base_url, mine.site_url)
    local_world.install(short, lifetime_s=120)  # under TOKEN_MIN_VALIDITY_S: not usable by a job
    scheduler: Any = local_world.load("JobSchedulerFunction")
    capsys.readouterr()
    census = scheduler.lambda_handler({"task": "token-census"}, LocalLambdaContext("scheduler", timeout_s=300))
    assert census == {"task": "token-census", "activeInstallations": 2, "installationsWithUsableToken": 1}
    (document,) = datapoints(capsys.readouterr().out, "InstallationsWithUsableToken")
    assert (document["ActiveInstallations"], document["InstallationsWithUsableToken"]) == ([2.0], [1.0])
    assert document["service"] == "job-scheduler"


def test_a_count_is_never_published_with_metrics_disabled(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    counts.count("FitRejections", "reason", "token expired")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE")
    counts.count("FitRejections", "reason", "token expired")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [("token expired", "token expired"), ("a\nb{c}", "a_b_c_"), ("", "unknown"), ("x" * 100, "x" * counts.MAX_LABEL)],
)
def test_dimension_values_are_short_plain_labels(value: str, expected: str) -> None:
    assert counts.label(value) == expected


# -- the dashboard, the alarms and the README agree ---------------------------------------------------
def published_metric_names() -> set[str]:
    """Every metric name the code publishes (Powertools ``add_metric`` and the layer's ``counts.count``)."""
    sources = [*(ROOT / "functions").rglob("*.py"), *(ROOT / "layers" / "forge_remote").rglob("*.py")]
    text = "\n".join(path.read_text(encoding="utf-8") for path in sources)
    # add_metric directly, or through the handlers' one-line helpers (_count for events, _gauge for levels)
    recorded = re.findall(r'(?:add_metric\(\s*name=|\._count\(|\._gauge\()\s*"(\w+)"', text)
    return set(recorded) | set(re.findall(r'counts\.count\(\s*"(\w+)"', text))


def test_every_forge_remote_metric_the_dashboard_and_alarms_read_is_published() -> None:
    body = json.dumps(dashboard_body())
    read = set(re.findall(r'\["ForgeRemote", "(\w+)"', body)) | set(re.findall(r'MetricName=\\\\?"(\w+)', body))
    for resource in RESOURCES.values():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            for query in resource["Properties"].get("Metrics", []):
                metric = query.get("MetricStat", {}).get("Metric", {})
                if metric.get("Namespace") == "ForgeRemote":
                    read.add(metric["MetricName"])
    assert {"FitRejections", "ConfluenceRefusals", "InstallationsWithUsableToken", "TokensStored"} <= read
    assert read - published_metric_names() == set()


def test_the_readme_names_every_widget_and_alarm() -> None:
    section = README.split("## What to look at first when something goes wrong", 1)[1].split("\n## ", 1)[0]
    titles = [w["properties"]["title"] for w in dashboard_body()["widgets"]]
    assert len(titles) >= 7
    assert [t for t in titles if f"**{t}**" not in section] == []
    alarms = [lid for lid, r in RESOURCES.items() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert [a for a in alarms if a not in section] == []


def test_alarms_notify_the_alarm_topic() -> None:
    alarms = {lid: r["Properties"] for lid, r in RESOURCES.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert {
        "DeadLetterAlarm",
        "TokenHealthAlarm",
        "FitRejectionAlarm",
        "FailedInvocationsAlarm",
        "FunctionThrottlesAlarm",
        "JobsQueueAgeAlarm",
    } <= set(alarms)
    assert all(props["AlarmActions"] == [{"Ref": "DeadLetterAlarmTopic"}] for props in alarms.values())


def test_every_alarm_is_on_the_dashboard() -> None:
    body = RESOURCES["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    alarms = [lid for lid, r in RESOURCES.items() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert [a for a in alarms if "${" + a + ".Arn}" not in body] == []
    (status,) = [w for w in dashboard_body()["widgets"] if w["type"] == "alarm"]
    assert len(status["properties"]["alarms"]) == len(alarms)  # the alarm list shows every one


# -- alarm notifications can be delivered, and every failure path has an alarm -----------------------
def test_the_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use() -> None:
    """CloudWatch publishes alarm notifications as itself: the topic's key must grant it
    kms:GenerateDataKey* and kms:Decrypt, which the AWS-managed alias/aws/sns key cannot."""
    topic = RESOURCES["DeadLetterAlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmTopicKeyAlias"}
    alias = RESOURCES["AlarmTopicKeyAlias"]["Properties"]
    assert alias["TargetKeyId"] == {"Ref": "AlarmTopicKey"}
    assert not str(alias["AliasName"]).startswith("alias/aws/")
    assert "${AWS::StackName}" in alias["AliasName"]["Fn::Sub"]  # unique per stack, as every name here
    key = RESOURCES["AlarmTopicKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    statements = key["KeyPolicy"]["Statement"]
    (cloudwatch,) = [s for s in statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert cloudwatch["Effect"] == "Allow"
    assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert cloudwatch["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    (admin,) = [s for s in statements if "AWS" in s["Principal"]]  # the account administers it, nobody else
    assert admin["Principal"]["AWS"] == {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
    assert len(statements) == 2


def test_only_this_accounts_cloudwatch_alarms_may_publish_to_the_topic() -> None:
    policy = RESOURCES["DeadLetterAlarmTopicPolicy"]["Properties"]
    assert policy["Topics"] == [{"Ref": "DeadLetterAlarmTopic"}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "sns:Publish")
    assert statement["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"].endswith(":alarm:*")


def _alarm_metrics(props: dict[str, Any]) -> list[dict[str, Any]]:
    """Every metric an alarm reads: its own, or each of its metric-math queries'."""
    if "MetricName" in props:
        return [{"Namespace": props["Namespace"], "MetricName": props["MetricName"], "Dimensions": props["Dimensions"]}]
    return [q["MetricStat"]["Metric"] for q in props["Metrics"] if "MetricStat" in q]


def _alarms_reading(namespace: str, metric: str) -> dict[str, list[dict[str, Any]]]:
    """Alarm logical id -> the dimensions of every ``namespace``/``metric`` it reads."""
    found: dict[str, list[dict[str, Any]]] = {}
    for lid, resource in RESOURCES.items():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            for m in _alarm_metrics(resource["Properties"]):
                if (m["Namespace"], m["MetricName"]) == (namespace, metric):
                    found.setdefault(lid, []).extend(m["Dimensions"])
    return found


FUNCTIONS = sorted(lid for lid, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function")


def test_every_function_has_its_own_errors_alarm() -> None:
    errors = _alarms_reading("AWS/Lambda", "Errors")
    watched = {d["Value"]["Ref"] for dims in errors.values() for d in dims if d["Name"] == "FunctionName"}
    assert watched == set(FUNCTIONS)
    assert all(len(dims) == 1 for dims in errors.values())  # one function each: the alarm names it
    for lid in errors:
        props = RESOURCES[lid]["Properties"]
        assert (props["Statistic"], props["Threshold"], props["ComparisonOperator"]) == (
            "Sum",
            0,
            "GreaterThanThreshold",
        )


def test_throttles_of_every_function_are_watched() -> None:
    throttles = _alarms_reading("AWS/Lambda", "Throttles")
    assert list(throttles) == ["FunctionThrottlesAlarm"]
    assert sorted(d["Value"]["Ref"] for d in throttles["FunctionThrottlesAlarm"]) == FUNCTIONS
    (expression,) = [q for q in RESOURCES["FunctionThrottlesAlarm"]["Properties"]["Metrics"] if q.get("ReturnData")]
    ids = [q["Id"] for q in RESOURCES["FunctionThrottlesAlarm"]["Properties"]["Metrics"] if "MetricStat" in q]
    assert all(f"FILL({i}, 0)" in expression["Expression"] for i in ids)  # a function with no data is 0


def test_the_failed_invocations_queue_alarms_on_its_first_message() -> None:
    props = RESOURCES["FailedInvocationsAlarm"]["Properties"]
    assert (props["Namespace"], props["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert props["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailedInvocationsQueue", "QueueName"]}}
    ]
    assert (props["Threshold"], props["ComparisonOperator"]) == (0, "GreaterThanThreshold")


def test_the_jobs_queue_age_alarm_stays_above_what_waits_legitimately() -> None:
    """SQS leaves out of ApproximateAgeOfOldestMessage a message received three times; what stays counted
    legitimately is a digest at its slot then waiting once for the budget, or a job waiting twice for it."""
    props = RESOURCES["JobsQueueAgeAlarm"]["Properties"]
    assert (props["Namespace"], props["MetricName"], props["Statistic"]) == (
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        "Maximum",
    )
    assert props["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["JobsQueue", "QueueName"]}}]
    assert props["Threshold"] == {"Ref": "JobsQueueAgeAlarmSeconds"}
    parameters = load_template(TEMPLATE)["Parameters"]
    threshold = parameters["JobsQueueAgeAlarmSeconds"]["Default"]
    budget_wait_s = 60 * 60 + 15 * 60 + 60  # to the top of the next hour, then a slot of the first 15 minutes
    spread_s = 60 * parameters["DigestSpreadMinutes"]["Default"]
    assert threshold > spread_s + budget_wait_s
    assert threshold > 15 * 60 + 2 * budget_wait_s  # sent with the longest SQS delay, then two budget waits
    assert threshold < RESOURCES["JobsQueue"]["Properties"]["MessageRetentionPeriod"]  # before messages expire


def test_no_function_is_traced_without_a_tracer() -> None:
    """X-Ray was dropped (cold start); a ``Tracing`` setting would need the Tracer in the code again."""
    template = load_template(TEMPLATE)
    functions = [r["Properties"] for r in RESOURCES.values() if r["Type"] == "AWS::Serverless::Function"]
    assert "Tracing" not in template["Globals"]["Function"]
    assert all("Tracing" not in props for props in functions)
