"""The bench's results: phase records, ratios to the baseline, the maximum sustainable rate, the targets, the
JSON document, the printed tables and the PNG chart.

JSON (`schema: "nextbest-bench/1"`), top level:
- `run`: run_id, mode, started_at, finished_at, seconds, machine (cpus, python, platform)
- `config`: every knob of the run (rates, steps, durations, mix, budgets, ingest rate, ports, ...)
- `dataset`: backend, customers, seed, seeded_dir, run_dir (the run's fresh copy), database (the run's,
  password hidden), reused, seed_seconds, seeded_at, copy_seconds, postgres_settings (server version and the
  settings that change what is measured, e.g. autovacuum; None on SQLite)
- `method`: how latency, percentiles, throughput and the maximum sustainable rate are defined
- `phases`: list of phase records — target ("mesh"|"baseline"), shape ("open"|"closed"), offered_rate or
  concurrency, duration_s, sent, `decisions` and `channels.<web|pos|call_center|outcome>` summaries (count, ok,
  errors, error_rate, error_codes, degraded, degraded_rate, over_budget, throughput, latency_ms{p50,p90,p99,p999,
  max,mean}, send_lag_ms{p99,max}), `processes.<name>` {cpu_seconds, cpu_percent, peak_rss_mb, rss_mb},
  `ingest` (mesh phases) and, on mesh phases, `vs_baseline.<decisions|channel>` {p50,p90,p99,p999,throughput}
- `max_sustainable`: definition, mesh / baseline {rate, concurrency}, ratio
- `ingest`: offered and achieved rates (over the run; `achieved_rate_sustained` over the `sustained_phases` whose
  decisions were sustained), totals, failed batches, `verification` {accepted, present, duplicates,
  missing, unacknowledged_present, ok}
- `memory`: per mesh service peak RSS over the whole run (startup included) and the seeded customer count
- `faults` (when run): see cli.bench.faults.analyse — decisions/outcomes totals, answers_over_budget, faults
  [{name, service, started, returned, recovery_s, settled_s, degraded_after_return, relapses, recovered, pass}],
  timeline (1-s buckets: t, sent, ok, errors, degraded, degraded_scoring, degraded_inventory, over_budget, p50_ms,
  p99_ms), processes (as in phases; the scoring process measured is the one that was stopped)
- `targets`: [{name, target, measured, pass (true/false/null = not measured), note}]
- `files`: json and png paths
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from .driver import IngestStats, PhaseResult
from .procfs import Usage
from .stats import CHANNELS, DECISION_CHANNELS, PERCENTILES, latency_summary, summarize

SCHEMA = "nextbest-bench/1"
SERVICES = ("decision", "identity", "profile", "scoring", "inventory")
METHOD = {
    "latency": "open loop: from the scheduled send instant to the answer (no coordinated omission); closed loop: "
               "from the send to the answer",
    "percentiles": "nearest rank: the value at rank ceil(p/100*n) of the sorted latencies of every completed call, "
                   "failed calls included",
    "throughput": "successful answers per second of the phase (first send to last answer)",
    "degraded_rate": "degraded answers / successful answers",
    "over_budget": "successful answers slower (from the actual send) than the channel's client deadline",
    "cpu_percent": "utime+stime from /proc per phase, % of one core; `machine` is every process on all cores "
                   "(/proc/stat), `postgres` every process named postgres (lower bound: ended backends are missed)",
    "peak_rss_mb": "VmHWM from /proc, reset at the start of each phase where the kernel allows (clear_refs)",
}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)) or math.isnan(b):
        return None
    return round(a / b, 2)


def phase_record(target: str, shape: str, level: float, result: PhaseResult, usage: Mapping[str, Usage],
                 budgets: Mapping[str, float], ingest: IngestStats | None = None) -> dict:
    duration = result.elapsed
    record = {
        "target": target,
        "shape": shape,
        ("offered_rate" if shape == "open" else "concurrency"): level,
        "duration_s": round(duration, 3),
        "sent": len(result.samples),
        "decisions": summarize(result.samples, DECISION_CHANNELS, duration, dict(budgets)),
        "channels": {c: summarize(result.samples, (c,), duration, dict(budgets)) for c in CHANNELS},
        "processes": {name: asdict(u) for name, u in usage.items()},
    }
    if ingest is not None:
        record["ingest"] = ingest_record(ingest)
    return record


def ingest_record(stats: IngestStats) -> dict:
    return {
        "offered_rate": stats.target_rate,
        "achieved_rate": round(stats.accepted / stats.elapsed, 1) if stats.elapsed else 0.0,
        "batch_size": stats.batch_size,
        "batches": stats.batches,
        "batches_ok": stats.batches_ok,
        "skipped_batches": stats.skipped,
        "events_sent": stats.events_sent,
        "accepted": stats.accepted,
        "duplicates_reported": stats.duplicates,
        "rejected": stats.rejected,
        "failed_batches": len(stats.failed),
        "failed_codes": sorted({code for _, _, code in stats.failed}),
        "batch_latency_ms": latency_summary(stats.latencies),
        "elapsed_s": round(stats.elapsed, 3),
        "first_rejections": stats.first_rejections,
    }


def add_ratios(phases: Sequence[dict]) -> None:
    """Give every mesh phase its ratio to the baseline phase of the same shape and level."""
    def key(p: dict) -> tuple:
        return p["shape"], p.get("offered_rate", p.get("concurrency"))

    baseline = {key(p): p for p in phases if p["target"] == "baseline"}
    for phase in phases:
        base = baseline.get(key(phase))
        if phase["target"] != "mesh" or base is None:
            continue
        ratios = {}
        for name in ("decisions", *DECISION_CHANNELS):
            mesh_s = phase["decisions"] if name == "decisions" else phase["channels"][name]
            base_s = base["decisions"] if name == "decisions" else base["channels"][name]
            ratios[name] = {p: _ratio(mesh_s["latency_ms"][p], base_s["latency_ms"][p]) for p in PERCENTILES}
            ratios[name]["throughput"] = _ratio(mesh_s["throughput"], base_s["throughput"])
        phase["vs_baseline"] = ratios


def sustained(phase: dict, p99_bound_ms: float, max_degraded: float) -> bool:
    """The phase's decisions were served: some were sent, none failed, at most max_degraded degraded, p99 in bound."""
    d = phase["decisions"]
    return (d["count"] > 0 and d["errors"] == 0 and d["degraded_rate"] <= max_degraded
            and d["latency_ms"]["p99"] <= p99_bound_ms)


