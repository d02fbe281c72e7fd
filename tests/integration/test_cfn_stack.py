"""The template, after the SAM transform, creates a stack in moto's CloudFormation: every resource of a type
moto implements is created (tables, queues, topic, roles, layer, functions with their packaged
code, event source mappings, permissions, log groups, the dashboard), and what moto cannot create is
listed with the reason at the end of the run (``tests/integration/conftest.py`` prints it).

moto is not AWS: it does not implement every type (the HTTP API, Scheduler schedules, alarms, SNS
subscriptions and topic policies, a function's EventInvokeConfig), ignores some properties (table TTL and encryption settings), and has
faults of its own (``KNOWN_MOTO_FAULTS``). A failure that is none of these fails the test.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import moto.cloudformation.parsing as cfn_parsing
import pytest
from moto import mock_aws

from local.cfn_yaml import load_template
from local.sam_transform import CODE_BUCKET, code_locations, function_roles, transformed_template
from local.stack import TEMPLATE
from tests.stack_report import STACK_REPORT
from tests.support import ROOT

# moto warns once per resource of a type it does not implement: the report lists them instead.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning")
STACK = "forge-remote"
PARAMETERS = {
    "ForgeAppId": "0b7e2f4c-8a1d-4e6b-9c3f-5d2a7e8b1c4f",
    "AlarmEmail": "ops@example.com",  # so the conditional subscription is part of the stack too
}
# Types moto implements but fails on with this (valid) template, and why.
KNOWN_MOTO_FAULTS: dict[str, str] = {}
# One adaptation, reported (``adapted for moto`` lines), so that what moto does implement is created: a
# ``${X.Arn}`` in a ``!Sub`` where moto does not implement X's type (the dashboard's alarm annotations)
# becomes a placeholder ARN, so the dashboard's body is still resolved and checked.
ADAPTATIONS = {
    "sub-arn": "${X.Arn} of a type moto does not implement replaced by a placeholder ARN in a Sub",
}


def adapted_for_moto(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``template`` with the adaptations above; per adaptation, the resources it touched."""
    resources: dict[str, Any] = template["Resources"]
    supported = set(cfn_parsing.get_model_map())
    unsupported = {lid for lid, r in resources.items() if r["Type"] not in supported}
    touched: dict[str, list[str]] = {key: [] for key in ADAPTATIONS}

    def placeholder(match: re.Match[str], owner: str) -> str:
        if match.group(1) in unsupported:
            touched["sub-arn"].append(owner)
            return f"arn:aws:moto-unsupported:::{match.group(1)}"
        return match.group(0)

    def replace(value: Any, owner: str) -> Any:
        if isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
            return {"Fn::Sub": re.sub(r"\$\{(\w+)\.Arn\}", lambda m: placeholder(m, owner), value["Fn::Sub"])}
        if isinstance(value, dict):
            return {k: replace(v, owner) for k, v in value.items()}
        if isinstance(value, list):
            return [replace(v, owner) for v in value]
        return value

    adapted = {lid: replace(r, lid) for lid, r in resources.items()}
    return {**template, "Resources": adapted}, {key: sorted(set(ids)) for key, ids in touched.items() if ids}


def _zip_folder(folder: str) -> bytes:
    """The folder as ``sam package`` would zip it (sources only)."""
    buffer = io.BytesIO()
    root = ROOT / folder
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
                archive.write(path, path.relative_to(root))
    return buffer.getvalue()


