"""`nextbest profile ...`: a customer's profile and the profile tools.

- `nextbest profile show CUSTOMER_ID [--features]` shows a profile;
- `nextbest profile import --orders F --lines F --returns F --ledger F [--map KIND.FIELD=COLUMN ...]` loads ERP
  exports (idempotent: deterministic event ids; resumable with --checkpoint);
- `nextbest profile replay FILE [--speed N]` streams historical transactions as purchase events (StreamEvents);
- `nextbest profile refold CUSTOMER_ID ... | --all` rebuilds profiles from their stored events;
- `nextbest profile segments apply FILE | list | members NAME | history NAME | rollback NAME VERSION | delete NAME`
  manages segments.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc

from libs.protoconv import from_timestamp
from services.profile.importer import MappingError, Report, erp_events, parse_mapping, transaction_events


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """A channel to the profile service (`--target`, else the settings), with TLS when NEXTBEST_TLS_* are set."""
    from cli.client import cli_channel, service_target

    return cli_channel(args.target or service_target("profile"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """`nextbest profile show | import | replay | refold | segments`."""
    from cli.client import cmd_profile, common_options

    parser = subparsers.add_parser(
        "profile", help="a customer's profile; profile tools: import, replay, refold, segments",
        description=__doc__.split("\n\n")[0],
    )
    commands = parser.add_subparsers(dest="profile_command", required=True, metavar="COMMAND")
    p = commands.add_parser("show", parents=[common_options()], help="a customer's profile")
    p.add_argument("customer_id")
    p.add_argument("--features", action="store_true", help="include the feature vector")
    p.set_defaults(func=cmd_profile)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", help="host:port of the profile service (default: from settings)")
    common.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds (default 30)")

    p = commands.add_parser(
        "import",
        parents=[common],
        help="import ERP exports (orders, order lines, returns, ledger entries) from CSV",
        description="Each order becomes a purchase event (with its lines), each return id a return event, each "
        "ledger entry a refund or write-off event. Event ids come from the files' keys, so re-importing changes "
        "nothing. Customers are named by customer_id or email/phone/loyalty_card/account_id columns (resolved "
        "through identity). Fields default to columns of the same name; --map renames them.",
    )
    for kind in ("orders", "lines", "returns", "ledger"):
        p.add_argument(f"--{kind}", type=Path, help=f"the {kind} CSV file")
    p.add_argument("--map", action="append", default=[], metavar="KIND.FIELD=COLUMN",
                   help="column of a field, e.g. orders.ordered_at=OrderDate (repeatable)")
    p.add_argument("--mapping", type=Path, help="a TOML file of [kind] field = \"Column\" tables")
    p.add_argument("--batch", type=int, default=500, help="events per IngestEvents call (default 500)")
    p.add_argument("--checkpoint", type=Path,
                   help="progress file: an interrupted import started again with it skips what was acknowledged")
    p.add_argument("--source", default="erp", help="the events' source (default erp)")
    p.set_defaults(func=_import)

    p = commands.add_parser(
        "replay",
        parents=[common],
        help="stream a CSV of historical transactions as purchase events",
        description="Columns: customer_id (or email/phone/...), date, amount and optionally order_id, sku, "
        "quantity, channel, store_id. Rows are sent in date order over StreamEvents.",
    )
    p.add_argument("path", type=Path)
    p.add_argument("--speed", type=_speed, default=0.0,
                   help="history seconds per wall-clock second (86400 = a day per second); 0 = as fast as possible")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN", help="column of a field")
    p.add_argument("--batch", type=int, default=200, help="most events per stream message (default 200)")
    p.set_defaults(func=_replay)

    p = commands.add_parser(
        "refold", parents=[common], help="rebuild profiles from their stored events",
        description="Rebuilds the named customers' profiles, or every profile with --all (a page per call), from "
                    "their stored events: after a release adds a trait that needs history or corrects one.",
    )
    p.add_argument("customer_ids", nargs="*", metavar="CUSTOMER_ID")
    p.add_argument("--all", action="store_true", help="every customer, a page at a time")
    p.add_argument("--page-size", type=int, default=0, help="customers per call with --all (default 200)")
    p.set_defaults(func=_refold)

    p = commands.add_parser("segments", help="manage segments")
    segment_commands = p.add_subparsers(dest="segments_command", required=True, metavar="COMMAND")
    s = segment_commands.add_parser(
        "apply", parents=[common], help="put every segment of a TOML file",
        description='The file holds [[segments]] tables with name, expression and optional description.',
    )
    s.add_argument("path", type=Path)
    s.set_defaults(func=_segments_apply)
    s = segment_commands.add_parser("list", parents=[common], help="list segment definitions")
    s.set_defaults(func=_segments_list)
    s = segment_commands.add_parser("members", parents=[common], help="list a segment's members")
    s.add_argument("name")
    s.add_argument("--page-size", type=int, default=500)
    s.set_defaults(func=_segments_members)
    s = segment_commands.add_parser("history", parents=[common], help="list every version of a segment")
    s.add_argument("name")
    s.set_defaults(func=_segments_history)
    s = segment_commands.add_parser(
        "rollback", parents=[common], help="put an earlier version's definition again (as a new version)",
        description="Puts the expression and description of VERSION as the segment's next version, only if "
                    "nobody changed the segment meanwhile; a deleted segment is restored.",
    )
    s.add_argument("name")
    s.add_argument("version", type=int)
    s.set_defaults(func=_segments_rollback)
    s = segment_commands.add_parser("delete", parents=[common], help="delete a segment")
    s.add_argument("name")
    s.set_defaults(func=_segments_delete)


# --- import ---------------------------------------------------------------------------------------------------


def _load_mapping(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    mapping: dict[str, dict[str, str]] = {}
    if args.mapping:
        for kind, table in tomllib.loads(args.mapping.read_text()).items():
            mapping[kind] = {str(name): str(column) for name, column in table.items()}
    for kind, table in parse_mapping(args.map).items():
        mapping.setdefault(kind, {}).update(table)
    return mapping


def _digest(events: Sequence[pb.Event]) -> str:
    digest = hashlib.sha256()
    for event in events:
        digest.update(event.SerializeToString(deterministic=True))
    return digest.hexdigest()


async def _import(args: argparse.Namespace) -> int:
    files = {kind: getattr(args, kind) for kind in ("orders", "lines", "returns", "ledger") if getattr(args, kind)}
    if not files:
        print("nextbest profile import: give at least one of --orders, --returns, --ledger", file=sys.stderr)
        return 2
    try:
        report = erp_events(files, _load_mapping(args), source=args.source)
    except (MappingError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"nextbest profile import: {exc}", file=sys.stderr)
        return 1
    return await _send(args, report)


async def _send(args: argparse.Namespace, report: Report) -> int:
    """Send the events in batches; with a checkpoint, skip what an earlier run of the same files had acknowledged."""
    for error in report.errors:
        print(f"skipped {error}", file=sys.stderr)
    events = report.events
    digest = _digest(events)
    done = 0
    if args.checkpoint and args.checkpoint.exists():
        saved = json.loads(args.checkpoint.read_text())
        if saved.get("digest") == digest:
            done = int(saved.get("acknowledged", 0))
            print(f"resuming after {done} acknowledged events")
    accepted = duplicates = rejected = 0
    async with _channel(args) as channel:
        stub = pb_grpc.ProfileServiceStub(channel)
        for start in range(done, len(events), max(1, args.batch)):
            batch = events[start : start + max(1, args.batch)]
            try:
                reply = await stub.IngestEvents(pb.IngestEventsRequest(events=batch), timeout=args.timeout)
            except grpc.aio.AioRpcError as exc:
                print(f"nextbest profile: {exc.code().name}: {exc.details()} (run again to resume)", file=sys.stderr)
                return 1
            accepted += reply.accepted
            duplicates += reply.duplicates
            rejected += len(reply.rejected)
            for r in reply.rejected:
                print(f"rejected {r.event_id}: {r.field}: {r.reason}", file=sys.stderr)
            if args.checkpoint:
                args.checkpoint.write_text(json.dumps({"digest": digest, "acknowledged": start + len(batch)}))
    print(f"{len(events)} events: accepted {accepted}, duplicates {duplicates}, rejected {rejected}; "
          f"{len(report.errors)} rows skipped")
    return 1 if report.errors or rejected else 0


# --- replay ---------------------------------------------------------------------------------------------------


async def paced(events: Sequence[pb.Event], speed: float, batch: int) -> AsyncIterator[pb.StreamEventsRequest]:
    """Messages of up to `batch` events, each event sent when its (scaled) history time comes."""
    if not events:
        return
    origin = from_timestamp(events[0].occurred_at)
    started = time.monotonic()
    pending: list[pb.Event] = []
    for event in events:
        if speed > 0:
            due = started + (from_timestamp(event.occurred_at) - origin).total_seconds() / speed
            wait = due - time.monotonic()
            if wait > 0:
                if pending:
                    yield pb.StreamEventsRequest(events=pending)
                    pending = []
                await asyncio.sleep(wait)
        pending.append(event)
        if len(pending) >= batch:
            yield pb.StreamEventsRequest(events=pending)
            pending = []
    if pending:
        yield pb.StreamEventsRequest(events=pending)


def _speed(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if not speed >= 0 or speed == float("inf"):  # `not >=` also refuses NaN
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number >= 0 (0 = as fast as possible)")
    return speed


async def _replay(args: argparse.Namespace) -> int:
    try:
        mapping = {}
        for pair in args.map:
            name, sep, column = pair.partition("=")
            if not sep:
                raise MappingError(f"--map {pair!r}: expected FIELD=COLUMN")
            mapping[name.strip()] = column.strip()
        report = transaction_events(args.path, mapping)
    except (MappingError, OSError) as exc:
        print(f"nextbest profile replay: {exc}", file=sys.stderr)
        return 1
    for error in report.errors:
        print(f"skipped {error}", file=sys.stderr)
    async with _channel(args) as channel:
        stub = pb_grpc.ProfileServiceStub(channel)
        try:
            reply = await stub.StreamEvents(paced(report.events, args.speed, max(1, args.batch)))
        except grpc.aio.AioRpcError as exc:
            print(f"nextbest profile replay: {exc.code().name}: {exc.details()} (run again: nothing is applied "
                  "twice)", file=sys.stderr)
            return 1
    for r in reply.rejected:
        print(f"rejected {r.event_id}: {r.field}: {r.reason}", file=sys.stderr)
    print(f"replayed {len(report.events)} transactions: accepted {reply.accepted}, duplicates {reply.duplicates}, "
          f"rejected {len(reply.rejected)}; {len(report.errors)} rows skipped")
    return 1 if report.errors or reply.rejected else 0


# --- refold ---------------------------------------------------------------------------------------------------


async def _refold(args: argparse.Namespace) -> int:
    async with _channel(args) as channel:
        stub = pb_grpc.ProfileServiceStub(channel)
        refolded, token = 0, ""
        try:
            while True:
                reply = await stub.RefoldProfiles(
                    pb.RefoldProfilesRequest(customer_ids=args.customer_ids, all=args.all, page_size=args.page_size,
                                             page_token=token),
                    timeout=args.timeout,
                )
                refolded += reply.refolded
                if not (token := reply.next_page_token):
                    break
                print(f"{refolded} profiles rebuilt so far", file=sys.stderr)
        except grpc.aio.AioRpcError as exc:
            print(f"nextbest profile refold: {exc.code().name}: {exc.details()} ({refolded} rebuilt before; run "
                  "again: a rebuild is the same every time)", file=sys.stderr)
            return 1
    print(f"profiles rebuilt from their events: {refolded}")
    return 0


# --- segments -------------------------------------------------------------------------------------------------


async def _segments_call(args: argparse.Namespace, call) -> int:
    async with _channel(args) as channel:
        try:
            return await call(pb_grpc.ProfileServiceStub(channel)) or 0
        except grpc.aio.AioRpcError as exc:
            print(f"nextbest profile segments: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1


async def _segments_apply(args: argparse.Namespace) -> int:
    try:
        entries = tomllib.loads(args.path.read_text()).get("segments", [])
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"nextbest profile segments apply: {exc}", file=sys.stderr)
        return 1

    async def put(stub: pb_grpc.ProfileServiceStub) -> None:
        stored = {s.name: s for s in (await stub.ListSegments(pb.ListSegmentsRequest(), timeout=args.timeout)).segments}
        for entry in entries:
            segment = pb.Segment(name=entry.get("name", ""), expression=entry.get("expression", ""),
                                 description=entry.get("description", ""))
            current = stored.get(segment.name)
            if current is not None and (current.expression, current.description) == (segment.expression,
                                                                                    segment.description):
                # A put would bump the version and re-evaluate every customer for nothing.
                print(f"{segment.name} v{current.version}: unchanged")
                continue
            # Against the version listed: an edit made meanwhile fails the put instead of being overwritten.
            expected = current.version if current is not None else -1
            reply = await stub.PutSegment(pb.PutSegmentRequest(segment=segment, expected_version=expected),
                                          timeout=args.timeout)
            print(f"{reply.segment.name} v{reply.segment.version}: {reply.members} members")

    return await _segments_call(args, put)


async def _segments_list(args: argparse.Namespace) -> int:
    async def show(stub: pb_grpc.ProfileServiceStub) -> None:
        reply = await stub.ListSegments(pb.ListSegmentsRequest(), timeout=args.timeout)
        for segment in reply.segments:
            print(f"{segment.name} v{segment.version}: {segment.expression}  # {segment.description}")

    return await _segments_call(args, show)


async def _segments_members(args: argparse.Namespace) -> int:
    async def show(stub: pb_grpc.ProfileServiceStub) -> None:
        token = ""
        while True:
            page = await stub.ListSegmentMembers(
                pb.ListSegmentMembersRequest(segment=args.name, page_size=args.page_size, page_token=token),
                timeout=args.timeout,
            )
            for member in page.members:
                print(f"{member.customer_id}\t{from_timestamp(member.since).isoformat()}")
            token = page.next_page_token
            if not token:
                return

    return await _segments_call(args, show)


async def _versions(stub: pb_grpc.ProfileServiceStub, name: str, timeout: float) -> tuple[list[pb.Segment], int]:
    """Every version of the segment, newest first (all pages), and the version in force (0: deleted)."""
    versions: list[pb.Segment] = []
    token = ""
    while True:
        reply = await stub.ListSegmentVersions(pb.ListSegmentVersionsRequest(name=name, page_token=token),
                                               timeout=timeout)
        versions.extend(reply.versions)
        token = reply.next_page_token
        if not token:
            return versions, reply.current_version


async def _segments_history(args: argparse.Namespace) -> int:
    async def show(stub: pb_grpc.ProfileServiceStub) -> None:
        versions, current_version = await _versions(stub, args.name, args.timeout)
        if not current_version:
            print(f"{args.name}: deleted")
        for segment in versions:
            current = "  (current)" if segment.version == current_version else ""
            print(f"v{segment.version} {from_timestamp(segment.updated_at).isoformat()}: {segment.expression}  "
                  f"# {segment.description}{current}")

    return await _segments_call(args, show)


async def _segments_rollback(args: argparse.Namespace) -> int:
    async def rollback(stub: pb_grpc.ProfileServiceStub) -> int:
        versions, current_version = await _versions(stub, args.name, args.timeout)
        wanted = next((s for s in versions if s.version == args.version), None)
        if wanted is None:
            print(f"nextbest profile segments rollback: {args.name} has no version {args.version}", file=sys.stderr)
            return 1
        if wanted.version == current_version:
            print(f"{args.name} v{wanted.version}: unchanged (the current version)")
            return 0
        segment = pb.Segment(name=wanted.name, expression=wanted.expression, description=wanted.description)
        # A put made since the history was read fails rather than being silently replaced (-1: "still deleted").
        reply = await stub.PutSegment(
            pb.PutSegmentRequest(segment=segment, expected_version=current_version or -1),
            timeout=args.timeout,
        )
        print(f"{reply.segment.name} v{reply.segment.version}: the definition of v{args.version}, "
              f"{reply.members} members")
        return 0

    return await _segments_call(args, rollback)


async def _segments_delete(args: argparse.Namespace) -> int:
    async def delete(stub: pb_grpc.ProfileServiceStub) -> None:
        await stub.DeleteSegment(pb.DeleteSegmentRequest(name=args.name), timeout=args.timeout)
        print(f"deleted {args.name}")

    return await _segments_call(args, delete)
