"""The events index list (audit_events/storage.py) and the operator's drop step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audit_events.storage import CHAIN_INDEX, EVENT_INDEXES, RETIRED_EVENT_INDEXES

pytestmark = pytest.mark.unit


def test_names_and_key_patterns_are_unique_and_retired_ones_are_gone() -> None:
    everything = [*EVENT_INDEXES, CHAIN_INDEX]
    names = [name for name, _ in everything]
    assert len(set(names)) == len(names)
    # MongoDB refuses an index whose keys another index already has under another name.
    patterns = [tuple(keys) for _, keys in everything]
    assert len(set(patterns)) == len(patterns)
    assert not set(RETIRED_EVENT_INDEXES) & set(names)


def test_every_list_index_leads_with_the_tenant_and_ends_with_the_page_order() -> None:
    for name, keys in EVENT_INDEXES:
        assert keys[0] == ("tenant", 1), name
        assert keys[-2:] == [("occurred_at", -1), ("_id", -1)], name


def test_the_operations_guide_drops_exactly_the_retired_indexes() -> None:
    text = (Path(__file__).parents[3] / "docs" / "operations.md").read_text()
    snippet = text[text.index("for (const name of [") :].split("])", 1)[0]
    assert set(re.findall(r'"([a-z_]+)"', snippet)) == set(RETIRED_EVENT_INDEXES)
