"""Each function runs as its own IAM role, with the policy the transformed template gives it, and every
AWS call it makes is checked twice:

- here, against the role's statements with their resources resolved to the stack's ARNs (action AND
  resource, with DynamoDB transactions checked item by item, as IAM does: there is no
  ``dynamodb:TransactWriteItems`` permission, each item needs its own action on its own table);
- by moto's IAM enforcement (``enable_iam_authentication``), with the call signed by credentials from
  ``sts:AssumeRole`` on a moto role holding the same actions. moto matches actions only (a statement
  scoped to an ARN never matches there), so that role's resources are widened to ``*``.

A call either check refuses is recorded as a denial (and fails as AWS would fail it). Every permitted
call is recorded as exercised, per function; ``GRANTS`` / ``EXERCISED`` feed the summary table that
``tests/integration/conftest.py`` prints at the end of the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from moto.core.authorization import enable_iam_authentication

from forge_remote import aws
from local.handlers import load_handler
from local.sam_transform import AWS_MANAGED_POLICY_ACTIONS, FunctionRole, as_list
from local.stack import LocalStack

CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
DENIAL_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId"}
)
_TRANSACT_ITEM_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}
# Operations IAM authorises item by item (above); moto checks them by operation name, so its role has them.
_PER_ITEM_OPERATIONS = ("dynamodb:TransactWriteItems", "dynamodb:TransactGetItems")
# SQS batch operations IAM authorises with the one-message action (there is no sqs:SendMessageBatch
# permission: sqs:SendMessage allows it); moto checks them by operation name, so its role gets the batch
# operation beside each action that allows it.
_BATCH_OPERATIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}

# Session-wide, for the summary table: function -> {"action on resource"}; the functions whose own
# workload ran (a function only called by another's workload is not summarised from that alone).
GRANTS: dict[str, set[str]] = {}
EXERCISED: dict[str, set[str]] = {}
DRIVEN: set[str] = set()


@dataclass(frozen=True)
class Permission:
    """One IAM action on one resource ARN."""

    action: str
    resource: str


@dataclass(frozen=True)
class Grant:
    """An Allow statement with its resources resolved to ARNs."""

    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def allows(self, permission: Permission) -> bool:
        action = permission.action.lower()
        return any(fnmatchcase(action, a.lower()) for a in self.actions) and any(
            fnmatchcase(permission.resource, r) for r in self.resources
        )


_NO_VALUE = object()  # ``{"Ref": "AWS::NoValue"}``: the element is left out of its list or mapping


def resolve(stack: LocalStack, value: Any, conditions: dict[str, Any]) -> Any:
    """``value`` with its intrinsics resolved as CloudFormation would for ``stack``'s parameters: what
    ``LocalStack.resolve`` knows (Ref, GetAtt, Sub) plus the condition functions, ``Fn::If`` with
    ``AWS::NoValue``, ``Fn::Select`` and ``Fn::Split`` (the data residency grant on the PeerAppTables
    ARNs is built from them). ``conditions``: the template's Conditions section."""

    def condition(name: str) -> bool:
        if name not in conditions:
            raise KeyError(f"condition {name}")
        return bool(evaluate(conditions[name]))

    functions: dict[str, Callable[[Any], Any]] = {
        "Fn::If": lambda arg: evaluate(arg[1] if condition(arg[0]) else arg[2]),
        "Condition": condition,
        "Fn::Equals": lambda arg: evaluate(arg[0]) == evaluate(arg[1]),
        "Fn::Not": lambda arg: not evaluate(arg[0]),
        "Fn::And": lambda arg: all(bool(evaluate(a)) for a in arg),
        "Fn::Or": lambda arg: any(bool(evaluate(a)) for a in arg),
        "Fn::Select": lambda arg: evaluate(arg[1])[int(evaluate(arg[0]))],
        "Fn::Split": lambda arg: str(evaluate(arg[1])).split(arg[0]),
    }

    def evaluate(item: Any) -> Any:
        if item == {"Ref": "AWS::NoValue"}:
            return _NO_VALUE
        if isinstance(item, dict) and len(item) == 1:
            ((key, arg),) = item.items()
            if key in functions:
                return functions[key](arg)
            if key in ("Ref", "Fn::GetAtt", "Fn::Sub"):
                return stack.resolve(item)
        if isinstance(item, dict):
            resolved = {k: evaluate(v) for k, v in item.items()}
            return {k: v for k, v in resolved.items() if v is not _NO_VALUE}
        if isinstance(item, list):
            return [v for v in map(evaluate, item) if v is not _NO_VALUE]
        return item

    return evaluate(value)


