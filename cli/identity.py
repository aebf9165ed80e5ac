"""`nextbest identity ...`: identity tools.

- `link A.csv [B.csv]`: deduplicate one file, or link B to A, by person traits (batch in-process, or `--online
  HOST:PORT` through the Resolve RPC); writes record_id,customer_id; `--truth COLUMN` prints pairwise accuracy.
- `generate N`: a noisy synthetic person-record file with a true-entity column, to test linking with.
- `estimate`: estimates the match model (m/u by EM) from the trait records stored in the identity database.
- `merge SURVIVOR MERGED`, `unmerge MERGE_ID`, `forget CUSTOMER`: the data steward's RPCs, with reason and actor.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from libs.protoconv import utcnow
from libs.settings import load_settings
from services.identity.matching.files import ColumnMapping, LoadedFile, MappingError, load
from services.identity.matching.linker import LinkResult, link, pairwise_score
from services.identity.matching.synth import generate, write_csv
from services.identity.settings import IdentitySettings


def register(subparsers: argparse._SubParsersAction) -> None:
    identity = subparsers.add_parser("identity", help="identity tools (record linkage, model estimation)")
    commands = identity.add_subparsers(dest="identity_command", required=True, metavar="COMMAND")

    linker = commands.add_parser(
        "link",
        help="deduplicate one person-record CSV, or link B to A; writes record_id,customer_id",
        description="Probabilistic (Fellegi–Sunter) record linkage on person traits. One file: its duplicates get "
        "one customer id. Two files: B's records are linked to A's customers (both files are written, A first; "
        "record ids must be unique across them). Batch mode fits m/u by EM on the data itself; --online sends "
        "every row through a running identity service's Resolve RPC (A loaded first, then B).",
    )
    linker.add_argument("a", type=Path, help="file A (CSV with a header row)")
    linker.add_argument("b", type=Path, nargs="?", help="file B, linked to A")
    linker.add_argument(
        "--map",
        dest="mapping",
        help="trait=COLUMN pairs, comma separated (traits: given_name, surname, date_of_birth, street_number, "
        "address_line, city, postcode, state, phone); unmapped traits use a column of the same name",
    )
    linker.add_argument("--config", type=Path, help='JSON mapping file: {"id": COLUMN, "fields": {trait: COLUMN}}')
    linker.add_argument("--id-column", help="the record id column (default record_id)")
    linker.add_argument("--out", type=Path, required=True, help="where to write record_id,customer_id")
    linker.add_argument("--truth", help="column with the true entity id: print pairwise precision, recall and F1")
    linker.add_argument("--threshold", type=float, default=0.9, help="match probability that links (batch)")
    linker.add_argument("--online", metavar="HOST:PORT", help="resolve every row through this identity service")
    linker.add_argument("--concurrency", type=int, default=16, help="Resolve calls in flight (online mode)")
    linker.set_defaults(func=_link)

    generator = commands.add_parser(
        "generate",
        help="write a synthetic noisy person-record CSV with a true entity_id column",
        description="Households, Zipf names, nicknames, typos, swapped names, missing values, transposed digits "
        "and moved addresses; deterministic for a seed. --split writes a second file (B) with that share of rows.",
    )
    generator.add_argument("count", type=int, help="number of records")
    generator.add_argument("--seed", type=int, default=0)
    generator.add_argument("--out", type=Path, required=True, help="file A")
    generator.add_argument("--split", type=Path, help="file B: gets --split-share of the records")
    generator.add_argument("--split-share", type=float, default=0.3)
    generator.set_defaults(func=_generate)

    estimator = commands.add_parser(
        "estimate",
        help="estimate the match model (m/u by EM) from the identity database's trait records and store it",
        description="Reads every stored trait record (NEXTBEST_IDENTITY_DATABASE_URL, NEXTBEST_DATABASE_URL or "
        "NEXTBEST_DATA_DIR/identity.db), fits term frequencies, u from random pairs and m by EM, and stores the "
        "parameters; identity services load the newest at start-up.",
    )
    estimator.set_defaults(func=_estimate)

    merge = commands.add_parser("merge", help="merge customer MERGED into SURVIVOR (audited; undo with unmerge)")
    merge.add_argument("survivor")
    merge.add_argument("merged")
    unmerge = commands.add_parser("unmerge", help="undo a merge: what it moved goes back (audited)")
    unmerge.add_argument("merge_id")
    forget = commands.add_parser("forget", help="erase a customer's identifiers, traits and consents (audited)")
    forget.add_argument("customer_id")
    for steward, func in ((merge, _merge), (unmerge, _unmerge), (forget, _forget)):
        steward.add_argument("--reason", required=True, help="why (kept in the audit; no customer PII)")
        steward.add_argument("--actor", required=True, help="who decides (kept in the audit)")
        steward.add_argument("--target", help="identity host:port (default: NEXTBEST_HOST and NEXTBEST_IDENTITY_PORT)")
        steward.set_defaults(func=func)
    lineage = commands.add_parser(
        "lineage", help="the journal of committed merges, unmerges and erasures (what the profile follows)"
    )
    lineage.add_argument("--after", type=int, default=0, help="only entries after this sequence number")
    lineage.add_argument("--limit", type=int, default=100, help="entries to list (at most 1,000)")
    lineage.add_argument("--target", help="identity host:port (default: NEXTBEST_HOST and NEXTBEST_IDENTITY_PORT)")
    lineage.set_defaults(func=_lineage)


def _fail(message: str) -> int:
    print(f"nextbest identity: {message}", file=sys.stderr)
    return 1


async def _link(args: argparse.Namespace) -> int:
    if not 0 < args.threshold < 1:
        return _fail("--threshold must be between 0 and 1")
    try:
        mapping = ColumnMapping.parse(args.mapping, args.config, args.id_column)
        started = time.perf_counter()
        files = [load(args.a, mapping, args.truth)]
        if args.b is not None:
            files.append(load(args.b, mapping, args.truth))
    except MappingError as exc:
        return _fail(str(exc))
    ids = [record_id for file in files for record_id in file.ids]
    if len(set(ids)) != len(ids):
        return _fail("record ids are not unique (across both files)")
    loaded = time.perf_counter()
    if args.online:
        labels = await _resolve_online(args.online, files, args.concurrency)
        facts = f"online via {args.online}"
    else:
        traits = [record for file in files for record in file.traits]
        result = link(traits, threshold=args.threshold)
        labels = _customer_ids(result, ids)
        facts = (
            f"{result.candidate_pairs} candidate pairs, {result.linked_pairs} linked, "
            f"prior {result.model.prior:.2e}, EM iterations {result.em_iterations}"
        )
        if result.skipped_blocks:
            facts += f", skipped oversized blocks {', '.join(result.skipped_blocks[:5])}"
    finished = time.perf_counter()
    _write(args.out, ids, labels)
    unreadable = sum(file.unreadable for file in files)
    print(
        f"linked {len(ids)} records into {len(set(labels))} customers in {finished - loaded:.1f}s "
        f"(reading {loaded - started:.1f}s; {facts}); wrote {args.out}"
    )
    if unreadable:
        print(f"{unreadable} unreadable values were treated as missing")
    if len(files) == 2:
        a_customers = set(labels[: len(files[0].ids)])
        joined = sum(1 for label in labels[len(files[0].ids) :] if label in a_customers)
        print(f"B records linked to a customer of A: {joined} of {len(files[1].ids)}")
    if args.truth:
        _print_score(labels, [truth for file in files for truth in file.truth])
    return 0


def _customer_ids(result: LinkResult, ids: list[str]) -> list[str]:
    """Each cluster is named after its first record: stable for a given input."""
    return [f"cust-{ids[label]}" for label in result.clusters]


def _write(path: Path, ids: list[str], labels: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("record_id", "customer_id"))
        writer.writerows(zip(ids, labels, strict=True))


def _print_score(labels: list[str], truth: list[str]) -> None:
    score = pairwise_score(labels, truth)
    print(
        f"pairwise precision {score.precision:.4f} recall {score.recall:.4f} F1 {score.f1:.4f} "
        f"(true pairs {score.true_pairs}, predicted {score.predicted_pairs}, correct {score.correct_pairs}); "
        f"clusters predicted {score.predicted_clusters}, true {score.true_clusters}"
    )


def _generate(args: argparse.Namespace) -> int:
    if args.count < 1:
        return _fail("count must be at least 1")
    rows = generate(args.count, args.seed)
    if args.split is None:
        write_csv(args.out, rows)
        print(f"wrote {len(rows)} records of {len({row['entity_id'] for row in rows})} people to {args.out}")
        return 0
    cut = int(len(rows) * (1 - args.split_share))
    write_csv(args.out, rows[:cut])
    write_csv(args.split, rows[cut:])
    print(f"wrote {cut} records to {args.out} and {len(rows) - cut} to {args.split}")
    return 0


async def _estimate(args: argparse.Namespace) -> int:
    from libs.db import create_engine
    from services.identity.estimation import estimate_and_store
    from services.identity.storage import SqlIdentityRepository

    settings = load_settings(IdentitySettings)
    engine = create_engine(settings.resolved_database_url)
    try:
        model = await estimate_and_store(SqlIdentityRepository(engine), utcnow())
    finally:
        await engine.dispose()
    if model is None:
        return _fail("too few stored trait records to estimate from; the defaults stay in use")
    print(f"estimated the match model from {model.fitted_on} trait records (prior {model.prior:.2e}); stored")
    return 0


async def _resolve_online(target: str, files: list[LoadedFile], concurrency: int) -> list[str]:
    """Every row of A, then every row of B, through Resolve(traits, create_if_missing): as a call centre would.

    Phone numbers are not sent: as identifiers they would match deterministically, and a family's shared phone
    would then decide instead of the person traits this mode measures.
    """
    import asyncio

    from nextbest.identity.v1 import identity_service_pb2 as pb
    from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc

    from cli.client import cli_channel

    channel = cli_channel(target)
    stub = pb_grpc.IdentityServiceStub(channel)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def resolve(raw: dict[str, str]) -> str:
        traits = pb.PersonTraits(**{k: v for k, v in raw.items() if k != "phone" and v})
        async with gate:
            reply = await stub.Resolve(pb.ResolveRequest(traits=traits, create_if_missing=True), timeout=10)
        return reply.customer_id

    labels: list[str] = []
    try:
        for file in files:  # A completely before B: B is looked up against a service loaded with A
            labels += await asyncio.gather(*(resolve(raw) for raw in file.raw))
    finally:
        await channel.close()
    return labels


async def _steward_call(args: argparse.Namespace, method: str, request) -> int:
    import grpc
    import orjson
    from google.protobuf import json_format
    from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc

    from cli.client import cli_channel, service_target

    channel = cli_channel(args.target or service_target("identity"))
    try:
        reply = await getattr(pb_grpc.IdentityServiceStub(channel), method)(request, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return _fail(f"{exc.code().name}: {exc.details()}")
    finally:
        await channel.close()
    as_dict = json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    print(orjson.dumps(as_dict, option=orjson.OPT_INDENT_2).decode())
    return 0


async def _merge(args: argparse.Namespace) -> int:
    from nextbest.identity.v1 import identity_service_pb2 as pb

    request = pb.MergeRequest(
        survivor_customer_id=args.survivor, merged_customer_id=args.merged, reason=args.reason, actor=args.actor
    )
    return await _steward_call(args, "Merge", request)


async def _unmerge(args: argparse.Namespace) -> int:
    from nextbest.identity.v1 import identity_service_pb2 as pb

    return await _steward_call(
        args, "Unmerge", pb.UnmergeRequest(merge_id=args.merge_id, reason=args.reason, actor=args.actor)
    )


async def _forget(args: argparse.Namespace) -> int:
    from nextbest.identity.v1 import identity_service_pb2 as pb

    return await _steward_call(
        args, "Forget", pb.ForgetRequest(customer_id=args.customer_id, reason=args.reason, actor=args.actor)
    )


async def _lineage(args: argparse.Namespace) -> int:
    from nextbest.identity.v1 import identity_service_pb2 as pb

    return await _steward_call(args, "ListLineage", pb.ListLineageRequest(after_seq=args.after, limit=args.limit))