def max_sustainable(phases: Sequence[dict], p99_bound_ms: float, max_degraded: float) -> dict:
    """The highest closed-loop decision throughput of a `sustained` phase, for the mesh and the baseline."""
    result: dict = {
        "definition": f"highest closed-loop decision throughput with 0 errors, degraded rate <= "
                      f"{max_degraded:.0%} and p99 (all decisions) <= {p99_bound_ms:g} ms",
    }
    for target in ("mesh", "baseline"):
        best = None
        for phase in phases:
            d = phase["decisions"]
            if phase["target"] != target or phase["shape"] != "closed":
                continue
            if sustained(phase, p99_bound_ms, max_degraded):
                if best is None or d["throughput"] > best["rate"]:
                    best = {"rate": d["throughput"], "concurrency": phase["concurrency"]}
        result[target] = best
    mesh, base = result["mesh"], result["baseline"]
    result["ratio"] = _ratio(mesh["rate"], base["rate"]) if mesh and base else None
    return result


def ingest_summary(phases: Sequence[dict], verification: dict | None, p99_bound_ms: float,
                   max_degraded: float) -> dict:
    """The ingest stream over the whole run (what the target is judged on) and over the phases whose decisions
    were `sustained` (beside a decision load the mesh serves, rather than one that overloads the machine)."""
    records = [p["ingest"] for p in phases if "ingest" in p]
    accepted = sum(r["accepted"] for r in records)
    elapsed = sum(r["elapsed_s"] for r in records)
    served = [p["ingest"] for p in phases if "ingest" in p and sustained(p, p99_bound_ms, max_degraded)]
    served_elapsed = sum(r["elapsed_s"] for r in served)
    return {
        "offered_rate": records[0]["offered_rate"] if records else 0.0,
        "achieved_rate": round(accepted / elapsed, 1) if elapsed else 0.0,
        "sustained_phases": len(served),
        "achieved_rate_sustained": (round(sum(r["accepted"] for r in served) / served_elapsed, 1)
                                    if served_elapsed else None),
        "min_phase_rate": min((r["achieved_rate"] for r in records), default=0.0),
        "accepted": accepted,
        "batches": sum(r["batches"] for r in records),
        "failed_batches": sum(r["failed_batches"] for r in records),
        "skipped_batches": sum(r["skipped_batches"] for r in records),
        "rejected": sum(r["rejected"] for r in records),
        "elapsed_s": round(elapsed, 3),
        "verification": verification,
    }