class StackAttempt:
    """One ``CreateStack`` of the transformed template in moto, with moto's per-resource failures kept."""

    def __init__(
        self, template: dict[str, Any], parameters: dict[str, str] | None = None, *, name: str = STACK
    ) -> None:
        self.template = template
        self.parameters = {**PARAMETERS, **(parameters or {})}
        self.name = name
        self.failures: dict[str, str] = {}
        self.created: dict[str, dict[str, Any]] = {}
        self.status = ""
        self.adapted: dict[str, list[str]] = {}

    def run(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = cfn_parsing.parse_and_create_resource
        failures = self.failures

        def create_or_record(logical_id: str, resource_json: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            try:
                return original(logical_id, resource_json, *args, **kwargs)
            except Exception as exc:  # moto's own fault: keep it and carry on, as a report
                failures[logical_id] = f"{type(exc).__name__}: {exc}"
                return None

        monkeypatch.setattr(cfn_parsing, "parse_and_create_resource", create_or_record)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=CODE_BUCKET)
        for logical_id, folder in code_locations(load_template(TEMPLATE)).items():
            s3.put_object(Bucket=CODE_BUCKET, Key=f"{logical_id}.zip", Body=_zip_folder(folder))
        cfn = boto3.client("cloudformation")
        cfn.create_stack(
            StackName=self.name,
            TemplateBody=json.dumps(self.template),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in self.parameters.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        self.status = cfn.describe_stacks(StackName=self.name)["Stacks"][0]["StackStatus"]
        paginator = cfn.get_paginator("list_stack_resources")
        for page in paginator.paginate(StackName=self.name):
            for summary in page["StackResourceSummaries"]:
                if summary.get("LogicalResourceId"):  # moto also lists an entry with no id and no type
                    self.created[summary["LogicalResourceId"]] = summary

    def physical(self, logical_id: str) -> str:
        return str(self.created[logical_id]["PhysicalResourceId"])

    def not_created(self) -> dict[str, tuple[str, str]]:
        """Logical id -> (type, why) for every resource of the template moto did not create."""
        supported = set(cfn_parsing.get_model_map())
        missing: dict[str, tuple[str, str]] = {}
        for logical_id, resource in self.template["Resources"].items():
            if logical_id in self.created:
                continue
            kind = resource["Type"]
            if logical_id in self.failures:
                why = KNOWN_MOTO_FAULTS.get(kind, f"moto failed: {self.failures[logical_id]}")
            elif kind not in supported:
                why = "not implemented by moto's CloudFormation"
            else:
                why = "moto skipped it without an error"
            missing[logical_id] = (kind, why)
        return missing


@pytest.fixture(scope="module")
def attempt() -> Iterator[StackAttempt]:
    monkeypatch = pytest.MonkeyPatch()
    try:
        with mock_aws():
            template, adapted = adapted_for_moto(transformed_template())
            stack = StackAttempt(template)
            stack.adapted = adapted
            stack.run(monkeypatch)
            yield stack
    finally:
        monkeypatch.undo()


def test_the_stack_is_created(attempt: StackAttempt) -> None:
    assert attempt.status == "CREATE_COMPLETE"


def test_every_resource_of_a_type_moto_implements_is_created(attempt: StackAttempt) -> None:
    missing = attempt.not_created()
    STACK_REPORT[:] = [f"moto CloudFormation: {len(attempt.created)} resources created, {len(missing)} not:"]
    STACK_REPORT.extend(f"    {lid} ({kind}): {why}" for lid, (kind, why) in sorted(missing.items()))
    by_type: dict[str, int] = {}
    for summary in attempt.created.values():
        by_type[summary["ResourceType"]] = by_type.get(summary["ResourceType"], 0) + 1
    STACK_REPORT.append("    created: " + ", ".join(f"{kind} x{n}" for kind, n in sorted(by_type.items())))
    for key, ids in attempt.adapted.items():
        STACK_REPORT.append(f"    adapted for moto in {', '.join(ids)}: {ADAPTATIONS[key]}")
    unexplained = {lid: why for lid, (_, why) in missing.items() if why.startswith(("moto failed", "moto skipped"))}
    assert unexplained == {}
    assert {kind for kind, _ in missing.values()} <= {
        *KNOWN_MOTO_FAULTS,
        *(r["Type"] for r in attempt.template["Resources"].values() if r["Type"] not in cfn_parsing.get_model_map()),
    }


def test_the_tables_have_their_keys_and_index(attempt: StackAttempt) -> None:
    dynamodb = boto3.client("dynamodb")
    for logical_id, resource in attempt.template["Resources"].items():
        if resource["Type"] != "AWS::DynamoDB::Table":
            continue
        table = dynamodb.describe_table(TableName=attempt.physical(logical_id))["Table"]
        assert table["KeySchema"] == resource["Properties"]["KeySchema"]
        indexes = {i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])}
        assert indexes == {i["IndexName"] for i in resource["Properties"].get("GlobalSecondaryIndexes", [])}
        ttl = dynamodb.describe_time_to_live(TableName=attempt.physical(logical_id))["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") != "ENABLED" and "TimeToLiveSpecification" in resource["Properties"]:
            STACK_REPORT.append(f"    {logical_id}: created without its TimeToLiveSpecification (moto ignores it)")
        if "SSEDescription" not in table and "SSESpecification" in resource["Properties"]:
            STACK_REPORT.append(f"    {logical_id}: created without its SSESpecification (moto ignores it)")


