"""Calling any RPC of a service generically from its descriptor, and judging the status that comes back.

A fuzzed request may be refused, but only with a status that says what is wrong with it. INTERNAL or UNKNOWN
means an unhandled error, DEADLINE_EXCEEDED on a small request means a hang, UNAVAILABLE means the server died,
UNIMPLEMENTED means the method is missing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import reject

#: Per-call deadline: every request here is small, so running out of it means the server hung.
DEADLINE_SECONDS = 5.0
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ABORTED,
    }
)


#: The start of INVALID_ARGUMENT details that name the field: an identifier, then a path step or the reason.
FIELD_FIRST = re.compile(r"[A-Za-z_]\w*[.\[:]")


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def request_class(method: MethodDescriptor) -> type[Message]:
    return GetMessageClass(method.input_type)


def _deserializer(method: MethodDescriptor):
    return GetMessageClass(method.output_type).FromString


async def _status_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def call_unary(channel: grpc.aio.Channel, method: MethodDescriptor, request: Message | bytes):
    """Send one request (a message, or raw bytes as they are) and return (status code, details)."""
    raw = isinstance(request, bytes)
    multicallable = channel.unary_unary(
        path(method),
        request_serializer=None if raw else type(request).SerializeToString,
        response_deserializer=None if raw else _deserializer(method),
    )
    return await _status_of(multicallable(request, timeout=DEADLINE_SECONDS))


#: What the grpc.aio client reports when its write fails because the server already ended the call: it overwrites
#: the server's status (grpc/grpc#36066). Only a client-streaming call whose server answered early can get it.
LOST_STATUS = (grpc.StatusCode.INTERNAL, "Internal error from Core")


async def call_client_stream(channel: grpc.aio.Channel, method: MethodDescriptor, requests: Sequence[Message | bytes]):
    """Stream the requests (stopping once the server has answered) and return (status code, details); LOST_STATUS
    when the server answered before the end of the stream and the client library lost its status."""
    raw = any(isinstance(r, bytes) for r in requests)
    call = channel.stream_unary(
        path(method),
        request_serializer=None if raw else request_class(method).SerializeToString,
        response_deserializer=None if raw else _deserializer(method),
    )(timeout=DEADLINE_SECONDS)
    for request in requests:
        if call.done():
            break  # the server answered (refused) before the end of the stream: what it said is the status
        try:
            await call.write(request)
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            break
    else:
        try:
            await call.done_writing()
        except grpc.aio.AioRpcError:
            pass
    return await _status_of(call)


async def call_server_stream(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message | bytes, *, first_only: bool = False
):
    """Read the whole stream (or just its first message, for endless streams) and return the final status."""
    raw = isinstance(request, bytes)
    call = channel.unary_stream(
        path(method),
        request_serializer=None if raw else type(request).SerializeToString,
        response_deserializer=None if raw else _deserializer(method),
    )(request, timeout=None if first_only else DEADLINE_SECONDS)
    try:
        if first_only:
            # An endless stream (a change feed): a good request gets its first message, a bad one a status.
            try:
                await asyncio.wait_for(call.read(), DEADLINE_SECONDS)
            except TimeoutError:
                return grpc.StatusCode.DEADLINE_EXCEEDED, "no first message"
            call.cancel()
            return grpc.StatusCode.OK, ""
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def check(outcome: tuple[grpc.StatusCode, str], request: object) -> None:
    if outcome == LOST_STATUS:
        reject()  # inconclusive, not a pass: the server's status is unknowable (see LOST_STATUS)
    code, details = outcome
    shown = repr(request)[:2000]
    assert code in ALLOWED, f"{code.name}: {details!r} for request {shown}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The house rule: "<field path>: <reason>", e.g. "candidates[1].offer_id: is required".
        assert FIELD_FIRST.match(details), f"INVALID_ARGUMENT without a field: {details!r} for request {shown}"