def resolved_grants(stack: LocalStack, role: FunctionRole, conditions: dict[str, Any] | None = None) -> list[Grant]:
    """The role's inline statements with ARNs for their intrinsics (raises naming what cannot be resolved);
    a statement an ``Fn::If`` leaves out (``AWS::NoValue``) is no grant."""
    grants = []
    for written in role.statements:
        try:
            statement = resolve(stack, written, conditions or {})
        except KeyError as exc:
            raise AssertionError(f"{role.function}: cannot resolve a policy statement locally ({exc})") from exc
        if statement is _NO_VALUE:
            continue
        if statement.get("Effect") != "Allow" or "NotAction" in statement or "NotResource" in statement:
            raise AssertionError(f"{role.function}: only plain Allow statements are modelled here: {statement}")
        resources = tuple(str(r) for r in as_list(statement["Resource"]))
        grants.append(Grant(tuple(as_list(statement["Action"])), resources))
    return grants


def managed_actions(role: FunctionRole) -> tuple[str, ...]:
    unknown = [name for name in role.managed_policies if name not in AWS_MANAGED_POLICY_ACTIONS]
    if unknown:
        raise AssertionError(f"{role.function}: add the actions of {unknown} to AWS_MANAGED_POLICY_ACTIONS")
    return tuple(a for name in role.managed_policies for a in AWS_MANAGED_POLICY_ACTIONS[name])


class ArnBook:
    """Names and URLs the code passes to AWS, back to ARNs (and ARNs to the template's logical ids)."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self._by_physical = {physical: stack.arns[logical] for logical, physical in stack.physical.items()}
        self._logical = {arn: logical for logical, arn in stack.arns.items()}

    def arn(self, name_or_url: str) -> str:
        if name_or_url.startswith("arn:"):
            return name_or_url
        return self._by_physical.get(name_or_url, f"unknown:{name_or_url}")

    def table(self, name: str, index: str | None = None) -> str:
        arn = self.arn(name)
        return f"{arn}/index/{index}" if index else arn

    def label(self, resource: str) -> str:
        """``TokensTable``, ``AppTable/index/ActiveInstallations``, ``*``: the template's names."""
        for arn, logical in sorted(self._logical.items(), key=lambda kv: -len(kv[0])):
            if resource == arn or resource.startswith(arn + "/"):
                return logical + resource[len(arn) :]
        return resource


def required_permissions(prefix: str, operation: str, params: dict[str, Any], book: ArnBook) -> list[Permission]:
    """What IAM checks for one API call (the subset of AWS's rules this code can reach)."""
    if prefix == "dynamodb" and operation in ("TransactWriteItems", "TransactGetItems"):
        needed = []
        for item in params.get("TransactItems", []):
            ((kind, body),) = item.items()
            needed.append(Permission(_TRANSACT_ITEM_ACTIONS[kind], book.table(body["TableName"])))
        return needed
    if prefix == "dynamodb" and operation in ("BatchWriteItem", "BatchGetItem"):
        return [Permission(f"dynamodb:{operation}", book.table(t)) for t in params.get("RequestItems", {})]
    if prefix == "dynamodb" and "TableName" in params:
        return [Permission(f"dynamodb:{operation}", book.table(params["TableName"], params.get("IndexName")))]
    if prefix == "sqs" and "QueueUrl" in params:
        action = f"sqs:{operation}"
        return [Permission(_BATCH_OPERATIONS.get(action, action), book.arn(params["QueueUrl"]))]
    return [Permission(f"{prefix}:{operation}", "*")]


