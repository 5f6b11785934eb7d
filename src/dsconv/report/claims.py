"""The source documents' claims about DS convolutions, each marked held / not held from committed results.

Every verdict is a stated rule applied to numbers read from files: a study's ``metrics_comparison.json``
(the same-architecture standard/DS pair: parameters, accuracy, Welch p) and a ``dsconv-bench`` output
(``runtime_pairs.csv``: interleaved speedups; ``results.csv``: peak memory). Nothing here is typed by hand,
so the README's claims table changes when the results do.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The rules: what a measurement must show for the claim to hold.
PARAM_RULE = 7.0  # "~8-9x fewer parameters": at least 7x fewer for the whole network
ACCURACY_RULE = 0.01  # "comparable accuracy": DS at most 1 point below standard (mean over seeds)
SPEED_RULE = 1.3  # "30-50% faster": at least 1.3x, interleaved, eager fp32 at batch 1 and at batch 32
RULES = {
    "params": f"held when the DS twin has ≥ {PARAM_RULE:g}x fewer parameters",
    "accuracy": f"held when DS is at most {100 * ACCURACY_RULE:g} point below standard (mean over seeds)",
    "speed": f"held when DS is ≥ {SPEED_RULE:g}x faster (eager fp32, batch 1 and batch 32, interleaved)",
    "memory": "held when DS's peak memory is lower in inference and in a training step (fp32, NCHW)",
}


def study_pair(study: Path) -> dict[str, Any] | None:
    """The same-architecture standard/DS comparison of a study (the report lists it first)."""
    path = study / "metrics_comparison.json"
    if not path.is_file():
        return None
    pairs = json.loads(path.read_text())["pairs"]
    return pairs[0] if pairs else None


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _verdict(held: bool) -> str:
    return "**held**" if held else "**not held**"


def parameter_claims(studies: Sequence[Path]) -> list[tuple[str, str, str]]:
    out = []
    for study in studies:
        pair = study_pair(study)
        if pair is not None:
            ratio = float(pair["param_ratio"])
            name = f"{pair['standard'].split(' [')[0]} ({study.name})"
            out.append(
                (
                    name,
                    f"{ratio:.2f}x fewer parameters, {float(pair['mac_ratio']):.2f}x fewer MACs",
                    _verdict(ratio >= PARAM_RULE),
                )
            )
    return out


def accuracy_claims(studies: Sequence[Path]) -> list[tuple[str, str, str]]:
    out = []
    for study in studies:
        pair = study_pair(study)
        if pair is None:
            continue
        diff, p = float(pair["accuracy_diff"]), pair.get("welch_p_value")
        n = min(int(pair["test"]["n_a"]), int(pair["test"]["n_b"]))
        test = f", Welch p = {p:.2g}" if p is not None else ""
        name = f"{pair['standard'].split(' [')[0]} ({study.name})"
        verdict = _verdict(diff >= -ACCURACY_RULE) + (" (1 seed: no test possible)" if n < 2 else "")
        out.append((name, f"DS − standard = {100 * diff:+.2f} points (n={n}{test})", verdict))
    return out


def speed_claims(bench: Path) -> list[tuple[str, str, str]]:
    path = bench / "runtime_pairs.csv"
    if not path.is_file():
        return []
    eager = [r for r in _rows(path) if r["runtime"] == "eager_fp32"]
    out = []
    for name in dict.fromkeys(r["pair"] for r in eager):
        rows = {int(r["batch"]): float(r["speedup"]) for r in eager if r["pair"] == name}
        text = ", ".join(f"{rows[b]:.2f}x at batch {b}" for b in sorted(rows))
        out.append((name, text, _verdict(min(rows.values()) >= SPEED_RULE)))
    return out


def memory_claims(bench: Path) -> list[tuple[str, str, str]]:
    path = bench / "results.csv"
    if not path.is_file():
        return []
    rows = [
        r
        for r in _rows(path)
        if r["kind"] != "layer" and r["dtype"] == "fp32" and r["memory_format"] == "nchw" and r["peak_mem_train_mib"]
    ]
    out = []
    for name in dict.fromkeys(r["pair"] for r in rows):
        members = [r for r in rows if r["pair"] == name]
        standard = next((r for r in members if r["conv"] == "standard"), None)
        separable = next((r for r in members if r["conv"] == "separable"), None)
        if standard is None or separable is None:
            continue
        infer = (float(standard["peak_mem_infer_mib"]), float(separable["peak_mem_infer_mib"]))
        train = (float(standard["peak_mem_train_mib"]), float(separable["peak_mem_train_mib"]))
        text = f"inference {infer[0]:.1f} → {infer[1]:.1f} MiB, training step {train[0]:.1f} → {train[1]:.1f} MiB"
        out.append((name, text, _verdict(infer[1] < infer[0] and train[1] < train[0])))
    return out


CLAIMS = (
    ('"~8-9x fewer parameters"', "params", parameter_claims, "studies"),
    ('"comparable accuracy"', "accuracy", accuracy_claims, "studies"),
    ('"30-50% faster"', "speed", speed_claims, "bench"),
    ('"lower memory"', "memory", memory_claims, "bench"),
)


def claims_markdown(studies: Sequence[Path], bench: Path) -> str:
    lines = ["| claim (source documents) | rule | network (results) | measured | verdict |", "|---|---|---|---|---|"]
    for claim, rule, measure, source in CLAIMS:
        rows = measure(studies) if source == "studies" else measure(bench)
        if not rows:
            lines.append(f"| {claim} | {RULES[rule]} | — | not measured (no {source} results) | — |")
        for index, (network, measured, verdict) in enumerate(rows):
            first = index == 0
            lines.append(
                f"| {claim if first else ''} | {RULES[rule] if first else ''} | {network} | {measured} | {verdict} |"
            )
    return "\n".join(lines) + "\n"