def verification_record(accepted: int, duplicates_reported: int, counted: Mapping[str, int]) -> dict:
    """Accepted (acknowledged) events vs the rows holding this run's event ids in the profile database."""
    present = counted["rows"] - counted["from_unacknowledged_batches"]
    duplicates = counted["rows"] - counted["distinct_ids"] + duplicates_reported
    return {
        "accepted": accepted,
        "present": present,
        "duplicates": duplicates,
        "missing": max(0, accepted - present),
        "unacknowledged_present": counted["from_unacknowledged_batches"],
        "ok": present == accepted and duplicates == 0,
    }


def memory_summary(peaks: Mapping[str, float], customers: int) -> dict:
    return {"customers_seeded": customers, "peak_rss_mb": dict(peaks)}


def _find(phases: Sequence[dict], target: str, shape: str, level: float) -> dict | None:
    field = "offered_rate" if shape == "open" else "concurrency"
    return next((p for p in phases if p["target"] == target and p["shape"] == shape and p.get(field) == level), None)


def evaluate_targets(doc: dict) -> list[dict]:
    """PASS/FAIL (None = not measured in this run) of each target of issue 3."""
    phases, backend, targets = doc["phases"], doc["dataset"]["backend"], []
    at200 = _find(phases, "mesh", "open", 200)
    web = at200["channels"]["web"] if at200 else None
    targets.append({
        "name": "decide_web_latency_at_200",
        "target": "Decide web p99 <= 25 ms and p50 <= 8 ms at 200/s open loop, zero errors (PostgreSQL)",
        "measured": (f"p50 {web['latency_ms']['p50']:.1f} ms, p99 {web['latency_ms']['p99']:.1f} ms, "
                     f"{at200['decisions']['errors']} errors") if web else "200/s not in this run",
        "pass": (web["latency_ms"]["p99"] <= 25 and web["latency_ms"]["p50"] <= 8
                 and at200["decisions"]["errors"] == 0) if web else None,
        "note": "" if backend == "postgresql" else "measured on SQLite; the target is for PostgreSQL",
    })
    sustainable = doc.get("max_sustainable")
    ratio = sustainable["ratio"] if sustainable else None
    targets.append({
        "name": "max_sustainable_vs_baseline",
        "target": "max sustainable decision rate >= 50% of the baseline's",
        "measured": (f"mesh {sustainable['mesh']['rate'] if sustainable['mesh'] else 0:.0f}/s vs baseline "
                     f"{sustainable['baseline']['rate'] if sustainable['baseline'] else 0:.0f}/s"
                     + (f" ({ratio:.0%})" if ratio is not None else "")) if sustainable else "closed loop not run",
        "pass": (ratio is not None and ratio >= 0.5) if sustainable and sustainable["baseline"] else None,
        "note": "" if not sustainable or sustainable["mesh"] else "no closed-loop step of the mesh was sustainable",
    })
    ingest = doc.get("ingest")
    check = ingest["verification"] if ingest else None
    targets.append({
        "name": "ingest_rate_exactly_once",
        "target": "IngestEvents >= 5,000 events/s alongside the decision load, every accepted event present once",
        "measured": (f"{ingest['achieved_rate']:,.0f} events/s over the run (offered {ingest['offered_rate']:,.0f}"
                     f"{_while_sustained(ingest)}); accepted {check['accepted']:,}, present {check['present']:,}, "
                     f"duplicates {check['duplicates']}")
        if ingest and check else "no ingest stream in this run",
        "pass": (ingest["achieved_rate"] >= 5000 and check["ok"]) if ingest and check else None,
        "note": "" if not ingest or ingest["offered_rate"] >= 5000 else "offered below the target rate",
    })
    memory = doc.get("memory")
    if memory and memory["peak_rss_mb"]:
        worst = max(memory["peak_rss_mb"], key=memory["peak_rss_mb"].get)
        targets.append({
            "name": "rss_per_service",
            "target": "each service's peak RSS <= 300 MB (with 100,000 customers)",
            "measured": f"max {memory['peak_rss_mb'][worst]:.0f} MB ({worst}) with {memory['customers_seeded']:,} "
                        "customers seeded",
            "pass": all(v <= 300 for v in memory["peak_rss_mb"].values()),
            "note": "" if memory["customers_seeded"] >= 100_000 else "the real target needs --customers 100000",
        })
    faults = doc.get("faults")
    if faults:
        checks = faults["checks"]
        recoveries = ", ".join(
            f"{f['name']} {f['recovery_s']:.1f} s" if f["recovered"] else f"{f['name']} not recovered"
            for f in faults["faults"]
        )
        for name, target, measured in (
            ("faults_no_answer_over_budget", "no Decide answer later than its budget during faults",
             f"{faults['answers_over_budget']} over budget"),
            ("faults_no_errors", "no errors returned to clients during faults (degraded answers instead)",
             f"{faults['decisions']['errors']} errors, {faults['decisions']['degraded']} degraded"),
            ("faults_recovery_within_5s", "degraded rate back to 0 within 5 s of the dependency returning",
             recoveries),
        ):
            targets.append({"name": name, "target": target, "measured": measured,
                            "pass": checks[name.removeprefix("faults_")], "note": ""})
    return targets


