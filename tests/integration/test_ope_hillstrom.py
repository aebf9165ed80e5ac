"""`nextbest ope hillstrom` on the real Hillstrom e-mail experiment: each arm was randomised with probability 1/3, so
"everyone gets arm A" has an observable truth (the held-out customers who got A), and IPS and doubly robust must
agree with it within their intervals; the learned per-customer policy is estimated too."""

from __future__ import annotations

import math
import os

import numpy as np
import orjson
import pytest

from cli.main import main
from cli.ope import HILLSTROM_CSV
from services.decision.offline.hillstrom import ACTIONS, read_experiment

pytestmark = pytest.mark.integration

#: The published conversion rate of each arm over all 64,000 rows (SOURCE.txt next to the data).
PUBLISHED_CONVERSION = {"mens": 0.0125, "womens": 0.0088, "none": 0.0057}


@pytest.fixture(scope="module")
def hillstrom_csv():
    if not HILLSTROM_CSV.is_file():
        message = f"the shared Hillstrom data is missing: {HILLSTROM_CSV}"
        if os.environ.get("CI") or os.environ.get("NEXTBEST_REQUIRE_POSTGRES") == "1":  # CI has it: never skip there
            pytest.fail(message)
        pytest.skip(message)
    return HILLSTROM_CSV


def test_the_file_reads_as_the_published_experiment(hillstrom_csv):
    experiment = read_experiment(hillstrom_csv, "conversion")
    assert experiment.customers.shape[0] == 64000 and np.isfinite(experiment.customers).all()
    counts = np.bincount(experiment.arms, minlength=3)
    assert dict(zip(ACTIONS, counts.tolist(), strict=True)) == {"mens": 21307, "womens": 21387, "none": 21306}
    for arm, action in enumerate(ACTIONS):
        assert experiment.rewards[experiment.arms == arm].mean() == pytest.approx(PUBLISHED_CONVERSION[action],
                                                                                  abs=5e-5)


def test_estimates_of_the_fixed_arms_match_what_was_observed(hillstrom_csv, capsys):
    assert main(["ope", "hillstrom", "--csv", str(hillstrom_csv), "--reward", "conversion", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["train_rows"] == report["held_out_rows"] == 32000
    policies = {p["policy"]: p for p in report["policies"]}
    for action in ACTIONS:
        fixed = policies[f"everyone {action}"]
        observed = fixed["observed"]
        assert observed["value"] == pytest.approx(PUBLISHED_CONVERSION[action], abs=0.002)  # half of the rows
        for estimator in ("ips", "dr"):
            estimate = fixed["evaluation"][estimator]
            # The estimate lies within the observed arm's interval, and the observed mean within the estimate's.
            assert observed["low"] <= estimate["value"] <= observed["high"]
            assert estimate["low"] <= observed["value"] <= estimate["high"]
        assert fixed["ips_covers_observed"] and fixed["dr_covers_observed"]
    # The experiment itself is the uniform random policy: every weight is 1, IPS is the held-out mean exactly.
    uniform = policies["uniform random"]
    assert uniform["evaluation"]["ips"]["value"] == pytest.approx(uniform["observed"]["value"])
    assert uniform["evaluation"]["max_weight"] == pytest.approx(1.0)

    learned = policies["learned per customer"]
    assert learned["observed"] is None and sum(report["learned_choices"].values()) == 32000
    for estimator in ("ips", "snips", "dr"):
        estimate = learned["evaluation"][estimator]
        assert all(math.isfinite(estimate[k]) for k in ("value", "low", "high"))
        assert 0 < estimate["low"] <= estimate["value"] <= estimate["high"] < 1


def test_a_malformed_file_is_refused_naming_the_line(tmp_path, capsys):
    bad = tmp_path / "hillstrom.csv"
    bad.write_text(
        "recency,history_segment,history,mens,womens,zip_code,newbie,channel,segment,visit,conversion,spend\n"
        "10,2) $100 - $200,142.44,1,0,Surburban,0,Phone,Womens E-Mail,0,0,0\n"
        "6,3) $200 - $350,329.08,1,1,Rural,1,Web,Kids E-Mail,0,0,0\n"
    )
    assert main(["ope", "hillstrom", "--csv", str(bad)]) == 2
    error = capsys.readouterr().err
    assert "line 3" in error and "'Kids E-Mail'" in error
    assert main(["ope", "hillstrom", "--csv", str(tmp_path / "absent.csv")]) == 2
