"""Estimating the match model from the stored trait records and storing it (CLI `nextbest identity estimate`)."""

from __future__ import annotations

from datetime import datetime

from services.identity.matching.linker import link
from services.identity.matching.model import MatchModel
from services.identity.storage import SqlIdentityRepository

#: Fewer stored trait records than this and EM has too little to learn from: the defaults stay.
MIN_RECORDS = 500


async def estimate_and_store(repository: SqlIdentityRepository, at: datetime) -> MatchModel | None:
    records = [traits for _, traits in await repository.all_trait_records()]
    if len(records) < MIN_RECORDS:
        return None
    model = link(records).model
    await repository.save_model(model.to_dict(), len(records), at)
    return model
