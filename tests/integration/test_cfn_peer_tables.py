"""The data residency grant as CloudFormation evaluates it (moto's CloudFormation): with ``PeerAppTables``
set, the trigger function's role gets one statement on exactly the tables it names. Apart from
``test_cfn_stack.py``, whose stack lives in one moto for its whole module: this one needs a moto of its own.
"""

from __future__ import annotations

import pytest
from moto import mock_aws

from local.sam_transform import transformed_template
from tests.integration.test_cfn_stack import StackAttempt, adapted_for_moto, inline_statements

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning")


def test_peer_tables_become_a_grant_on_exactly_their_arns(monkeypatch: pytest.MonkeyPatch) -> None:
    """CloudFormation's evaluation of the PeerAppTables slots (moto's): two entries, two ARNs, one grant."""
    peers = [
        "arn:aws:dynamodb:eu-central-1:123456789012:table/forge-remote-eu-AppTable-1A2B3C",
        "arn:aws:dynamodb:us-east-2:123456789012:table/forge-remote-us-AppTable-4D5E6F",
    ]
    with mock_aws():
        template, _ = adapted_for_moto(transformed_template())
        stack = StackAttempt(template, {"PeerAppTables": f"EU={peers[0]},US={peers[1]}"})
        stack.run(monkeypatch)
        assert stack.status == "CREATE_COMPLETE"
        statements = inline_statements(stack, "ForgeTriggersFunction")
    on_peers = [
        s for s in statements if set(s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]) & set(peers)
    ]
    assert len(on_peers) == 1
    assert sorted(r for r in on_peers[0]["Resource"] if r is not None) == sorted(peers)  # (moto keeps NoValue: None)
    assert sorted(on_peers[0]["Action"]) == ["dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:Query"]
