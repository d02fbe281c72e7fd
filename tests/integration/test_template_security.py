"""checkov's findings on ``template.yaml`` (``make checkov``): every one accepted is skipped on its own
resource, with its reason, so that no skip is silent and none hides in the command line.

A skip is ``Metadata: checkov: skip: [{id: CKV_AWS_..., comment: "..."}]`` on the resource. This
checks the skips' form; ``make checkov`` checks that nothing else fails.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from local.cfn_yaml import load_template
from local.stack import TEMPLATE
from tests.support import ROOT

RESOURCES: dict[str, Any] = load_template(TEMPLATE)["Resources"]
CHECK_ID = re.compile(r"^CKV2?_AWS_\d+$")
MIN_REASON = 20  # characters: a reason, not a placeholder


def skips() -> list[tuple[str, Any]]:
    """(resource logical id, skip entry) for every checkov skip in the template."""
    found: list[tuple[str, Any]] = []
    for lid, resource in RESOURCES.items():
        checkov = (resource.get("Metadata") or {}).get("checkov")
        if checkov is None:
            continue
        assert isinstance(checkov, dict), f"{lid}: Metadata.checkov is a mapping"
        assert set(checkov) == {"skip"}, f"{lid}: Metadata.checkov holds only skip"
        assert isinstance(checkov["skip"], list), f"{lid}: Metadata.checkov.skip is a list"
        assert checkov["skip"], f"{lid}: Metadata.checkov.skip is empty"
        found.extend((lid, entry) for entry in checkov["skip"])
    return found


SKIPS = skips()


def test_the_template_has_checkov_skips() -> None:
    assert len(SKIPS) >= 10  # the accepted findings (tables, queues, log groups) are skipped here


@pytest.mark.parametrize(("resource", "entry"), SKIPS, ids=[f"{lid}-{e.get('id')}" for lid, e in SKIPS])
def test_every_skip_names_a_check_and_says_why(resource: str, entry: Any) -> None:
    assert isinstance(entry, dict), f"{resource}: {entry}"
    assert set(entry) == {"id", "comment"}, f"{resource}: {entry}"
    assert CHECK_ID.match(str(entry["id"])), f"{resource}: {entry['id']!r} is not a checkov AWS check id"
    comment = entry["comment"]
    assert isinstance(comment, str), f"{resource} {entry['id']}: {comment!r}"
    assert len(comment.strip()) >= MIN_REASON, f"{resource} {entry['id']}: {comment!r}"


def test_no_check_is_skipped_twice_on_one_resource() -> None:
    seen: set[tuple[str, str]] = set()
    twice = []
    for lid, entry in SKIPS:
        key = (lid, entry["id"])
        if key in seen:
            twice.append(key)
        seen.add(key)
    assert twice == []


def test_checkov_runs_every_check_and_fails_on_any() -> None:
    """The Makefile's checkov target: the pinned version, the whole CloudFormation framework, over the template
    and over its SAM transform, no skips or soft failure on the command line (a skip belongs to its resource,
    with its reason)."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "checkov==3.3.30" in makefile
    (recipe,) = re.findall(r"^checkov:.*\n((?:\t.+\n)+)", makefile, flags=re.MULTILINE)
    runs = [shlex.split(line) for line in recipe.splitlines() if line.strip().startswith(".venv-checkov/bin/checkov")]
    scanned = []
    forbidden = {"--skip-check", "--soft-fail", "--soft-fail-on", "--check", "--baseline", "--config-file"}
    for words in runs:
        scanned.append(words[words.index("-f") + 1])
        assert words[words.index("--framework") + 1] == "cloudformation"
        assert [w for w in words if w.split("=", 1)[0] in forbidden] == []
    assert scanned[0] == "template.yaml"
    assert len(scanned) == 2
    assert scanned[1] in recipe.split("local.sam_transform", 1)[1]  # the file the transform was written to
    # checkov reads a .checkov.yaml (or .yml) in the directory it runs in by itself: its skips would be silent
    assert [p.name for p in ROOT.glob(".checkov.y*ml")] == []


def test_the_skips_reach_the_transformed_template() -> None:
    """The transform's scan honours the same skips: SAM passes each resource's Metadata through."""
    from local.sam_transform import transformed_template

    transformed = transformed_template()["Resources"]
    for lid, resource in RESOURCES.items():
        if "checkov" in (resource.get("Metadata") or {}):
            assert transformed[lid]["Metadata"]["checkov"] == resource["Metadata"]["checkov"], lid
