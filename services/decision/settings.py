"""Settings of the decision service (prefix NEXTBEST_DECISION_): dependency targets, budgets, policy knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings

WeightName = Literal["long_dwell", "pays_for_shipping", "cart_match", "pays_full_price"]


class StrategyOverrides(BaseModel):
    """Strategy B of the A/B test: what it changes in the arbitration policy; unset fields stay as strategy A's."""

    model_config = ConfigDict(extra="forbid")

    exploration_policy: Literal["epsilon_greedy", "thompson"] | None = None
    exploration_epsilon: float | None = Field(None, ge=0, le=1)
    exploration_top: int | None = Field(None, ge=1, le=20)
    min_priority: float | None = Field(None, ge=0)
    thompson_strength: float | None = Field(None, gt=0)
    #: Context weights (domain/arbitration.py) to replace, by name.
    weights: dict[WeightName, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)


class DecisionSettings(ServiceSettings):
    """The orchestrator's settings; budgets apply only when the client sends no deadline of its own."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_DECISION_", extra="ignore")

    service_name: str = "decision"
    port: int = Field(50050, ge=0, le=65535, description="gRPC port of the decision service.")

    identity_target: str = Field("127.0.0.1:50051", description="host:port of the identity service.")
    profile_target: str = Field("127.0.0.1:50052", description="host:port of the profile service.")
    scoring_target: str = Field("127.0.0.1:50053", description="host:port of the scoring service.")
    inventory_target: str = Field("127.0.0.1:50054", description="host:port of the inventory service.")
    catalogue_dir: Path | None = Field(
        None, description="Folder with offers.json and products.json; unset means <data_dir>/catalogue."
    )
    catalogue_poll_seconds: float = Field(
        5,
        ge=0,
        description="How often the catalogue folder is checked for edits; a new valid version is swapped in without "
        "dropping requests, an invalid one is logged and ignored; 0 turns hot reload off.",
    )

    budget_web_ms: float = Field(100, gt=0, description="Decide budget for the web when the client sends no deadline.")
    budget_pos_ms: float = Field(250, gt=0, description="Decide budget for POS when the client sends no deadline.")
    budget_call_center_ms: float = Field(
        250, gt=0, description="Decide/PrioritizeCall budget for the call centre when the client sends no deadline."
    )
    reserve_ms: float = Field(
        25, ge=0, description="Time kept back from the dependency calls for arbitration and persisting the decision."
    )

    max_offers_web: int = Field(3, ge=1, le=20, description="Offers returned to the web when the request says 0.")
    max_offers_pos: int = Field(3, ge=1, le=20, description="Offers returned to POS when the request says 0.")
    max_offers_call_center: int = Field(1, ge=1, le=20, description="Offers returned to the call centre by default.")

    warehouse_location_id: str = Field("DC1", description="Location whose stock backs web and call-centre offers.")
    min_priority: float = Field(0.0, ge=0, description="Offers scoring below this are dropped.")
    long_dwell_seconds: float = Field(
        30, gt=0, description="Dwell on a product at or above which its offers get the long-dwell weight."
    )

    contact_ignore_after_seconds: float = Field(
        3600,
        gt=0,
        description="A shown offer with no click, accept, decline or purchase after this long counts as ignored "
        "(offers' contact_policy.max_ignores).",
    )

    attribution_window_seconds: float = Field(
        7 * 24 * 3600,
        gt=0,
        description="GetReport counts an outcome (accept, revenue, uplift) towards its decision only when it occurred "
        "within this long after the decision; a request's attribution_window overrides it. RecordOutcome still "
        "records and forwards later outcomes.",
    )

    exploration_epsilon: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Epsilon-greedy exploration: probability that the first slot goes to a uniformly drawn top "
        "candidate; every shown offer's exact probability is logged.",
    )
    exploration_top: int = Field(5, ge=1, le=20, description="How many of the best candidates exploration draws from.")
    exploration_policy: Literal["epsilon_greedy", "thompson"] = Field(
        "epsilon_greedy",
        description="How the first slot explores: epsilon_greedy (see exploration_epsilon) or thompson (Thompson "
        "sampling over the top candidates; each offer's exact showing probability is computed and logged).",
    )
    thompson_strength: float = Field(
        20,
        gt=0,
        description="Thompson sampling's confidence in the model: a propensity p is drawn from "
        "Beta(1 + strength*p, 1 + strength*(1-p)); larger explores less.",
    )

    control_share: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="Share of known customers, assigned by a hash of their id, in the control group (no arbitration).",
    )
    control_offer: Literal["random", "none"] = Field(
        "random", description="What the control group gets: one eligible offer drawn at random, or none."
    )
    control_salt: str = Field(
        "control-1", min_length=1, description="Salt of the control assignment hash; change it to re-draw the groups."
    )

    strategy_b_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="A/B test of arbitration strategies: share of treatment customers, by a hash of their id, served "
        "by strategy B (arm treatment_b, recorded on each decision); 0 turns the test off.",
    )
    strategy_b: StrategyOverrides | None = Field(
        None,
        description='Strategy B as JSON overrides of the arbitration settings, e.g. {"exploration_policy": "thompson", '
        '"weights": {"long_dwell": 2.0}}; keys exploration_policy, exploration_epsilon, exploration_top, min_priority, '
        "thompson_strength, weights; unset means B is A (an A/A test of the assignment).",
    )
    strategy_salt: str = Field(
        "strategy-1", min_length=1, description="Salt of the strategy assignment hash; change it to re-draw the arms."
    )

    returned_within_days: int = Field(
        30,
        ge=0,
        le=90,
        description="Offers of a product or category the customer returned within this many days are removed "
        "(trace code recently_returned; service actions stay) and PrioritizeCall tells the agent not to offer them; "
        "0 turns it off; at most 90, the profile's window of returned items.",
    )
    buy_now_hold_seconds: int = Field(
        900,
        ge=60,
        le=86_400,
        description="How long the web's buy-now express checkout (a scarce offer kept for a loyal or high-value "
        "customer) is held for them: CartPrefill.hold, advisory to the shop.",
    )

    cache_max_customers: int = Field(
        20_000,
        ge=0,
        description="Customers whose resolution, profile and consent are cached (invalidated by the owners' change "
        "feeds); 0 turns the caches off.",
    )
    cache_max_age_seconds: float = Field(
        60, gt=0, description="Oldest a cached profile may get (time-relative features drift without events)."
    )
    stock_cache_max_entries: int = Field(
        50_000,
        ge=0,
        description="Stock entries (a product at a location, or a SKU everywhere) cached, invalidated by inventory's "
        "change feed; 0 turns the cache off.",
    )
    stock_cache_max_age_seconds: float = Field(
        60,
        gt=0,
        description="Oldest a cached stock entry may get: the bound for writers the feed cannot see (on SQLite, an "
        "import run by another process while the mesh runs).",
    )

    outbox_batch_size: int = Field(100, ge=1, le=1000, description="Outcomes forwarded to the profile per call.")
    outbox_interval_seconds: float = Field(
        1.0, gt=0, description="How often pending outcomes are forwarded (and retried after a failure)."
    )
    lineage_poll_seconds: float = Field(
        5.0,
        ge=0,
        description="How often identity's lineage journal (merges, unmerges, erasures) is read; a Forget pseudonymises "
        "the customer's decisions and outcomes (and those of customers merged into it); 0 turns following off.",
    )

    @property
    def resolved_catalogue_dir(self) -> Path:
        return self.catalogue_dir if self.catalogue_dir is not None else self.common.data_dir / "catalogue"
