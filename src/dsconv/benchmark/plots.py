"""Benchmark figures: measured speedup vs MAC ratio, latency vs MACs, achieved GFLOP/s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

_MARKERS = {"standard": "o", "separable": "^"}


def _setting(row: Mapping[str, Any]) -> str:
    return f"{row['dtype']} {row['memory_format']}{' compiled' if row['compile'] else ''}"


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(dict.fromkeys(labels))}


def speedup_vs_mac_ratio(pairs: Sequence[Mapping[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    points = [p for p in pairs if p["mac_ratio"] != "" and p["speedup_throughput"] != ""]
    colors = _colors([_setting(p) for p in points])
    top = max([p["mac_ratio"] for p in points] + [p["speedup_throughput"] for p in points] + [2.0]) * 1.1
    ax.plot([1, top], [1, top], "k--", lw=1, label="speedup = MAC ratio (all of the saving)")
    ax.axhline(1.0, color="grey", lw=1, label="no speedup")
    for label, color in colors.items():
        # Pairs flagged noisy stay on the plot, faded, rather than silently looking as solid as the rest.
        for noisy, alpha in ((False, 1.0), (True, 0.3)):
            mine = [p for p in points if _setting(p) == label and bool(p["noisy"]) == noisy]
            tag = "" if noisy else label
            ax.scatter(
                [p["mac_ratio"] for p in mine],
                [p["speedup_throughput"] for p in mine],
                color=color,
                marker="o",
                alpha=alpha,
                label=f"{tag}: throughput" if tag else None,
            )
            ax.scatter(
                [p["mac_ratio"] for p in mine],
                [p["speedup_latency_b1"] for p in mine],
                facecolors="none",
                edgecolors=color,
                marker="s",
                alpha=alpha,
                label=f"{tag}: batch-1 latency" if tag else None,
            )
    for pair in dict.fromkeys(p["pair"] for p in points):
        first = next(p for p in points if p["pair"] == pair)
        ax.annotate(
            pair,
            (first["mac_ratio"], first["speedup_throughput"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MAC ratio standard / DS (theoretical speedup)")
    ax.set_ylabel("measured speedup of DS over standard")
    ax.set_title("What the hardware realizes of the MAC saving (faded: flagged noisy)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def latency_vs_macs(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    colors = _colors([_setting(r) for r in rows])
    for row in rows:
        ax.scatter(
            row["macs_per_image"],
            row["latency_b1_median_ms"],
            color=colors[_setting(row)],
            marker=_MARKERS.get(row["conv"], "s"),
            s=36,
        )
    first_setting = _setting(rows[0]) if rows else None
    for row in (r for r in rows if _setting(r) == first_setting):
        ax.annotate(
            row["target"],
            (row["macs_per_image"], row["latency_b1_median_ms"]),
            fontsize=6,
            xytext=(4, -8),
            textcoords="offset points",
        )
    for label, color in colors.items():
        ax.scatter([], [], color=color, label=label)
    for conv, marker in _MARKERS.items():
        ax.scatter([], [], color="k", marker=marker, label=conv)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs per image (fvcore)")
    ax.set_ylabel("batch-1 latency, median (ms)")
    ax.set_title("Latency vs MACs: points on one diagonal would mean MACs predict time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def achieved_gflops(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    targets = list(dict.fromkeys(r["target"] for r in rows))
    settings = list(dict.fromkeys(_setting(r) for r in rows))
    colors = _colors(settings)
    height = 0.8 / max(1, len(settings))
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.45 * len(targets) * max(1, len(settings)) ** 0.5))
    for j, setting in enumerate(settings):
        values = {r["target"]: r["achieved_gflops_throughput"] for r in rows if _setting(r) == setting}
        ax.barh(
            [i + j * height for i in range(len(targets))],
            [values.get(t, 0.0) for t in targets],
            height=height,
            color=colors[setting],
            label=setting,
        )
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(targets))])
    ax.set_yticklabels(targets, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("achieved GFLOP/s at the throughput batch (FLOPs = 2 per multiply-add)")
    ax.set_title("Achieved arithmetic rate (same FLOP count for every dtype)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ("speedup_vs_mac_ratio.png", "latency_vs_macs.png", "achieved_gflops.png")
    paths = [out_dir / name for name in names]
    speedup_vs_mac_ratio(results["pairs"], paths[0])
    latency_vs_macs(results["rows"], paths[1])
    achieved_gflops(results["rows"], paths[2])
    return paths


_LAYER_COLORS = {"dense": "tab:blue", "pointwise": "tab:green", "depthwise": "tab:red", "grouped": "tab:purple"}


def roofline_figure(roofline: Mapping[str, Any], pairs: Sequence[tuple[str, str]], dtype: str):
    """Log-log roofline for one dtype: a row per standard/DS pair, the twins side by side, one marker
    per layer coloured by layer type, the compute ceiling and both bandwidth ceilings drawn."""
    ceilings = roofline["ceilings"][0]
    layers = [r for r in roofline["layers"] if r["dtype"] == dtype]
    targets = {r["target"] for r in layers}
    rows = [p for p in pairs if p[0] in targets and p[1] in targets] or [(t,) for t in dict.fromkeys(targets)]
    cols = max(len(r) for r in rows) if rows else 1
    fig, axes = plt.subplots(len(rows) or 1, cols, figsize=(5.2 * cols, 3.8 * max(1, len(rows))), squeeze=False)
    peak = float(ceilings[f"peak_{dtype}_gflops"])
    intensities = [r["arithmetic_intensity"] for r in layers] or [1.0]
    span = [min([*intensities, 0.1]) / 2, max([*intensities, peak / ceilings["dram_gbs"]]) * 4]
    grid = [span[0] * (span[1] / span[0]) ** (i / 200) for i in range(201)]
    for i, row in enumerate(rows):
        for j, target in enumerate(row):
            ax = axes[i][j]
            ax.plot(grid, [min(peak, a * ceilings["dram_gbs"]) for a in grid], "k-", lw=1.2, label="DRAM roof")
            ax.plot(grid, [min(peak, a * ceilings["cache_gbs"]) for a in grid], "k--", lw=1, label="cache roof")
            ax.axhline(peak, color="grey", lw=0.8)
            for kind, color in _LAYER_COLORS.items():
                for op, marker in (("conv", "o"), ("linear", "s"), ("attention", "D")):
                    mine = [r for r in layers if r["target"] == target and r["layer_type"] == kind and r["op"] == op]
                    if mine:
                        ax.scatter(
                            [r["arithmetic_intensity"] for r in mine],
                            [r["achieved_gflops"] for r in mine],
                            color=color,
                            marker=marker,
                            s=22,
                            label=f"{kind} {op}" if op != "conv" else kind,
                            alpha=0.8,
                        )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{target} ({dtype})", fontsize=9)
            ax.set_xlabel("arithmetic intensity (FLOP / byte, minimum bytes)", fontsize=8)
            ax.set_ylabel("achieved GFLOP/s", fontsize=8)
            ax.legend(fontsize=6, loc="lower right")
        for j in range(len(row), cols):
            axes[i][j].axis("off")
    fig.suptitle(
        f"Roofline ({dtype}): peak {peak:.0f} GFLOP/s, DRAM {ceilings['dram_gbs']:.0f} GB/s, "
        f"cache {ceilings['cache_gbs']:.0f} GB/s, {ceilings['threads']} threads",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def write_roofline_plots(roofline: Mapping[str, Any], pairs: Sequence[tuple[str, str]], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for dtype in dict.fromkeys(r["dtype"] for r in roofline["layers"]):
        fig = roofline_figure(roofline, pairs, dtype)
        path = out_dir / f"roofline_{dtype}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
