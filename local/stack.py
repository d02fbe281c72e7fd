"""Create the template's DynamoDB tables and SQS queues from ``template.yaml`` itself (one source of
truth), against whatever endpoint boto3 is pointed at (moto), and resolve each function's environment
the way CloudFormation would.

Only the intrinsics the template uses are resolved: ``Ref``, ``Fn::GetAtt`` (``Arn``,
``QueueName``, ``StreamArn``) and ``Fn::Sub`` with ``${AWS::StackName}`` / ``${AWS::Region}`` / parameters /
resource names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.cfn_yaml import load_template

TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"
_SUB_VAR = re.compile(r"\$\{([^}]+)\}")


@dataclass
class LocalStack:
    """The template's data plane, created for one run. ``environment(fn)`` is what Lambda would set."""

    template: dict[str, Any]
    stack_name: str = "forge-remote-local"
    region: str = "us-east-1"
    account: str = "123456789012"
    parameters: dict[str, str] = field(default_factory=dict)
    physical: dict[str, str] = field(default_factory=dict)  # logical id -> name / url
    arns: dict[str, str] = field(default_factory=dict)
    stream_arns: dict[str, str] = field(default_factory=dict)  # table logical id -> its stream's ARN

    @classmethod
    def from_template(cls, path: Path = TEMPLATE, **kwargs: Any) -> LocalStack:
        return cls(template=load_template(path), **kwargs)

    @property
    def resources(self) -> dict[str, Any]:
        resources: dict[str, Any] = self.template.get("Resources", {})
        return resources

    def _of_type(self, cfn_type: str) -> list[tuple[str, dict[str, Any]]]:
        return [(lid, r.get("Properties", {})) for lid, r in self.resources.items() if r.get("Type") == cfn_type]

    # -- intrinsics
    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::GetAtt":
                logical, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
                return self._get_att(logical, attribute)
            if key == "Fn::Sub":
                template = arg if isinstance(arg, str) else arg[0]
                return _SUB_VAR.sub(lambda m: str(self._sub_var(m.group(1))), template)
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    def _sub_var(self, name: str) -> str:
        if "." in name:
            logical, attribute = name.split(".", 1)
            return self._get_att(logical, attribute)
        return str(self._ref(name))

    def _ref(self, name: str) -> str:
        pseudo = {"AWS::StackName": self.stack_name, "AWS::Region": self.region, "AWS::AccountId": self.account}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        parameter = self.template.get("Parameters", {}).get(name)
        if parameter is not None:
            return str(parameter.get("Default", ""))
        if name in self.physical:
            return self.physical[name]
        raise KeyError(f"cannot resolve Ref {name} locally")

    def _get_att(self, logical: str, attribute: str) -> str:
        if attribute == "Arn" and logical in self.arns:
            return self.arns[logical]
        if attribute == "StreamArn" and logical in self.stream_arns:
            return self.stream_arns[logical]
        if attribute == "QueueName" and logical in self.physical:
            return self.physical[logical].rsplit("/", 1)[-1]
        raise KeyError(f"cannot resolve GetAtt {logical}.{attribute} locally")

    # -- provisioning
    def create(self, *, dynamodb: Any, sqs: Any | None = None) -> LocalStack:
        self._create_tables(dynamodb)
        if sqs is not None:
            self._create_queues(sqs)
        return self

    def remove_leftovers(self, *, dynamodb: Any, sqs: Any | None = None) -> list[str]:
        """Delete this stack's tables and queues if they exist already (a stack joining a moto server
        that an earlier run of it used): what ``create`` would otherwise refuse. Returns their names."""
        names = {f"{self.stack_name}-{logical}" for logical, _ in self._of_type("AWS::DynamoDB::Table")}
        removed = []
        for name in sorted(names & set(dynamodb.list_tables().get("TableNames", []))):
            dynamodb.delete_table(TableName=name)
            removed.append(name)
        if sqs is not None:
            for logical, _ in self._of_type("AWS::SQS::Queue"):
                name = f"{self.stack_name}-{logical}"
                try:
                    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
                except sqs.exceptions.QueueDoesNotExist:
                    continue
                sqs.delete_queue(QueueUrl=url)
                removed.append(name)
        return removed

    def _create_tables(self, dynamodb: Any) -> None:
        for logical, props in self._of_type("AWS::DynamoDB::Table"):
            name = f"{self.stack_name}-{logical}"
            request: dict[str, Any] = {
                "TableName": name,
                "AttributeDefinitions": props["AttributeDefinitions"],
                "KeySchema": props["KeySchema"],
                "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
            }
            if props.get("GlobalSecondaryIndexes"):
                request["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
            stream = props.get("StreamSpecification")
            if stream:
                request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
            description = dynamodb.create_table(**request)["TableDescription"]
            if stream:
                self.stream_arns[logical] = description["LatestStreamArn"]
            ttl = props.get("TimeToLiveSpecification")
            if ttl and ttl.get("Enabled"):
                dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
            self.physical[logical] = name
            self.arns[logical] = description["TableArn"]

    def _create_queues(self, sqs: Any) -> None:
        queues = self._of_type("AWS::SQS::Queue")
        # Dead-letter queues first: a redrive policy names its target's ARN.
        for logical, props in sorted(queues, key=lambda q: "RedrivePolicy" in q[1]):
            attributes: dict[str, str] = {
                k: str(props[k]) for k in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds") if k in props
            }
            if "RedrivePolicy" in props:
                attributes["RedrivePolicy"] = json.dumps(self.resolve(props["RedrivePolicy"]))
            url = sqs.create_queue(QueueName=f"{self.stack_name}-{logical}", Attributes=attributes)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            self.physical[logical] = url
            self.arns[logical] = arn

    def _variables(self, function_logical_id: str) -> dict[str, Any]:
        merged = dict(self.template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
        function = self.resources[function_logical_id].get("Properties", {})
        merged.update(function.get("Environment", {}).get("Variables", {}))
        return merged

    def environment(self, function_logical_id: str) -> dict[str, str]:
        """The function's environment variables: Globals plus its own, resolved."""
        return {name: str(self.resolve(value)) for name, value in self._variables(function_logical_id).items()}

    def environment_names(self, function_logical_id: str) -> set[str]:
        """The names of the function's environment variables (nothing resolved: usable before ``create``)."""
        return set(self._variables(function_logical_id))

    def functions(self) -> dict[str, str]:
        """Logical id -> CodeUri folder (no trailing slash) of every function in the template."""
        return {lid: props["CodeUri"].rstrip("/") for lid, props in self._of_type("AWS::Serverless::Function")}
