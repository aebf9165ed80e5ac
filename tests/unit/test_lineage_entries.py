"""`libs.lineage.entries_from`: a ListLineage page as the followers' entries; an unknown kind stops the page."""

from __future__ import annotations

import pytest
from nextbest.identity.v1 import identity_service_pb2 as pb

from libs.errors import Unavailable
from libs.lineage import LineageEntry, LineageKind, entries_from

pytestmark = pytest.mark.unit


def test_every_kind_and_field_converts():
    page = [
        pb.LineageEntry(seq=1, kind=pb.LINEAGE_KIND_MERGE, merge_id="m1", survivor_customer_id="a",
                        merged_customer_id="b"),
        pb.LineageEntry(seq=2, kind=pb.LINEAGE_KIND_UNMERGE, merge_id="m1", survivor_customer_id="a",
                        merged_customer_id="b"),
        pb.LineageEntry(seq=3, kind=pb.LINEAGE_KIND_FORGET, customer_id="a"),
    ]
    assert entries_from(page, "test") == [
        LineageEntry(1, LineageKind.MERGE, "m1", "a", "b"),
        LineageEntry(2, LineageKind.UNMERGE, "m1", "a", "b"),
        LineageEntry(3, LineageKind.FORGET, customer_id="a"),
    ]


@pytest.mark.parametrize("kind", [pb.LINEAGE_KIND_UNSPECIFIED, 99])
def test_a_kind_the_follower_does_not_know_is_never_skipped(kind):
    page = [pb.LineageEntry(seq=1, kind=pb.LINEAGE_KIND_FORGET, customer_id="a"), pb.LineageEntry(seq=7, kind=kind)]
    with pytest.raises(Unavailable, match="lineage entry 7 has a kind this profile service does not know"):
        entries_from(page, "profile")
