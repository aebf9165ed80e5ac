"""Server-side Resolve latency with many customers loaded: `python -m services.identity.bench [--customers N]`.

Loads N synthetic customers (an e-mail, a phone and a trait record each; bulk inserts, not N Resolves) into a
fresh database (a temporary SQLite file, or `--database-url`), starts the identity app's wiring (migrations, the
stored match model), then times `IdentityService.resolve` in-process — the servicer's work minus protobuf and the
network — for (1) a known identifier and (2) person traits only (a noisy copy of a stored person's traits, no
identifier), and prints p50/p90/p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from libs.errors import NotFound
from libs.protoconv import utcnow
from libs.settings import CommonSettings
from services.identity.app import build
from services.identity.domain import IdentifierKind, RawIdentifier
from services.identity.estimation import estimate_and_store
from services.identity.matching.blocking import blocking_keys
from services.identity.matching.synth import generate
from services.identity.matching.traits import TRAIT_FIELDS, normalise
from services.identity.settings import IdentitySettings
from services.identity.storage import _trait_row, customers, identifiers, trait_records

CHUNK = 5_000


async def load(engine, rows: list[dict[str, str]]) -> None:
    now = utcnow()
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        customer_rows, identifier_rows, trait_rows = [], [], []
        for index, row in enumerate(chunk, start):
            customer_id = f"c_{index:020d}"
            customer_rows.append({"id": customer_id, "created_at": now})
            identifier_rows.append(
                {"type": "email", "value": f"person{index}@example.com", "customer_id": customer_id, "linked_at": now}
            )
            identifier_rows.append(
                {"type": "phone", "value": f"+1555{index:07d}", "customer_id": customer_id, "linked_at": now}
            )
            person = normalise(row)
            trait_rows.append(_trait_row(customer_id, person, blocking_keys(person), now))
        async with engine.begin() as connection:
            await connection.execute(insert(customers), customer_rows)
            await connection.execute(insert(identifiers), identifier_rows)
            await connection.execute(insert(trait_records), trait_rows)


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return f"p50 {cuts[49]:.2f} ms, p90 {cuts[89]:.2f} ms, p99 {cuts[98]:.2f} ms, max {max(samples):.2f} ms"


async def main(customers_count: int, calls: int, database_url: str | None, estimate: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'identity-bench.db'}"
        app = build(IdentitySettings(database_url=url, port=0, common=CommonSettings(data_dir=Path(tmp))))
        await app.on_start()  # migrations
        engine, service, repository = app.parts["engine"], app.parts["service"], app.parts["repository"]
        # Twice the records, one per true person: customers are distinct people (duplicates are the queries).
        rows = generate(customers_count * 2, seed=42)
        people: dict[str, dict[str, str]] = {}
        queries: dict[str, dict[str, str]] = {}
        for row in rows:
            (queries if row["entity_id"] in people else people).setdefault(row["entity_id"], row)
        stored = list(people.values())[:customers_count]
        started = time.perf_counter()
        await load(engine, stored)
        print(f"loaded {len(stored)} customers in {time.perf_counter() - started:.1f}s ({engine.dialect.name})")
        if estimate:
            started = time.perf_counter()
            model = await estimate_and_store(repository, utcnow())
            service.use_model(model)
            print(f"estimated the match model in {time.perf_counter() - started:.1f}s")
        rng = random.Random(7)
        by_identifier, by_traits, outcomes = [], [], {}
        index_of = {row["entity_id"]: i for i, row in enumerate(stored)}
        noisy = [row for entity, row in queries.items() if entity in index_of]
        for _ in range(calls):
            i = rng.randrange(len(stored))
            raw = [RawIdentifier(IdentifierKind.EMAIL, f"person{i}@example.com")]
            t0 = time.perf_counter()
            await service.resolve(raw, False)
            by_identifier.append((time.perf_counter() - t0) * 1000)
        for _ in range(calls):
            row = rng.choice(noisy)
            traits = {name: row[name] for name in TRAIT_FIELDS if name != "phone"}
            t0 = time.perf_counter()
            try:
                result = await service.resolve([], False, traits)
                outcome = result.method.value
                if result.customer_id and result.customer_id != f"c_{index_of[row['entity_id']]:020d}":
                    outcome = "wrong customer"
            except NotFound:  # below the lower threshold: an answer here, not a failure
                outcome = "not_found"
            by_traits.append((time.perf_counter() - t0) * 1000)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        print(f"Resolve by identifier ({calls} calls): {percentiles(by_identifier)}")
        print(f"Resolve by person traits ({calls} calls): {percentiles(by_traits)}; outcomes {outcomes}")
        await app.on_stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--database-url", help="e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/identity_bench")
    parser.add_argument("--no-estimate", action="store_true", help="keep the built-in default m/u")
    options = parser.parse_args()
    asyncio.run(main(options.customers, options.calls, options.database_url, not options.no_estimate))
