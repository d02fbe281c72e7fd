"""Read template.yaml with CloudFormation's short tags (``!Ref``, ``!Sub``, ``!GetAtt`` ...).

Short tags become the long (JSON) form CloudFormation documents: ``!Ref X`` -> ``{"Ref": "X"}``,
``!GetAtt A.B`` -> ``{"Fn::GetAtt": ["A", "B"]}``, ``!Sub [...]`` -> ``{"Fn::Sub": [...]}``. Nothing
is resolved here: that is the reader's job (``local.stack`` resolves the few it needs).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# Short tags whose long form has no ``Fn::`` prefix.
_BARE = frozenset({"Ref", "Condition"})


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) that also accepts CloudFormation's ``!`` tags."""


# CloudFormation reads unquoted dates (``AWSTemplateFormatVersion: 2010-09-09``) as strings; so do we,
# instead of handing callers ``datetime.date`` objects. Copied per first character so SafeLoader is untouched.
_CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _short_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in _BARE else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            # Only the first dot separates resource from attribute (``!GetAtt Db.Endpoint.Address``).
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - yaml has no other node kinds
        raise yaml.constructor.ConstructorError(None, None, f"unsupported node for !{suffix}", node.start_mark)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _short_tag)


def load_template(path: str | Path) -> dict[str, Any]:
    """The template at ``path`` as plain dicts and lists, short tags in their long form."""
    with open(path, encoding="utf-8") as handle:
        document = yaml.load(handle, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict):
        raise ValueError(f"{path}: a CloudFormation template is a mapping at the top level")
    return document


def http_routes(template: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(method, path, function logical id)`` for every ``HttpApi`` event of every SAM function.

    SAM's defaults apply: no ``Method`` means ``ANY``; no ``Path`` (and no ``Method``) is the API's
    ``$default`` route, returned as the path ``$default``.
    """
    routes: list[tuple[str, str, str]] = []
    for logical_id, resource in (template.get("Resources") or {}).items():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::Serverless::Function":
            continue
        events = (resource.get("Properties") or {}).get("Events") or {}
        for event in events.values():
            if not isinstance(event, dict) or event.get("Type") != "HttpApi":
                continue
            props = event.get("Properties") or {}
            path = props.get("Path")
            method = props.get("Method")
            if path is None and method is None:
                routes.append(("ANY", "$default", logical_id))
            else:
                routes.append((str(method or "ANY").upper(), str(path), logical_id))
    return routes


def path_matches(route_path: str, path: str) -> bool:
    """Whether a request ``path`` matches an HTTP API route path.

    ``{name}`` matches one non-empty segment, a final ``{name+}`` one or more segments (the API
    Gateway rule: ``/api/{proxy+}`` matches ``/api/status`` but not ``/api`` or ``/api/``).
    ``$default`` matches everything.
    """
    if route_path == "$default":
        return True
    pattern = ""
    segments = route_path.strip("/").split("/")
    for index, segment in enumerate(segments):
        greedy = re.fullmatch(r"\{[^/{}]+\+\}", segment)
        if greedy and index == len(segments) - 1:
            pattern += r"/[^/].*"
        elif re.fullmatch(r"\{[^/{}+]+\}", segment):
            pattern += r"/[^/]+"
        else:
            pattern += "/" + re.escape(segment)
    return re.fullmatch(pattern or "/", path) is not None
