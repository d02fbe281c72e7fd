"""local/cfn_yaml.py: CloudFormation short tags, SAM HttpApi routes, and API Gateway path matching."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from local.cfn_yaml import http_routes, load_template, path_matches


def _load(tmp_path: Path, text: str) -> dict[str, Any]:
    path = tmp_path / "template.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_template(path)


def test_short_tags_become_their_long_form(tmp_path: Path) -> None:
    doc = _load(
        tmp_path,
        """
        AWSTemplateFormatVersion: 2010-09-09
        Conditions:
          HasEmail: !Not [!Equals [!Ref AlarmEmail, ""]]
        Resources:
          Queue:
            Type: AWS::SQS::Queue
            Condition: HasEmail
            Properties:
              QueueName: !Sub "${AWS::StackName}-jobs"
              Arn: !GetAtt Jobs.Arn
              Deep: !GetAtt Db.Endpoint.Address
              Picked: !Select [0, !GetAZs ""]
              Maybe: !If [HasEmail, !Ref AlarmEmail, !Ref AWS::NoValue]
              Cond: !Condition HasEmail
              Joined: !Join ["", ["a", !Ref B]]
        """,
    )
    assert doc["AWSTemplateFormatVersion"] == "2010-09-09"  # a string, as CloudFormation reads it
    assert doc["Conditions"]["HasEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}
    props = doc["Resources"]["Queue"]["Properties"]
    assert props["QueueName"] == {"Fn::Sub": "${AWS::StackName}-jobs"}
    assert props["Arn"] == {"Fn::GetAtt": ["Jobs", "Arn"]}
    assert props["Deep"] == {"Fn::GetAtt": ["Db", "Endpoint.Address"]}  # only the first dot splits
    assert props["Picked"] == {"Fn::Select": [0, {"Fn::GetAZs": ""}]}
    assert props["Maybe"] == {"Fn::If": ["HasEmail", {"Ref": "AlarmEmail"}, {"Ref": "AWS::NoValue"}]}
    assert props["Cond"] == {"Condition": "HasEmail"}
    assert props["Joined"] == {"Fn::Join": ["", ["a", {"Ref": "B"}]]}


def test_sub_with_a_variable_map_keeps_nested_tags(tmp_path: Path) -> None:
    doc = _load(
        tmp_path,
        """
        Value: !Sub
          - "arn:${AWS::Partition}:s3:::${Bucket}/${Key}"
          - Bucket: !Ref DataBucket
            Key: !Select [1, !Split ["/", !GetAtt Obj.Path]]
        """,
    )
    assert doc["Value"] == {
        "Fn::Sub": [
            "arn:${AWS::Partition}:s3:::${Bucket}/${Key}",
            {
                "Bucket": {"Ref": "DataBucket"},
                "Key": {"Fn::Select": [1, {"Fn::Split": ["/", {"Fn::GetAtt": ["Obj", "Path"]}]}]},
            },
        ]
    }


def test_getatt_in_sequence_form(tmp_path: Path) -> None:
    doc = _load(tmp_path, "Value: !GetAtt [Queue, Arn]\n")
    assert doc["Value"] == {"Fn::GetAtt": ["Queue", "Arn"]}


def test_python_tags_are_still_refused(tmp_path: Path) -> None:
    """The ``!`` multi-constructor must not open SafeLoader to arbitrary objects."""
    with pytest.raises(yaml.constructor.ConstructorError):
        _load(tmp_path, "Value: !!python/object/apply:os.getcwd []\n")


def test_a_template_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mapping"):
        _load(tmp_path, "- just\n- a list\n")


def test_http_routes_reads_sam_httpapi_events(tmp_path: Path) -> None:
    doc = _load(
        tmp_path,
        """
        Resources:
          Calls:
            Type: AWS::Serverless::Function
            Properties:
              Events:
                Api:
                  Type: HttpApi
                  Properties: {ApiId: !Ref HttpApi, Method: any, Path: "/api/{proxy+}"}
                Queue:
                  Type: SQS
                  Properties: {Queue: !GetAtt Jobs.Arn}
          Triggers:
            Type: AWS::Serverless::Function
            Properties:
              Events:
                Lifecycle:
                  Type: HttpApi
                  Properties: {Method: POST, Path: /forge/lifecycle}
                NoMethod:
                  Type: HttpApi
                  Properties: {Path: /forge/other}
          Fallback:
            Type: AWS::Serverless::Function
            Properties:
              Events:
                Default:
                  Type: HttpApi
          NoEvents:
            Type: AWS::Serverless::Function
            Properties: {Handler: app.handler}
          NotAFunction:
            Type: AWS::Lambda::Function
            Properties:
              Events:
                Api: {Type: HttpApi, Properties: {Method: GET, Path: /raw}}
        """,
    )
    assert sorted(http_routes(doc)) == [
        ("ANY", "$default", "Fallback"),
        ("ANY", "/api/{proxy+}", "Calls"),
        ("ANY", "/forge/other", "Triggers"),
        ("POST", "/forge/lifecycle", "Triggers"),
    ]


@pytest.mark.parametrize(
    ("route", "path", "expected"),
    [
        ("/api/{proxy+}", "/api/status", True),
        ("/api/{proxy+}", "/api/a/b/c", True),
        ("/api/{proxy+}", "/api", False),
        ("/api/{proxy+}", "/api/", False),
        ("/api/{proxy+}", "/apix/status", False),
        ("/forge/lifecycle", "/forge/lifecycle", True),
        ("/forge/lifecycle", "/forge/lifecycle/x", False),
        ("/forge/lifecycle", "/forge/lifecycleX", False),
        ("/pages/{id}", "/pages/42", True),
        ("/pages/{id}", "/pages/42/x", False),
        ("/pages/{id}/v", "/pages//v", False),
        ("/a.b", "/aXb", False),  # literal segments are not regular expressions
        ("/", "/", True),
        ("$default", "/anything/at/all", True),
    ],
)
def test_path_matches_follows_api_gateway(route: str, path: str, expected: bool) -> None:
    assert path_matches(route, path) is expected