@dataclass
class RoleEnforcer:
    """The template's roles, created in moto and assumed; functions loaded to run under them."""

    stack: LocalStack
    roles: dict[str, FunctionRole]
    code_uris: dict[str, str]
    conditions: dict[str, Any] = field(default_factory=dict)  # the transformed template's Conditions
    denials: list[str] = field(default_factory=list)
    _grants: dict[str, list[Grant]] = field(default_factory=dict)
    _credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    _current: str | None = None

    def __post_init__(self) -> None:
        self.book = ArnBook(self.stack)
        iam, sts = boto3.client("iam"), boto3.client("sts")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        for function, role in self.roles.items():
            grants = resolved_grants(self.stack, role, self.conditions)
            self._grants[function] = grants
            GRANTS.setdefault(function, set()).update(
                f"{a} on {self.book.label(r)}" for g in grants for a in g.actions for r in g.resources
            )
            granted = {a for g in grants for a in g.actions} | set(managed_actions(role))
            batches = {batch for batch, single in _BATCH_OPERATIONS.items() if single in granted}
            actions = sorted(granted | batches | set(_PER_ITEM_OPERATIONS))
            widened = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            arn = iam.create_role(RoleName=role.role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
            iam.put_role_policy(RoleName=role.role, PolicyName="FromTemplate", PolicyDocument=json.dumps(widened))
            assumed = sts.assume_role(RoleArn=arn, RoleSessionName=function)["Credentials"]
            self._credentials[function] = {
                "AWS_ACCESS_KEY_ID": assumed["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": assumed["SecretAccessKey"],
                "AWS_SESSION_TOKEN": assumed["SessionToken"],
            }

    # -- running as a role
    @contextmanager
    def acting_as(self, function: str, *, checked_here: bool = True) -> Iterator[None]:
        """boto3 clients created inside sign with ``function``'s role (the credentials Lambda would give it).
        ``checked_here=False`` leaves the calls to moto's IAM alone (to show that check on its own)."""
        saved = {name: os.environ.get(name) for name in CREDENTIAL_VARIABLES}
        previous = self._current
        os.environ.update(self._credentials[function])
        boto3.DEFAULT_SESSION = None  # the default session caches the credentials it resolved
        aws.reset_clients()
        self._current = function if checked_here else None
        try:
            yield
        finally:
            self._current = previous
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            boto3.DEFAULT_SESSION = None
            aws.reset_clients()

    def load(self, function: str) -> Any:
        """The function's module, imported as its role (clients made at import sign with it), and its
        handler wrapped so that each invocation runs as that role with IAM enforced."""
        if function not in self.roles:
            raise AssertionError(f"{function} has no role in the transformed template")
        with self.acting_as(function):
            module = load_handler(function, self.code_uris[function], self.stack.environment(function))
        handler: Callable[..., Any] = module.lambda_handler

        def enforced(event: Any, context: Any) -> Any:
            with self.acting_as(function), enable_iam_authentication():
                return handler(event, context)

        module.lambda_handler = enforced
        return module

    # -- every AWS call goes through here (installed by ``patch``)
    def check(self, client: BaseClient, operation: str, params: dict[str, Any], call: Callable[[], Any]) -> Any:
        function = self._current
        if function is None:  # the test's own set-up and inspection: not a function's call
            return call()
        prefix = client.meta.service_model.signing_name
        needed = required_permissions(prefix, operation, params, self.book)
        refused = [p for p in needed if not any(g.allows(p) for g in self._grants[function])]
        if refused:
            for p in refused:
                self.denials.append(f"{function}: {p.action} on {self.book.label(p.resource)} (not in its role)")
            raise ClientError(
                {"Error": {"Code": "AccessDeniedException", "Message": "not allowed by the role's policy"}}, operation
            )
        try:
            result = call()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in DENIAL_CODES:
                self.denials.append(f"{function}: {prefix}:{operation} refused by moto IAM ({code})")
            raise
        EXERCISED.setdefault(function, set()).update(f"{p.action} on {self.book.label(p.resource)}" for p in needed)
        return result

    @contextmanager
    def patch(self) -> Iterator[None]:
        original = BaseClient._make_api_call
        enforcer = self

        def make_api_call(self: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
            return enforcer.check(self, operation_name, api_params, lambda: original(self, operation_name, api_params))

        BaseClient._make_api_call = make_api_call  # type: ignore[method-assign]
        try:
            yield
        finally:
            BaseClient._make_api_call = original  # type: ignore[method-assign]


def summary_lines() -> list[str]:
    """The granted-vs-exercised table, one block per function that ran under enforcement."""
    lines: list[str] = []
    for function in sorted(DRIVEN & set(GRANTS)):
        granted, used = GRANTS[function], EXERCISED.get(function, set())
        unused = sorted(granted - used)
        lines.append(f"least privilege: {function}: {len(used & granted)}/{len(granted)} granted permissions exercised")
        lines.extend(f"    used    {p}" for p in sorted(used & granted))
        lines.extend(f"    UNUSED  {p}" for p in unused)
    return lines
