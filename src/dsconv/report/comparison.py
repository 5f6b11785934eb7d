"""Per architecture: standard, DS, DS + KD, DS at equal MACs and standard pruned, each tested against plain DS.

An architecture set is every group that shares all settings except the ones that make the variants
(conv kind and options, distillation, budget matching, pruning). Within a set the plain DS row is the
reference: every other row gets its accuracy difference, Welch and Mann-Whitney p-values against it,
and the share of the standard-vs-DS gap it recovers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsconv.report.collect import KIND_SETTINGS, Group, _conv_label, kind_tags
from dsconv.report.stats import SignificanceTest, Summary, accuracies, group_table, summarize, two_sample_tests
from dsconv.report.timing import BenchResults, TimingSummary, group_timing

# Settings that make the variants of one architecture, so they do not split architecture sets.
VARIANT_PREFIXES = ("model.conv", "model.conv_options", "model.match", "distill.", "prune.", "run_kind.")
ROLE_ORDER = ("standard", "DS", "DS + KD", "DS at equal", "standard pruned", "standard + KD")
BOOTSTRAP_RESAMPLES = 2000
GAP_METHOD = (
    f"bootstrap over seeds: each of the three groups resampled with replacement independently, "
    f"{BOOTSTRAP_RESAMPLES} resamples, fixed RNG seed 0; std and 2.5-97.5 percentiles of the resampled ratios"
)


def role(group: Group) -> str:
    """What a group is in the comparison: ``standard``, ``DS``, ``DS + KD``, ``DS at equal macs``, ..."""
    kinds = group.kinds
    conv = _conv_label(group.settings.get("model.conv", "standard"))
    base = "standard" if conv == "standard" else "DS"
    if "prune" in kinds:
        method = kinds["prune"].get("method")
        text = f"{base} pruned" + (f" ({method})" if method else "")
    elif "match" in kinds:
        by = str(kinds["match"].get("by") or "budget")
        text = f"{base} at equal {'MACs' if by == 'macs' else by}"
    else:
        text = base
    return text + (" + KD" if "distill" in kinds else "")


def _kind_prefixes(group: Group) -> tuple[str, ...]:
    return tuple(p for kind in group.kinds for p in KIND_SETTINGS.get(kind, ()))


def architecture_key(group: Group, also_excluded: tuple[str, ...] = ()) -> tuple[tuple[str, Any], ...]:
    excluded = VARIANT_PREFIXES + also_excluded
    return tuple((k, v) for k, v in group.key if not k.startswith(excluded))


def architecture_sets(groups: list[Group]) -> list[list[Group]]:
    """Groups of one architecture. A variant that changes settings by design (a pruned model's fine-tuning
    epochs) joins the set that matches it once those settings are ignored on both sides."""
    sets: dict[tuple, list[Group]] = {}
    for group in groups:
        if not _kind_prefixes(group):
            sets.setdefault(architecture_key(group), []).append(group)
    for group in groups:
        extra = _kind_prefixes(group)
        if not extra:
            continue
        own = architecture_key(group, extra)
        home = next((key for key, members in sets.items() if architecture_key(members[0], extra) == own), None)
        sets.setdefault(home if home is not None else architecture_key(group), []).append(group)
    return list(sets.values())


@dataclass
class GapRecovered:
    """``(acc_row - acc_DS) / (acc_std - acc_DS)``: 0 = no better than DS, 1 = as good as standard."""

    estimate: float | None
    std: float | None
    low: float | None  # 2.5th percentile of the bootstrap
    high: float | None
    resamples: int
    note: str
    method: str = GAP_METHOD

    def fmt(self) -> str:
        if self.estimate is None:
            return "—"
        if self.std is None:
            return f"{self.estimate:.0%}"
        return f"{self.estimate:.0%} ± {self.std:.0%} [{self.low:.0%}, {self.high:.0%}]"


def gap_recovered(row: list[float], ds: list[float], standard: list[float], seed: int = 0) -> GapRecovered:
    row_a, ds_a, std_a = (np.asarray(v, dtype=float) for v in (row, ds, standard))
    if min(row_a.size, ds_a.size, std_a.size) == 0:
        return GapRecovered(None, None, None, None, 0, "a group has no finished runs")
    gap = std_a.mean() - ds_a.mean()
    if abs(gap) < 1e-12:
        return GapRecovered(None, None, None, None, 0, "no gap: standard and DS have the same mean accuracy")
    estimate = float((row_a.mean() - ds_a.mean()) / gap)
    if min(row_a.size, ds_a.size, std_a.size) < 2:
        return GapRecovered(estimate, None, None, None, 0, "n=1 in a group: no uncertainty")
    rng = np.random.default_rng(seed)

    def resampled(values: np.ndarray) -> np.ndarray:
        return values[rng.integers(0, values.size, (BOOTSTRAP_RESAMPLES, values.size))].mean(axis=1)

    row_m, ds_m, std_m = resampled(row_a), resampled(ds_a), resampled(std_a)
    denominator = std_m - ds_m
    ok = np.abs(denominator) > 1e-12
    ratios = (row_m[ok] - ds_m[ok]) / denominator[ok]
    flipped = float(np.mean(np.sign(denominator[ok]) != np.sign(gap)))
    note = f"the standard-DS gap changes sign in {flipped:.0%} of resamples: the ratio is unstable" if flipped else ""
    low, high = (float(v) for v in np.percentile(ratios, [2.5, 97.5]))
    return GapRecovered(estimate, float(ratios.std(ddof=1)), low, high, int(ok.sum()), note)


@dataclass
class ComparisonRow:
    role: str
    group: Group
    accuracy: Summary
    delta_vs_ds: float | None  # accuracy units; None for the DS row itself or without a DS row
    test_vs_ds: SignificanceTest | None
    gap: GapRecovered | None
    params: Summary
    macs: Summary
    latency: TimingSummary
    throughput: TimingSummary


@dataclass
class ArchitectureComparison:
    title: str
    settings: dict[str, Any]
    rows: list[ComparisonRow] = field(default_factory=list)

    @property
    def reference(self) -> ComparisonRow | None:
        return next((r for r in self.rows if r.role == "DS"), None)


def _role_rank(text: str) -> int:
    # The longest matching prefix wins, so "DS + KD" is not ranked as plain "DS".
    matches = [(len(p), i) for i, p in enumerate(ROLE_ORDER) if text == p or text.startswith(p)]
    return max(matches)[1] if matches else len(ROLE_ORDER)


def _variant_name(group: Group) -> str:
    """What sets a second row of the same role apart: its custom conv options, else its model config."""
    return "custom conv options" if _plain_first(group)[0] else group.model_choice


def _plain_first(group: Group) -> tuple[bool, str]:
    """The reference DS row is the one with default conv options (the plain SeparableConv2d)."""
    return (any(k.startswith("model.conv_options.") for k in group.settings), group.label)


def build_comparisons(groups: list[Group], bench: BenchResults | None = None) -> list[ArchitectureComparison]:
    comparisons = []
    for members in architecture_sets(groups):
        key = architecture_key(members[0], _kind_prefixes(members[0]))
        members = sorted(members, key=lambda g: (_role_rank(role(g)), _plain_first(g)))
        roles = [role(g) for g in members]
        # A second group of the same role (other conv options, another alpha) is named by what differs.
        seen: dict[str, int] = {}
        for index, (text, group) in enumerate(zip(roles, members)):
            seen[text] = seen.get(text, 0) + 1
            if seen[text] > 1:
                tags = kind_tags(group.kinds)
                roles[index] = f"{text} ({tags[-1] if tags and text.endswith('KD') else _variant_name(group)})"
        ds = next((g for g, r in zip(members, roles) if r == "DS"), None)
        standard = next((g for g, r in zip(members, roles) if r == "standard"), None)
        comparison = ArchitectureComparison(_title(dict(key), members), dict(key))
        for text, group in zip(roles, members):
            comparison.rows.append(_row(text, group, ds, standard, bench))
        comparisons.append(comparison)
    return sorted(comparisons, key=lambda c: c.title)


def _row(text: str, group: Group, ds: Group | None, standard: Group | None, bench: BenchResults | None):
    table = group_table(group)
    acc = accuracies(group)
    test = delta = gap = None
    if ds is not None and group is not ds:
        test = two_sample_tests(acc, accuracies(ds))
        delta = table["test_accuracy"].mean - summarize(accuracies(ds)).mean
        if standard is not None and group is not standard:
            gap = gap_recovered(acc, accuracies(ds), accuracies(standard))
    return ComparisonRow(
        text,
        group,
        table["test_accuracy"],
        delta,
        test,
        gap,
        table["params_total"],
        table["macs_per_image"],
        group_timing(group, "latency_ms_b1", bench),
        group_timing(group, "throughput_img_s", bench),
    )


def _title(settings: dict[str, Any], members: list[Group]) -> str:
    model = settings.get("model.name", members[0].model_choice)
    dataset = settings.get("dataset.name", "?")
    return f"{model} on {dataset}, {budget_text(members)}"


def budget_text(groups: list[Group]) -> str:
    """``3 epochs, 3 seeds`` (ranges when groups differ): the budget a figure or table was made with."""
    # A pruned model's epochs are its fine-tuning budget, said in its own label.
    trained = [g for g in groups if not any("trainer.epochs".startswith(p) for p in _kind_prefixes(g))] or groups
    epochs = sorted({json.dumps(g.settings.get("trainer.epochs")) for g in trained} - {"null"})
    seeds = sorted({len(g.ok_runs) for g in groups})
    epoch_text = f"{'/'.join(epochs)} epochs" if epochs else "epochs unknown"
    seed_text = f"{seeds[0]} seed{'s' if seeds[0] != 1 else ''}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    return f"{epoch_text}, {seed_text}"


def as_json(comparison: ArchitectureComparison) -> dict[str, Any]:
    def number(value: float | None) -> float | None:
        return None if value is None or math.isnan(value) else value

    return {
        "title": comparison.title,
        "settings": comparison.settings,
        "reference": comparison.reference.group.label if comparison.reference else None,
        "rows": [
            {
                "role": r.role,
                "label": r.group.label,
                "seeds": [run.seed for run in r.group.ok_runs],
                "test_accuracy": r.accuracy.as_json(),
                "accuracy_diff_vs_ds": number(r.delta_vs_ds),
                "welch_p_value_vs_ds": r.test_vs_ds.welch_p if r.test_vs_ds else None,
                "mannwhitney_p_value_vs_ds": r.test_vs_ds.mannwhitney_p if r.test_vs_ds else None,
                "test_vs_ds": r.test_vs_ds.as_json() if r.test_vs_ds else None,
                "gap_recovered": None if r.gap is None else {k: v for k, v in vars(r.gap).items()},
                "params": r.params.as_json(),
                "macs_per_image": r.macs.as_json(),
                "latency_ms_b1": r.latency.as_json(),
                "throughput_img_s": r.throughput.as_json(),
                "kinds": r.group.kinds,
            }
            for r in comparison.rows
        ],
    }