def test_the_worker_queue_redrives_to_the_dead_letter_queue(attempt: StackAttempt) -> None:
    sqs = boto3.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=attempt.physical("JobsQueue"), AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=attempt.physical("JobsDeadLetterQueue"), AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) >= 1


def test_every_function_is_created_with_the_layer_and_its_role(attempt: StackAttempt) -> None:
    lambda_ = boto3.client("lambda")
    iam = boto3.client("iam")
    roles = function_roles(attempt.template)
    assert roles, "the transformed template has no functions"
    ignored: dict[str, list[str]] = {}
    for function, role in roles.items():
        config = lambda_.get_function_configuration(FunctionName=attempt.physical(function))
        assert config["Runtime"] == "python3.12"
        if config.get("Architectures") != ["arm64"]:
            ignored.setdefault("Architectures (created as x86_64)", []).append(function)
        if not config.get("Layers"):
            ignored.setdefault("Layers", []).append(function)
        assert config["Role"].endswith("/" + attempt.physical(role.role))
        assert config["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] == "ForgeRemote"
        unresolved = [k for k, v in config["Environment"]["Variables"].items() if isinstance(v, dict | list)]
        assert unresolved == []  # every intrinsic was resolved
        names = iam.list_role_policies(RoleName=attempt.physical(role.role))["PolicyNames"]
        assert len(names) == len(attempt.template["Resources"][role.role]["Properties"].get("Policies", []))
    for what, functions in sorted(ignored.items()):
        STACK_REPORT.append(
            f"    functions created without their {what}, moto ignores it: {', '.join(sorted(functions))}"
        )


def inline_statements(attempt: StackAttempt, function: str) -> list[dict[str, Any]]:
    iam = boto3.client("iam")
    role = attempt.physical(function_roles(attempt.template)[function].role)
    statements: list[dict[str, Any]] = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        if isinstance(document, str):  # moto keeps a policy CloudFormation created as Python's repr of it
            document = ast.literal_eval(document)
        found = document["Statement"]
        # moto leaves an AWS::NoValue in a list as None (CloudFormation drops it): dropped here.
        statements.extend(s for s in (found if isinstance(found, list) else [found]) if s is not None)
    return statements


def test_without_peer_tables_the_trigger_role_has_no_grant_outside_this_stack(attempt: StackAttempt) -> None:
    statements = inline_statements(attempt, "ForgeTriggersFunction")
    assert not [s for s in statements if ":dynamodb:eu-" in json.dumps(s)]
    assert all("Effect" in s for s in statements)


def test_the_dashboard_body_is_valid_json_once_resolved(attempt: StackAttempt) -> None:
    body = boto3.client("cloudwatch").get_dashboard(DashboardName=attempt.physical("Dashboard"))["DashboardBody"]
    widgets = json.loads(body)["widgets"]
    assert len(widgets) >= 7
    assert "${" not in body


def test_the_layer_version_is_published(attempt: StackAttempt) -> None:
    layers = boto3.client("lambda").list_layers()["Layers"]
    wanted = [r for r in attempt.template["Resources"].values() if r["Type"] == "AWS::Lambda::LayerVersion"]
    assert len(layers) == len(wanted) == 1
    assert layers[0]["LatestMatchingVersion"]["CompatibleRuntimes"] == ["python3.12"]


def test_every_queue_and_stream_event_has_its_mapping(attempt: StackAttempt) -> None:
    lambda_ = boto3.client("lambda")
    mappings = lambda_.list_event_source_mappings()["EventSourceMappings"]
    wanted = [lid for lid, r in attempt.template["Resources"].items() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert len(mappings) == len(wanted) > 0


def test_the_alarm_topic_is_encrypted_with_the_stacks_own_key(attempt: StackAttempt) -> None:
    attributes = boto3.client("sns").get_topic_attributes(TopicArn=attempt.physical("DeadLetterAlarmTopic"))[
        "Attributes"
    ]
    alias = attributes["KmsMasterKeyId"]
    assert alias == attempt.physical("AlarmTopicKeyAlias") == f"alias/{STACK}/alarm-topic"
    targets = {a["AliasName"]: a.get("TargetKeyId") for a in boto3.client("kms").list_aliases()["Aliases"]}
    assert targets[alias] == attempt.physical("AlarmTopicKey")


def test_failed_asynchronous_work_has_a_queue_of_its_own(attempt: StackAttempt) -> None:
    sqs = boto3.client("sqs")
    url = attempt.physical("FailedInvocationsQueue")
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    assert attributes["SqsManagedSseEnabled"] == "true"
    stream_mappings = [
        m
        for m in boto3.client("lambda").list_event_source_mappings()["EventSourceMappings"]
        if ":dynamodb:" in m["EventSourceArn"]
    ]
    assert stream_mappings
    assert {m["DestinationConfig"]["OnFailure"]["Destination"] for m in stream_mappings} == {attributes["QueueArn"]}


# -- the transformed template: what CloudFormation is asked to create ------------------------------------
TRANSFORMED = transformed_template()
SOURCE = load_template(TEMPLATE)


def _of_type(kind: str) -> dict[str, dict[str, Any]]:
    return {lid: r["Properties"] for lid, r in TRANSFORMED["Resources"].items() if r["Type"] == kind}


def test_every_schedule_is_named_by_cloudformation() -> None:
    """A fixed schedule name (SAM's default: <function id><event id>) exists once per account and region: a
    second stack could not create it. With OmitName, CloudFormation generates a unique one."""
    events = [
        (f"{lid}.{name}", e)
        for lid, r in SOURCE["Resources"].items()
        if r["Type"] == "AWS::Serverless::Function"
        for name, e in r["Properties"].get("Events", {}).items()
    ]
    schedules = [(name, e["Properties"]) for name, e in events if e["Type"] == "ScheduleV2"]
    assert len(schedules) == 4
    assert [name for name, props in schedules if props.get("OmitName") is not True or "Name" in props] == []
    assert [lid for lid, props in _of_type("AWS::Scheduler::Schedule").items() if "Name" in props] == []


# The property that sets each type's physical name (CloudFormation generates one when it is absent).
PHYSICAL_NAMES = {
    "AWS::ApiGatewayV2::Api": "Name",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::CloudWatch::Dashboard": "DashboardName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::IAM::Role": "RoleName",
    "AWS::KMS::Alias": "AliasName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Lambda::LayerVersion": "LayerName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::Scheduler::Schedule": "Name",
    "AWS::SNS::Topic": "TopicName",
    "AWS::SQS::Queue": "QueueName",
}


def test_no_resource_has_a_name_fixed_across_stacks() -> None:
    """Every physical name the template sets depends on the stack: its name, or a name CloudFormation
    generated for another resource (a log group named after its function)."""
    fixed = []
    for lid, resource in TRANSFORMED["Resources"].items():
        key = PHYSICAL_NAMES.get(resource["Type"])
        value = resource.get("Properties", {}).get(key) if key else None
        if value is None:
            continue
        subbed = value.get("Fn::Sub", "") if isinstance(value, dict) else ""
        names = re.findall(r"\$\{([\w:]+)[^}]*\}", subbed)
        if not any(n == "AWS::StackName" or n in TRANSFORMED["Resources"] for n in names):
            fixed.append(f"{lid}.{key}: {value}")
    assert fixed == []


def test_every_asynchronous_invocation_path_has_a_failure_destination() -> None:
    """Scheduler -> Lambda is asynchronous: a delivery Scheduler cannot make goes to the schedule's DLQ, a
    run that fails after Lambda's retries to the function's on-failure destination. A stream batch given
    up on goes to its mapping's on-failure destination; a queue's messages to its redrive target."""
    resources = TRANSFORMED["Resources"]
    schedules = _of_type("AWS::Scheduler::Schedule")
    assert schedules
    failed_queue = {"Fn::GetAtt": ["FailedInvocationsQueue", "Arn"]}
    assert {lid: s["Target"].get("DeadLetterConfig") for lid, s in schedules.items()} == {
        lid: {"Arn": failed_queue} for lid in schedules
    }
    invoke_configs = {c["FunctionName"]["Ref"]: c for c in _of_type("AWS::Lambda::EventInvokeConfig").values()}
    targets = {s["Target"]["Arn"]["Fn::GetAtt"][0] for s in schedules.values()}
    for function in targets:
        config = invoke_configs[function]
        assert config["DestinationConfig"]["OnFailure"]["Destination"] == failed_queue
        assert config["Qualifier"] == "$LATEST"
        assert 0 <= config["MaximumRetryAttempts"] <= 2
        assert 60 <= config["MaximumEventAgeInSeconds"] <= 21600
    for lid, mapping in _of_type("AWS::Lambda::EventSourceMapping").items():
        source = mapping["EventSourceArn"]["Fn::GetAtt"]
        if source[1] == "StreamArn":
            assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == failed_queue, lid
        else:  # an SQS queue: its redrive policy is its failure path
            assert "RedrivePolicy" in resources[source[0]]["Properties"], lid
    queue = resources["FailedInvocationsQueue"]["Properties"]
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert queue["SqsManagedSseEnabled"] is True


def test_each_role_that_sends_failures_holds_exactly_send_message_on_the_queue() -> None:
    """SAM adds the grant for each failure destination (the function's role for EventInvokeConfig and the
    stream mapping, each schedule's own role for its DLQ): exactly sqs:SendMessage, on that queue only."""
    failed_queue = {"Fn::GetAtt": ["FailedInvocationsQueue", "Arn"]}
    senders: dict[str, list[Any]] = {}
    for lid, role in _of_type("AWS::IAM::Role").items():
        for policy in role.get("Policies", []):
            statements = policy["PolicyDocument"]["Statement"]
            for written in statements if isinstance(statements, list) else [statements]:
                # A conditional statement (the peer tables' grant): each branch that is a statement.
                branches = written["Fn::If"][1:] if "Fn::If" in written else [written]
                statement = next((b for b in branches if "Resource" in b), None)
                if statement is None:
                    continue
                resources = (
                    statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                )
                if failed_queue in resources:
                    assert resources == [failed_queue], lid
                    senders.setdefault(lid, []).append(statement["Action"])
    schedule_roles = {s["Target"]["RoleArn"]["Fn::GetAtt"][0] for s in _of_type("AWS::Scheduler::Schedule").values()}
    assert set(senders) == {"JobSchedulerFunctionRole", "TokenWakeupFunctionRole", *schedule_roles}
    assert all(actions == ["sqs:SendMessage"] for actions in senders.values())
