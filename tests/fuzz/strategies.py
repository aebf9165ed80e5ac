"""Hypothesis strategies for protobuf requests, built from the message DESCRIPTORS.

`messages(descriptor)` walks the fields of any message (scalars, enums, repeated, maps, oneofs, nested messages,
Timestamp and Duration), so a field added to a contract is fuzzed without touching these tests. Values lean on
edge cases: empty, very long and unusual unicode strings, integer extremes, NaN and infinities, unknown enum
numbers, far past and future timestamps. `mutations(examples)` starts from realistic requests and changes one
field, because purely random messages rarely get past the first validation and into the deep code.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = FieldDescriptor
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
#: 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the valid range of a Timestamp, and just outside it.
TIMESTAMP_EDGES = (-62135596800, 253402300799, -62135596801, 253402300800, 0, -1, 1_700_000_000)

_EDGE_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",  # right-to-left override
    "مرحبا",
    "👩‍👩‍👧‍👦",  # emoji joined by zero-width joiners
    "e\u0301",  # combining accent
    "\ufeff",
    "\u200b",
    "\n\r\t",
    "../../etc/passwd",
    "' OR 1=1 --",
    "%s%n",
    "c_" + "0" * 20,
    "x" * 20_000,
    "é" * 5_000,  # 2-byte UTF-8
)
_UNKNOWN_ENUM_NUMBERS = (-1, 99, INT32[0], INT32[1])
#: Nested messages deeper than this are left unset, so recursive types stay finite.
_MAX_DEPTH = 3

texts = st.one_of(
    st.sampled_from(_EDGE_STRINGS),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
)
doubles = st.one_of(
    st.sampled_from((0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, -1.0)),
    st.floats(allow_nan=True, allow_infinity=True),
)
_SCALARS = {
    F.TYPE_DOUBLE: doubles,
    F.TYPE_FLOAT: st.floats(width=32) | st.sampled_from((float("nan"), float("inf"), -0.0)),
    F.TYPE_BOOL: st.booleans(),
    F.TYPE_STRING: texts,
    F.TYPE_BYTES: st.binary(max_size=64),
}
for _types, (_low, _high) in (
    ((F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32), INT32),
    ((F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64), INT64),
    ((F.TYPE_UINT32, F.TYPE_FIXED32), UINT32),
    ((F.TYPE_UINT64, F.TYPE_FIXED64), UINT64),
):
    for _type in _types:
        _SCALARS[_type] = st.one_of(
            st.sampled_from(sorted({0, -1 if _low else 1, 1, _low, _high, _high - 1})),
            st.integers(-1000, 1000) if _low else st.integers(0, 1000),
            st.integers(_low, _high),
        )


def _enums(field: FieldDescriptor) -> st.SearchStrategy[int]:
    return st.sampled_from([v.number for v in field.enum_type.values]) | st.sampled_from(_UNKNOWN_ENUM_NUMBERS)


def values(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    """One value of the field's element type (a message for message fields)."""
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == F.TYPE_ENUM:
        return _enums(field)
    return _SCALARS[field.type]


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _well_known(descriptor: Descriptor) -> st.SearchStrategy[Message] | None:
    """Realistic extremes for Timestamp and Duration (the generic walk gives the unrealistic ones)."""
    cls = GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        seconds = st.sampled_from(TIMESTAMP_EDGES) | st.integers(*INT64)
    elif descriptor.full_name == "google.protobuf.Duration":
        seconds = st.sampled_from((0, -1, 1, 315_576_000_000, -315_576_000_000)) | st.integers(*INT64)
    else:
        return None
    nanos = st.sampled_from((0, 999_999_999, -1, 10**9, -(10**9))) | st.integers(*INT32)
    return st.builds(cls, seconds=seconds, nanos=nanos)


def set_value(message: Message, field: FieldDescriptor, value: object) -> None:
    """Assign a drawn value (element list for repeated fields, dict for maps) to a field of `message`."""
    target = getattr(message, field.name)
    if _is_map(field):
        for key, item in value.items():  # type: ignore[attr-defined]
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif _is_repeated(field):
        if field.type == F.TYPE_MESSAGE:
            for item in value:  # type: ignore[attr-defined]
                target.add().CopyFrom(item)
        else:
            target.extend(value)  # type: ignore[arg-type]
    elif field.type == F.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    """What a whole field can hold: a scalar/message, a list (incl. empty and long) or a map."""
    if _is_map(field):
        key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(values(key_field, depth), values(value_field, depth), max_size=6)
    if _is_repeated(field):
        short = st.lists(values(field, depth), max_size=5 if depth == 0 else 2)
        if depth > 0:
            return short
        # Long lists repeat one flat element (no nested messages): cheap to build, and what size limits must catch.
        flat = values(field, _MAX_DEPTH - 1)
        long = st.tuples(flat, st.sampled_from((100, 300))).map(lambda drawn: [drawn[0]] * drawn[1])
        return short | long
    return values(field, depth)


@st.composite
def _draw_message(draw, descriptor: Descriptor, depth: int) -> Message:
    message = GetMessageClass(descriptor)()
    chosen_oneofs = {
        oneof.name: draw(st.sampled_from([None, *oneof.fields]))
        for oneof in descriptor.oneofs
        if not oneof.name.startswith("_")  # proto3 `optional` is a synthetic oneof of one field
    }
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name in chosen_oneofs and chosen_oneofs[oneof.name] is not field:
            continue
        if depth >= _MAX_DEPTH and field.type == F.TYPE_MESSAGE:
            continue  # recursive messages stay finite
        if not draw(st.booleans()):
            continue
        set_value(message, field, draw(field_values(field, depth)))
    return message


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of the descriptor's type: every field present or not, with edge-leaning values."""
    generic = _draw_message(descriptor, depth)
    well_known = _well_known(descriptor)
    return generic if well_known is None else st.one_of(well_known, generic)


def _slots(message: Message, depth: int = 0) -> list[tuple[Message, FieldDescriptor]]:
    """Every (message, field) in a message tree that a mutation may change: all fields of every set message."""
    found = [(message, field) for field in message.DESCRIPTOR.fields]
    if depth < 3:
        for field, value in message.ListFields():
            if field.type != F.TYPE_MESSAGE or _is_map(field):
                continue
            for child in value if _is_repeated(field) else [value]:
                found.extend(_slots(child, depth + 1))
    return found


@st.composite
def _mutate(draw, examples: tuple[Message, ...]) -> Message:
    message = draw(st.sampled_from(examples))
    mutated = type(message)()
    mutated.CopyFrom(message)
    parent, field = draw(st.sampled_from(_slots(mutated)))
    parent.ClearField(field.name)
    if draw(st.integers(0, 9)):  # mostly a new value, sometimes the field just goes missing
        set_value(parent, field, draw(field_values(field, 1)))
    return mutated


def mutations(examples: list[Message]) -> st.SearchStrategy[Message]:
    """One of the valid `examples` with one field (anywhere in it) cleared or replaced by a fuzzed value."""
    return _mutate(tuple(examples))


def requests(descriptor: Descriptor, examples: list[Message]) -> st.SearchStrategy[Message]:
    """Mostly mutated valid requests (they reach deep code), plus fully generated ones and the examples as sent."""
    if not examples:
        return messages(descriptor)
    return st.one_of(mutations(examples), messages(descriptor), st.sampled_from(examples))
