"""``template.yaml`` after the SAM transform, offline: what CloudFormation would deploy.

``transformed_template()`` runs the same translator CloudFormation's ``AWS::Serverless`` transform
runs (aws-sam-translator, SAM policy templates included) with no AWS account: the local folders in
``CodeUri`` / ``ContentUri`` become S3 locations, as ``sam package`` makes them, and named managed
policies come from a fixed map instead of IAM. ``function_roles()`` reads each function's role out of
the result, so tests check the policies the stack really gets, never a copy written by hand.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.cfn_yaml import load_template
from local.stack import TEMPLATE

# Where the packaged code would be: ``sam package`` uploads each local folder and writes its S3 URI.
CODE_BUCKET = "forge-remote-local-artifacts"
# Managed policies a ``Policies`` entry may name (SAM asks IAM for this map; offline it is fixed).
NAMED_MANAGED_POLICIES = {
    "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
}
# The AWS managed policies SAM attaches by itself, by name: what they allow (from their published
# versions). They serve the Lambda service (logs, X-Ray, event source mappings), not the code.
AWS_MANAGED_POLICY_ACTIONS = {
    "AWSLambdaBasicExecutionRole": ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"),
    "AWSXrayWriteOnlyAccess": (
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
        "xray:GetSamplingStatisticSummaries",
    ),
    "AWSLambdaSQSQueueExecutionRole": (
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    ),
    "AWSLambdaDynamoDBExecutionRole": (
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    ),
}


class _FixedManagedPolicies:
    """SAM's managed-policy loader, answered from ``NAMED_MANAGED_POLICIES`` instead of IAM."""

    def load(self) -> dict[str, str]:
        return dict(NAMED_MANAGED_POLICIES)


def code_locations(template: dict[str, Any]) -> dict[str, str]:
    """Logical id -> local folder of every function's ``CodeUri`` and layer's ``ContentUri``."""
    found: dict[str, str] = {}
    for logical_id, resource in template.get("Resources", {}).items():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                found[logical_id] = props[key]
    return found


def transformed_template(path: Path = TEMPLATE, *, region: str = "us-east-1") -> dict[str, Any]:
    """The CloudFormation template the SAM transform makes of ``path`` (code as ``s3://CODE_BUCKET/<id>.zip``)."""
    import boto3
    from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
    from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

    template = copy.deepcopy(load_template(path))
    for logical_id in code_locations(template):
        props = template["Resources"][logical_id]["Properties"]
        key = "CodeUri" if "CodeUri" in props else "ContentUri"
        props[key] = f"s3://{CODE_BUCKET}/{logical_id}.zip"
    # The session only supplies the region (pseudo parameters): nothing is called.
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    managed = _FixedManagedPolicies()
    transformed: dict[str, Any] = translator.translate(
        template, parameter_values={}, get_managed_policy_map=managed.load
    )
    return transformed


@dataclass(frozen=True)
class FunctionRole:
    """A function's execution role as the transform made it: its inline statements (still holding the
    template's intrinsics) and the AWS managed policies attached to it, by name."""

    function: str
    role: str
    statements: tuple[dict[str, Any], ...]
    managed_policies: tuple[str, ...]


def _managed_policy_name(arn: Any) -> str:
    text = arn.get("Fn::Sub", "") if isinstance(arn, dict) else str(arn)
    return str(text).rsplit("/", 1)[-1]


def function_roles(transformed: dict[str, Any]) -> dict[str, FunctionRole]:
    """Function logical id -> its role, for every ``AWS::Lambda::Function`` of a transformed template."""
    resources: dict[str, Any] = transformed["Resources"]
    roles: dict[str, FunctionRole] = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Lambda::Function":
            continue
        role_ref = resource["Properties"]["Role"]
        role_id = role_ref["Fn::GetAtt"][0]
        role = resources[role_id]["Properties"]
        statements: list[dict[str, Any]] = []
        for policy in role.get("Policies", []):
            document_statements = policy["PolicyDocument"]["Statement"]
            statements.extend(document_statements if isinstance(document_statements, list) else [document_statements])
        managed = tuple(_managed_policy_name(arn) for arn in role.get("ManagedPolicyArns", []))
        roles[logical_id] = FunctionRole(logical_id, role_id, tuple(statements), managed)
    return roles


def as_list(value: Any) -> list[Any]:
    """A policy field that may be one value or a list of them, as a list."""
    return value if isinstance(value, list) else [value]


def main(argv: list[str] | None = None) -> int:
    """``python -m local.sam_transform OUT``: write the transformed template as JSON (``make checkov`` scans it)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m local.sam_transform", description=main.__doc__)
    parser.add_argument("out", type=Path, help="where to write the transformed template (JSON)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(transformed_template(), indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
