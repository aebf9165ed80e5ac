"""Segments: named CEL expressions over a customer's traits, compiled once and evaluated per changed customer.

An expression reads traits by their contract names as top-level variables, e.g.
`spend_90d > 500.0 && return_rate < 0.2 && "shoes" in favourite_categories`. CEL is side-effect free and cannot
reach anything but the variables it is given (never `eval`). Comparisons mix int and double freely, arithmetic does
not (`total_spend + 1` is an error: write `1.0`): money and rates are doubles, counts ints. `loyalty_tier` is the tier's name ("gold"); timestamps are not exposed,
use `days_since_last_purchase` (-1 when never).

Model-based traits (written back by scoring as `model_prediction` events) are read as `model.<use case>.<field>`,
fields `value` (double), `model_name` and `model_version` (strings), e.g. `model.churn_risk.value > 0.6`. A
customer not scored for a use case has no entry: test it with `has(model.churn_risk)`; reading a missing one
means "not a member". Only that form is accepted (no `model[...]`, no `size(model)`), so every use case an
expression reads is known when it is put.

Each compiled segment knows the variables it reads (model use cases each count as one, `model.churn_risk`). After
a batch is folded, a customer's segments are re-evaluated only if a variable they read changed value in the batch
(a snapshot before the batch against one after, at the same `now`), if they read a time-dependent trait (whose
value moves with the clock alone, e.g. `days_since_last_purchase`), or if the customer is new. Time-dependent
segments also move without events: `ProfileService.sweep_segments` re-evaluates them periodically.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
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
_HIDDEN = {"last_purchase_at", "last_login_at", "last_viewed", "cart", "preferences", "recently_returned"}
#: The model traits' variable, and the fields of one use case's entry.
MODEL = "model"
MODEL_FIELDS = ("value", "model_name", "model_version")
#: String literals (skipped by the `model` scan) and `model` used as a variable (not as a field: `x.model`).
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_MODEL_USE = re.compile(r"(?<![\w.])model\b")
_MODEL_REFERENCE = re.compile(r"model\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)(?:\s*\.\s*([A-Za-z_][A-Za-z0-9_]*))?")
#: Traits whose value depends on the events only, never on the clock. Any other variable (a trait added later
#: included, until it is listed here) counts as time-dependent: re-evaluated on every event and by the sweep.
_STATIC = frozenset(
    {
        "total_spend", "order_count", "average_order_value", "return_rate", "return_count", "return_method_mix",
        "full_price_share", "shipping_paid_share", "loyalty_tier", "loyalty_points", "open_service_issues",
        "service_contacts", "net_value", "return_rate_by_count", "favourite_categories", "favourite_brands",
        "favourite_sizes", "favourite_colours", "preferred_channel", "searches", "recent_searches",
        "cart_abandonments", "checkouts", "store_visits", "last_store_id", "logins", "ledger_refunds", "write_offs",
        "cart_items", "cart_value", "preferred_sizes", "preferred_colours", "shipping_method",
    }
)  # fmt: skip


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


def segment_variables(state: ProfileState, now: datetime, names: Iterable[str]) -> dict[str, Any]:
    """The values of the segment variables `names` (trait names and `model.<use case>`) for `state` as of `now`;
    a model use case the customer was not scored for is None."""
    traits: list[str] = []
    values: dict[str, Any] = {}
    for name in names:
        if name.startswith("model."):
            trait = state.model_traits.get(name[6:])
            values[name] = (
                None
                if trait is None
                else {"value": trait.value, "model_name": trait.model_name, "model_version": trait.model_version}
            )
        else:
            traits.append(name)
    if traits:
        values.update(trait_variables(state.traits(now), traits))
    return values


#: Every variable an expression may use.
VARIABLES: frozenset[str] = frozenset(
    {f.name for f in fields(Traits) if f.name not in _HIDDEN}
    | {"cart_items", "cart_value", "preferred_sizes", "preferred_colours", "shipping_method", MODEL}
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
    #: What the expression reads: trait names and `model.<use case>` (see `segment_variables`).
    variables: frozenset[str]
    #: Whether membership can change with the clock alone (it reads a time-dependent trait).
    time_dependent: bool = False

    def matches(self, variables: Mapping[str, Any]) -> bool:
        """Whether the customer is a member; an evaluation error (e.g. a division by zero) means not a member."""
        activation: dict[str, Any] = {}
        for name in self.variables:
            if name.startswith("model."):
                model = activation.setdefault(MODEL, {})
                if variables.get(name) is not None:
                    model[name[6:]] = variables[name]
            else:
                activation[name] = variables[name]
        try:
            return self.program.execute(activation) is True
        except KeyError:
            return False  # e.g. `model.churn_risk.value` of a customer never scored for churn risk
        except (ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:
            log.warning("segment %s failed to evaluate: %s", self.definition.name, exc)
            return False


def check_name(name: str, field: str = "segment.name") -> None:
    """INVALID_ARGUMENT naming `field` (the request's field holding the name) unless `name` is a valid one."""
    if not SEGMENT_NAME.match(name):
        raise InvalidArgument(field, "1-64 lower-case letters, digits, '_' or '-', starting alphanumeric")


def model_use_cases(expression: str) -> frozenset[str]:
    """The model use cases an expression reads; InvalidArgument unless each use of `model` is
    `model.<use case>` or `model.<use case>.<field>` with a known field."""
    code = _STRING.sub('""', expression)
    use_cases: set[str] = set()
    for found in _MODEL_USE.finditer(code):
        reference = _MODEL_REFERENCE.match(code, found.start())
        if reference is None:
            raise InvalidArgument(
                "segment.expression", "read model traits as model.<use case>.<field>, e.g. model.churn_risk.value"
            )
        use_case, field = reference.groups()
        if field is not None and field not in MODEL_FIELDS:
            raise InvalidArgument(
                "segment.expression",
                f"unknown model trait field {field!r} of model.{use_case}; known: {', '.join(MODEL_FIELDS)}",
            )
        use_cases.add(use_case)
    return frozenset(use_cases)


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
    use_cases = model_use_cases(expression) if MODEL in used else frozenset()
    variables = (used - {MODEL}) | {f"model.{use_case}" for use_case in use_cases}
    compiled = CompiledSegment(
        definition, program, variables, time_dependent=any(name not in _STATIC for name in used - {MODEL})
    )
    sample = segment_variables(ProfileState(), definition.updated_at, variables)
    # A model trait's entry as scored, so that a field's type is checked too (an unscored one is a KeyError).
    sample.update({name: {"value": 0.0, "model_name": "", "model_version": ""} for name in variables if "." in name})
    activation = {name: value for name, value in sample.items() if "." not in name}
    if use_cases:
        activation[MODEL] = {name[6:]: value for name, value in sample.items() if "." in name}
    try:
        result = program.execute(activation)
    except ZeroDivisionError:
        return compiled  # data-dependent: fine once there is data
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidArgument("segment.expression", f"does not evaluate: {exc}") from None
    if not isinstance(result, bool):
        raise InvalidArgument("segment.expression", f"must yield a bool, got {type(result).__name__}")
    return compiled


_UNKNOWN = object()


class SegmentRegistry:
    """The compiled segments of this process, by name."""

    def __init__(self) -> None:
        self._segments: dict[str, CompiledSegment] = {}
        self._variables: frozenset[str] = frozenset()
        self._time_dependent: tuple[CompiledSegment, ...] = ()
        #: Evaluations per segment name since start (how much work re-evaluation does; tests read it).
        self.evaluations: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._segments)

    def __contains__(self, name: str) -> bool:
        return name in self._segments

    def get(self, name: str) -> CompiledSegment | None:
        return self._segments.get(name)

    def definitions(self) -> list[SegmentDefinition]:
        return [self._segments[name].definition for name in sorted(self._segments)]

    @property
    def time_dependent(self) -> bool:
        """Whether some segment's membership can move with the clock alone (what `sweep_segments` is for)."""
        return bool(self._time_dependent)

    def put(self, segment: CompiledSegment) -> None:
        self._segments[segment.definition.name] = segment
        self._reindex()

    def remove(self, name: str) -> None:
        self._segments.pop(name, None)
        self._reindex()

    def _reindex(self) -> None:
        self._variables = frozenset().union(*(segment.variables for segment in self._segments.values()))
        self._time_dependent = tuple(segment for segment in self._segments.values() if segment.time_dependent)

    def snapshot(self, state: ProfileState, now: datetime) -> dict[str, Any]:
        """The values of every variable some segment reads: taken before a batch is folded, so that `evaluate`
        can skip the segments whose inputs the batch left unchanged."""
        return segment_variables(state, now, self._variables)

    def evaluate(
        self,
        state: ProfileState,
        now: datetime,
        only: str | None = None,
        *,
        before: Mapping[str, Any] | None = None,
        time_only: bool = False,
    ) -> tuple[set[str], set[str]]:
        """Update `state.segments` (since = `now` for new members); returns the names entered and left.

        Evaluates every segment, or: `only` the one named; with `before` (a `snapshot` from before this batch)
        only those reading a variable whose value changed since, or a time-dependent one; with `time_only` only
        the time-dependent ones. Memberships of segments this registry does not know are left alone (a replica
        may not have loaded a new one yet; a deleted segment's members are removed by its delete)."""
        if only is not None:
            segments: Iterable[CompiledSegment] = [self._segments[only]]
        elif time_only:
            segments = self._time_dependent
        else:
            segments = self._segments.values()
        after = segment_variables(state, now, frozenset().union(*(segment.variables for segment in segments)))
        if before is not None:
            changed = {name for name, value in after.items() if before.get(name, _UNKNOWN) != value}
            segments = [s for s in segments if s.time_dependent or not changed.isdisjoint(s.variables)]
        entered: set[str] = set()
        left: set[str] = set()
        for segment in segments:
            name = segment.definition.name
            self.evaluations[name] += 1
            member = segment.matches(after)
            if member and name not in state.segments:
                state.segments[name] = now
                entered.add(name)
            elif not member and name in state.segments:
                del state.segments[name]
                left.add(name)
        return entered, left
