"""The recently returned items trait: newest return per SKU, categories, window expiry, bound, arrival order."""

from __future__ import annotations

import itertools
import random

import orjson
import pytest

from services.profile.domain import ProfileState
from services.profile.domain import events as ev
from services.profile.domain.state import RETURNED_ITEMS_LIMIT, ReturnedItem
from tests.unit.test_profile_traits import NOW, at, event, fold

pytestmark = pytest.mark.unit


def returned(*lines: tuple[str, str]) -> ev.ProductReturn:
    """A return of (sku, category) lines; category "" means the producer sent none."""
    return ev.ProductReturn("o-1", tuple(ev.ReturnLine(sku, 1, 10.0, category) for sku, category in lines), "mail", "")


def items(state: ProfileState, now=NOW) -> list[tuple[str, str, object]]:
    return [(i.sku, i.category, i.returned_at) for i in state.traits(now).recently_returned]


def test_returned_items_keep_the_newest_return_per_sku_newest_first():
    state = fold(
        event(returned(("SHOE-42", "shoes"), ("SOCK-M", "accessories")), at(days=10)),
        event(returned(("SHOE-42", "shoes")), at(days=2)),
        event(returned(("HAT-1", "")), at(days=5)),
    )
    assert items(state) == [
        ("SHOE-42", "shoes", at(days=2)),
        ("HAT-1", "", at(days=5)),
        ("SOCK-M", "accessories", at(days=10)),
    ]


def test_out_of_order_returns_fold_to_the_same_items():
    events = [
        event(returned(("SHOE-42", "shoes")), at(days=3)),
        event(returned(("SHOE-42", "")), at(days=1)),  # newer, but without a category: the known one stays
        event(returned(("SOCK-M", "accessories")), at(days=20)),
        event(returned(("SOCK-M", "accessories"), ("HAT-1", "hats")), at(days=7)),
    ]
    expected = items(fold(*events))
    assert expected == [
        ("SHOE-42", "shoes", at(days=1)),
        ("HAT-1", "hats", at(days=7)),  # same time: by SKU
        ("SOCK-M", "accessories", at(days=7)),
    ]
    for order in itertools.permutations(events):
        assert items(fold(*order)) == expected


def test_returns_leave_the_window_at_fold_and_at_read_time():
    state = fold(event(returned(("OLD-1", "shoes")), at(days=91)), event(returned(("NEW-1", "hats")), at(days=89)))
    assert [sku for sku, _, _ in items(state)] == ["NEW-1"]  # 91 days old: never kept
    assert "OLD-1" not in state.returned_items
    two_days_later = NOW.replace(day=3)
    assert items(state, now=two_days_later) == []  # NEW-1 is now 91 days old: no longer read


def test_the_list_is_bounded_to_the_newest_skus_whatever_the_arrival_order():
    events = [event(returned((f"SKU-{n}", "shoes")), at(days=n)) for n in range(RETURNED_ITEMS_LIMIT + 10)]
    expected = [f"SKU-{n}" for n in range(RETURNED_ITEMS_LIMIT)]
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    for order in (events, list(reversed(events)), shuffled):
        state = fold(*order)
        assert [sku for sku, _, _ in items(state)] == expected
        assert len(state.returned_items) == RETURNED_ITEMS_LIMIT


def test_returned_items_survive_the_stored_document():
    state = fold(event(returned(("SHOE-42", "shoes"), ("HAT-1", "")), at(days=4)))
    stored = ProfileState.from_document(orjson.loads(orjson.dumps(state.to_document())))
    assert stored.returned_items == state.returned_items
    assert stored.traits(NOW).recently_returned == (
        ReturnedItem("HAT-1", "", at(days=4)),
        ReturnedItem("SHOE-42", "shoes", at(days=4)),
    )
    assert "returned_items" not in ProfileState().to_document()  # nothing returned: nothing stored