def _while_sustained(ingest: dict) -> str:
    rate = ingest["achieved_rate_sustained"]
    if rate is None:
        return "; no phase's decisions were sustained"
    return f"; {rate:,.0f}/s in the {ingest['sustained_phases']} phases whose decisions were sustained"


# --------------------------------------------------------------------------------------------------- printing


def _fmt(value: float | None, width: int, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


def render(doc: dict) -> str:
    """The compact tables printed at the end of a run."""
    lines: list[str] = []
    run, ds = doc["run"], doc["dataset"]
    lines.append(f"NextBest bench — {run['mode']}, {ds['backend']}, {ds['customers']:,} customers "
                 f"({'reused' if ds['reused'] else 'freshly seeded'} data), run {run['run_id']}, "
                 f"{run['seconds']:.0f} s")
    if settings := ds.get("postgres_settings"):
        shown = ", ".join(f"{name} {settings[name]}" for name in ("autovacuum", "synchronous_commit", "shared_buffers")
                          if name in settings)
        note = ("; autovacuum is off here, so rewritten rows bloat their tables during the run as a production "
                "server would not let them" if settings.get("autovacuum") == "off" else "")
        lines.append(f"PostgreSQL {settings.get('server_version', '?')}: {shown}{note}")
    warmup = doc.get("config", {}).get("warmup_seconds")  # a figure includes cold caches unless the warm-up was long
    lines.append((f"warm-up {warmup:g} s per target; " if warmup is not None else "")
                 + "latency ms (open loop: from the scheduled send); nearest-rank percentiles; ratios mesh/baseline")
    phases = doc["phases"]
    for shape, title, field in (("open", "OPEN LOOP", "offered_rate"), ("closed", "CLOSED LOOP", "concurrency")):
        mesh_phases = [p for p in phases if p["target"] == "mesh" and p["shape"] == shape]
        if not mesh_phases:
            continue
        lines.append("")
        lines.append(f"{title:<25}|{'mesh':^50}|{'baseline':^21}|{'mesh/baseline':^19}")
        lines.append(f"{'rate' if shape == 'open' else 'conc':>5} {'channel':<12}{'n':>7} |{'thr/s':>7}{'p50':>7}"
                     f"{'p90':>7}{'p99':>7}{'p99.9':>7}{'err%':>7}{'degr%':>7} |{'thr/s':>7}{'p50':>7}{'p99':>7}"
                     f" |{'p50':>6}{'p99':>6}{'thr':>6}")
        for phase in mesh_phases:
            base = _find(phases, "baseline", shape, phase[field])
            for name in ("decisions", *DECISION_CHANNELS):
                m = phase["decisions"] if name == "decisions" else phase["channels"][name]
                b = (base["decisions"] if name == "decisions" else base["channels"][name]) if base else None
                r = phase.get("vs_baseline", {}).get(name, {})
                level = f"{phase[field]:g}" if name == "decisions" else ""
                lines.append(
                    f"{level:>5} {('all' if name == 'decisions' else name):<12}{m['count']:>7} |"
                    f"{_fmt(m['throughput'], 7)}{_fmt(m['latency_ms']['p50'], 7)}{_fmt(m['latency_ms']['p90'], 7)}"
                    f"{_fmt(m['latency_ms']['p99'], 7)}{_fmt(m['latency_ms']['p999'], 7)}"
                    f"{_fmt(100 * m['error_rate'], 7)}{_fmt(100 * m['degraded_rate'], 7)} |"
                    f"{_fmt(b['throughput'] if b else None, 7)}{_fmt(b['latency_ms']['p50'] if b else None, 7)}"
                    f"{_fmt(b['latency_ms']['p99'] if b else None, 7)} |"
                    f"{_fmt(r.get('p50'), 6)}{_fmt(r.get('p99'), 6)}{_fmt(r.get('throughput'), 6, 2)}"
                )
    sustainable = doc.get("max_sustainable")
    if sustainable:
        def rate(x: dict | None) -> str:
            return f"{x['rate']:.0f}/s at {x['concurrency']} workers" if x else "none"

        lines.append("")
        lines.append(f"MAX SUSTAINABLE ({sustainable['definition']}): mesh {rate(sustainable['mesh'])}, baseline "
                     f"{rate(sustainable['baseline'])}, ratio {_fmt(sustainable['ratio'], 4, 2).strip()}")
    lines.extend(_cpu_table(phases))
    ingest = doc.get("ingest")
    if ingest and ingest["batches"]:
        v = ingest["verification"] or {}
        lines.append("")
        lines.append(f"INGEST: offered {ingest['offered_rate']:,.0f} events/s, achieved {ingest['achieved_rate']:,.0f}/s "
                     f"(slowest phase {ingest['min_phase_rate']:,.0f}/s{_while_sustained(ingest)}); "
                     f"{ingest['failed_batches']} failed and "
                     f"{ingest['skipped_batches']} skipped batches; accepted {v.get('accepted', 0):,}, present "
                     f"{v.get('present', 0):,}, duplicates {v.get('duplicates', 0)}, missing {v.get('missing', 0)}"
                     f"{', unacknowledged but present ' + str(v['unacknowledged_present']) if v.get('unacknowledged_present') else ''}"
                     f" -> {'exactly once' if v.get('ok') else 'NOT exactly once'}")
    faults = doc.get("faults")
    if faults:
        d = faults["decisions"]
        lines.append("")
        lines.append(f"FAULTS at {doc['config']['fault_rate']:g}/s: {d['count']} decisions, {d['errors']} errors "
                     f"{d['error_codes'] or ''}, {faults['answers_over_budget']} over budget, {d['degraded']} degraded, "
                     f"p99 {d['latency_ms']['p99']:.1f} ms")
        for f in faults["faults"]:
            recovery = f"{f['recovery_s']:.2f} s" if f["recovered"] else "none (no clean second)"
            lines.append(f"  {f['name']:<26} t={f['started']:5.1f}s..{f['returned']:5.1f}s  recovery {recovery}; "
                         f"{f['degraded_after_return']} degraded after the return, {f['relapses']} after recovery, "
                         f"last at +{f['settled_s']:.1f} s  {'PASS' if f['pass'] else 'FAIL'}")
    lines.append("")
    lines.append("TARGETS")
    for t in doc["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
        note = f"  [{t['note']}]" if t["note"] else ""
        lines.append(f"  {verdict}  {t['target']}: {t['measured']}{note}")
    return "\n".join(lines)


def _cpu_table(phases: Sequence[dict]) -> list[str]:
    """CPU % of one core per process during each mesh phase, plus the generator's own."""
    mesh_phases = [p for p in phases if p["target"] == "mesh"]
    if not mesh_phases:
        return []
    names = [n for n in (*SERVICES, "generator", "ingest_generator", "runner", "postgres", "machine")
             if n in mesh_phases[0]["processes"]]
    lines = ["", "CPU % of one core during mesh phases (machine = every process, all cores: 100% per core); "
                 "generator = the load generator itself",
             f"{'phase':<12}" + "".join(f"{n[:10]:>11}" for n in names)]
    for p in mesh_phases:
        label = f"{p['shape']} {p.get('offered_rate', p.get('concurrency')):g}"
        lines.append(f"{label:<12}" + "".join(f"{p['processes'][n]['cpu_percent']:>11.0f}" for n in names))
    every = [p for p in phases if "generator" in p["processes"]]
    cpu = max((p["processes"]["generator"]["cpu_percent"] for p in every), default=0.0)
    lag = max((p["decisions"]["send_lag_ms"]["p99"] for p in every if p["shape"] == "open"), default=0.0)
    lines.append(f"load generator (all phases, mesh and baseline): at most {cpu:.0f}% of a core; open-loop send lag "
                 f"p99 at most {lag:.1f} ms")
    return lines


# --------------------------------------------------------------------------------------------------- chart


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # a panel with no data (e.g. a faults-only run) has no legend
        ax.legend(fontsize=7)


def draw_chart(doc: dict, path: Path) -> None:
    """Latency percentiles vs offered load per channel (mesh solid, baseline dashed), closed-loop throughput vs
    workers, and the fault timeline when faults ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = doc["phases"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    styles = {"mesh": "-", "baseline": "--"}
    colours = {"p50": "tab:green", "p99": "tab:orange", "p999": "tab:red"}
    for ax, channel in zip(axes[0], DECISION_CHANNELS, strict=True):
        for target, style in styles.items():
            points = sorted(
                ((p["offered_rate"], p["channels"][channel]["latency_ms"]) for p in phases
                 if p["target"] == target and p["shape"] == "open"),
                key=lambda point: point[0],  # a rate may repeat (`--rates 60 60`): never compare the dicts
            )
            for pct, colour in colours.items():
                if points:
                    ax.plot([x for x, _ in points], [lat[pct] for _, lat in points], style, marker="o",
                            color=colour, label=f"{target} {pct}")
        ax.set_title(f"{channel}: latency vs offered load (open loop)")
        ax.set_xlabel("offered decisions/s")
        ax.set_ylabel("ms from scheduled send")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        _legend(ax)
    ax = axes[1][0]
    for target, style in styles.items():
        points = sorted((p["concurrency"], p["decisions"]["throughput"]) for p in phases
                        if p["target"] == target and p["shape"] == "closed")
        if points:
            ax.plot(*zip(*points, strict=True), style, marker="o", label=target)
    ax.set_title("closed loop: decisions/s vs workers")
    ax.set_xlabel("concurrent workers")
    ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
    _legend(ax)
    ax = axes[1][1]
    for target, style in styles.items():
        steps = sorted((p["concurrency"], p["decisions"]["throughput"], p["decisions"]["latency_ms"]["p99"])
                       for p in phases if p["target"] == target and p["shape"] == "closed")
        if steps:  # joined in worker order: the curve bends back where more workers bring less throughput
            ax.plot([t for _, t, _ in steps], [p99 for _, _, p99 in steps], style, marker="o", label=f"{target} p99")
    ax.set_title("closed loop: p99 vs throughput")
    ax.set_xlabel("decisions/s")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax)
    ax = axes[1][2]
    faults = doc.get("faults")
    if faults:
        rows = faults["timeline"]
        ax.plot([r["t"] for r in rows], [100 * r["degraded"] / max(1, r["ok"]) for r in rows], label="degraded %")
        ax.plot([r["t"] for r in rows], [r["p99_ms"] for r in rows], label="p99 ms")
        for f, colour in zip(faults["faults"], ("tab:red", "tab:purple"), strict=False):
            ax.axvspan(f["started"], f["returned"], alpha=0.15, color=colour, label=f["name"])
        ax.set_title("faults: per-second timeline")
        ax.set_xlabel("seconds")
        _legend(ax)
    else:
        mesh = [p for p in phases if p["target"] == "mesh" and p["shape"] == "open"]
        bottom = [0.0] * len(mesh)
        labels = [f"{p['offered_rate']:g}/s" for p in mesh]
        for name in (*SERVICES, "generator", "ingest_generator"):
            values = [p["processes"].get(name, {}).get("cpu_percent", 0.0) for p in mesh]
            ax.bar(labels, values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title("mesh CPU % of one core per process (open loop)")
        _legend(ax)
    fig.suptitle(f"NextBest bench {doc['run']['run_id']} — {doc['run']['mode']}, {doc['dataset']['backend']}, "
                 f"{doc['dataset']['customers']:,} customers")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
