"""Every public RPC of every service, fuzzed: generated, mutated and garbage requests all get a proper status.

Methods are found from the service descriptors, so a new RPC is fuzzed as soon as it is in a contract (with
generated requests; add valid examples to tests/fuzz/targets.py to reach its deeper code too).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.harness import call_client_stream, call_server_stream, call_unary, check
from tests.fuzz.strategies import requests
from tests.fuzz.targets import SERVICES

#: Long-list requests have long reprs on purpose; hypothesis warns when it builds one.
pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore:Generating overly large repr")]
#: Server streams that never end by design (change feeds): a good request gets its first message, then we leave.
ENDLESS = {"WatchChanges"}


def cases(*, client_streaming: bool | None = None, server_streaming: bool | None = None) -> list:
    """(service name, method) params of one streaming shape (None: any), named like "identity.Resolve"."""
    return [
        pytest.param(name, method, id=f"{name}.{method.name}")
        for name, service in SERVICES.items()
        for method in service.methods
        if client_streaming in (None, method.client_streaming) and server_streaming in (None, method.server_streaming)
    ]


@pytest.mark.parametrize(("name", "method"), cases(client_streaming=False, server_streaming=False))
@given(data=st.data())
async def test_unary_rpc_answers_fuzzed_requests_with_a_proper_status(targets, name, method, data):
    target = await targets(name)
    request = data.draw(requests(method.input_type, target.examples.get(method.name, [])), label="request")
    check(await call_unary(target.channel, method, request), request)


@pytest.mark.parametrize(("name", "method"), cases(client_streaming=True, server_streaming=False))
@given(data=st.data())
async def test_client_stream_answers_fuzzed_messages_with_a_proper_status(targets, name, method, data):
    target = await targets(name)
    one = requests(method.input_type, target.examples.get(method.name, []))
    stream = data.draw(st.lists(one, max_size=4), label="stream")
    check(await call_client_stream(target.channel, method, stream), stream)


@pytest.mark.parametrize(("name", "method"), cases(client_streaming=False, server_streaming=True))
@given(data=st.data())
async def test_server_stream_answers_fuzzed_requests_with_a_proper_status(targets, name, method, data):
    target = await targets(name)
    request = data.draw(requests(method.input_type, target.examples.get(method.name, [])), label="request")
    outcome = await call_server_stream(target.channel, method, request, first_only=method.name in ENDLESS)
    check(outcome, request)


@pytest.mark.parametrize(("name", "method"), cases())
@given(garbage=st.binary(max_size=256))
async def test_garbage_bytes_get_a_proper_status(targets, name, method, garbage):
    target = await targets(name)
    if method.client_streaming:
        outcome = await call_client_stream(target.channel, method, [garbage])
    elif method.server_streaming:
        outcome = await call_server_stream(target.channel, method, garbage, first_only=method.name in ENDLESS)
    else:
        outcome = await call_unary(target.channel, method, garbage)
    check(outcome, garbage)
