"""Segments: named CEL expressions over a customer's traits, compiled once and evaluated per changed customer.

An expression reads traits by their contract names as top-level variables, e.g.
`spend_90d > 500.0 && return_rate < 0.2 && "shoes" in favourite_categories`. CEL is side-effect free and cannot
reach anything but the variables it is given (never `eval`). Comparisons mix int and double freely, arithmetic does
not (`total_spend + 1` is an error: write `1.0`): money and rates are doubles, counts ints. `loyalty_tier` is the tier's name ("gold"); timestamps are not exposed,
use `days_since_last_purchase` (-1 when never).

Only the traits an expression references are converted for it, and only for the customers of the batch being
applied, so evaluation costs a few microseconds per customer and segment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import cel

from libs.errors import InvalidArgument
from services.profile.domain.events import LOYALTY_TIERS
from services.profile.domain.state import ProfileState, Traits

log = logging.getLogger(__name__)

SEGMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_EXPRESSION_LENGTH = 4096
#: Traits not exposed to expressions (structured values with no obvious CEL form).
_HIDDEN = {"last_purchase_at", "last_login_at", "last_viewed", "cart", "preferences"}


def _convert(name: str, value: Any) -> Any:
    if name == "loyalty_tier":
        return LOYALTY_TIERS[value]
    if isinstance(value, tuple):
        return list(value)
    return value


def trait_variables(traits: Traits, names: Iterable[str]) -> dict[str, Any]:
    """The CEL variables `names` (trait names, plus `cart_items`, `cart_value`, `preferred_sizes`) for `traits`."""
    variables: dict[str, Any] = {}
    for name in names:
        match name:
            case "cart_items":
                variables[name] = sum(line.quantity for line in traits.cart)
            case "cart_value":
                variables[name] = float(sum(line.quantity * line.unit_price for line in traits.cart))
            case "preferred_sizes":
                variables[name] = list(traits.preferences.sizes)
            case "preferred_colours":
                variables[name] = list(traits.preferences.colours)
            case "shipping_method":
                variables[name] = traits.preferences.shipping_method
            case _:
                variables[name] = _convert(name, getattr(traits, name))
    return variables


#: Every variable an expression may use.
VARIABLES: frozenset[str] = frozenset(
    {f.name for f in fields(Traits) if f.name not in _HIDDEN}
    | {"cart_items", "cart_value", "preferred_sizes", "preferred_colours", "shipping_method"}
)


@dataclass(frozen=True, slots=True)
class SegmentDefinition:
    name: str
    expression: str
    description: str
    version: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CompiledSegment:
    definition: SegmentDefinition
    program: Any  # cel.Program
    variables: frozenset[str]

    def matches(self, variables: Mapping[str, Any]) -> bool:
        """Whether the customer is a member; an evaluation error (e.g. a division by zero) means not a member."""
        try:
            return self.program.execute({name: variables[name] for name in self.variables}) is True
        except (ValueError, TypeError, KeyError, ZeroDivisionError, OverflowError) as exc:
            log.warning("segment %s failed to evaluate: %s", self.definition.name, exc)
            return False


def check_name(name: str) -> None:
    if not SEGMENT_NAME.match(name):
        raise InvalidArgument("segment.name", "1-64 lower-case letters, digits, '_' or '-', starting alphanumeric")


def compile_segment(definition: SegmentDefinition) -> CompiledSegment:
    """Compile and type-check a definition against an empty profile; InvalidArgument("segment.expression") when
    it does not parse, reads unknown variables or does not yield a bool."""
    check_name(definition.name)
    expression = definition.expression
    if not expression.strip():
        raise InvalidArgument("segment.expression", "required")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise InvalidArgument("segment.expression", f"at most {MAX_EXPRESSION_LENGTH} characters")
    try:
        program = cel.compile(expression)
    except ValueError as exc:
        raise InvalidArgument("segment.expression", str(exc)) from None
    used = frozenset(program.references()["variables"])
    unknown = sorted(used - VARIABLES)
    if unknown:
        raise InvalidArgument(
            "segment.expression", f"unknown variables {', '.join(unknown)}; known: {', '.join(sorted(VARIABLES))}"
        )
    compiled = CompiledSegment(definition, program, used)
    sample = trait_variables(ProfileState().traits(definition.updated_at), used)
    try:
        result = program.execute(sample)
    except ZeroDivisionError:
        return compiled  # data-dependent: fine once there is data
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidArgument("segment.expression", f"does not evaluate: {exc}") from None
    if not isinstance(result, bool):
        raise InvalidArgument("segment.expression", f"must yield a bool, got {type(result).__name__}")
    return compiled


class SegmentRegistry:
    """The compiled segments of this process, by name."""

    def __init__(self) -> None:
        self._segments: dict[str, CompiledSegment] = {}
        self._variables: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self._segments)

    def __contains__(self, name: str) -> bool:
        return name in self._segments

    def get(self, name: str) -> CompiledSegment | None:
        return self._segments.get(name)

    def definitions(self) -> list[SegmentDefinition]:
        return [self._segments[name].definition for name in sorted(self._segments)]

    def put(self, segment: CompiledSegment) -> None:
        self._segments[segment.definition.name] = segment
        self._reindex()

    def remove(self, name: str) -> None:
        self._segments.pop(name, None)
        self._reindex()

    def _reindex(self) -> None:
        self._variables = frozenset().union(*(segment.variables for segment in self._segments.values()))

    def evaluate(self, state: ProfileState, now: datetime, only: str | None = None) -> tuple[set[str], set[str]]:
        """Update `state.segments` (since = `now` for new members) for all segments (or only the one named);
        returns the names entered and left."""
        segments = [self._segments[only]] if only else list(self._segments.values())
        variables = trait_variables(state.traits(now), segments[0].variables if only else self._variables)
        entered: set[str] = set()
        left: set[str] = set()
        for segment in segments:
            name = segment.definition.name
            member = segment.matches(variables)
            if member and name not in state.segments:
                state.segments[name] = now
                entered.add(name)
            elif not member and name in state.segments:
                del state.segments[name]
                left.add(name)
        if not only:
            for name in [name for name in state.segments if name not in self._segments]:
                del state.segments[name]  # a deleted segment
                left.add(name)
        return entered, left
