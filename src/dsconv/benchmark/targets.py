"""What gets measured: registered models and trained runs (``models:``), single standard/DS layers (``layers:``).

A ``{run: <run dir>}`` entry measures the network a run trained, with its weights: a structurally pruned
run is a real smaller module, so its latency is measured next to the DS twin it was pruned to match.

A ``Target`` is plain data (JSON-serialisable) so the memory probe can rebuild the very same network
in a fresh process. Targets that differ only in their conv kind share a ``pair_key``; the one whose
conv is ``standard`` is the baseline the others are compared with.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf

from dsconv.errors import ConfigError
from dsconv.layers import make_conv
from dsconv.models.stages import describe_conv
from dsconv.paths import CONF_DIR
from dsconv.registry import build_model, registered_models

# Keys of a `models:` entry that describe the run, not the model; everything else goes to the builder.
ENTRY_KEYS = ("group", "label", "input_shape", "num_classes", "dataset")
RUN_KEYS = ("run", "label", "pair_with")
LAYER_KEYS = ("c_in", "c_out", "kernel", "hw", "stride")


@dataclass(frozen=True)
class Target:
    kind: str  # "model" | "layer" | "run" (a trained run's model, weights included)
    label: str
    conv: str  # standard | separable | hybrid(...)
    input_shape: tuple[int, int, int]
    num_classes: int
    dataset: str
    spec: dict[str, Any] = field(default_factory=dict)  # model config, or layer geometry
    pair_key: str = ""

    def build(self) -> nn.Module:
        torch.manual_seed(0)  # identical weights in every configuration of this target
        if self.kind == "layer":
            s = self.spec
            return make_conv(self.conv, s["c_in"], s["c_out"], s["kernel"], s["stride"], bias=s["bias"])
        if self.kind == "run":
            from dsconv.compression.runs import load_run_model

            return load_run_model(self.spec["run_dir"], expect_input_shape=self.input_shape, key="models[].run")
        return build_model(self.spec, self.input_shape, self.num_classes)

    def loss_fn(self, batch_size: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training objective: cross-entropy on random labels, or mean square of a layer's output."""
        if self.kind == "layer":
            return lambda out: out.float().square().mean()
        labels = torch.randint(0, self.num_classes, (batch_size,), device=device)
        return lambda out: F.cross_entropy(out.float(), labels)

    def analytic_macs(self) -> int | None:
        """Multiply-adds of a layer from its geometry (bias adds not counted, as fvcore does)."""
        if self.kind != "layer":
            return None
        return layer_macs(self.conv, **{k: self.spec[k] for k in LAYER_KEYS})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Target:
        data = json.loads(text)
        data["input_shape"] = tuple(data["input_shape"])
        return cls(**data)


def conv_out_size(hw: int, kernel: int, stride: int) -> int:
    padding = (kernel - 1) // 2  # make_conv's size-preserving default
    return (hw + 2 * padding - kernel) // stride + 1


def layer_macs(conv: str, c_in: int, c_out: int, kernel: int, hw: int, stride: int) -> int:
    """Standard: C_out*C_in*k^2*H'W'. DS: depthwise C_in*k^2*H'W' + pointwise C_in*C_out*H'W'."""
    out_pixels = conv_out_size(hw, kernel, stride) ** 2
    if conv == "standard":
        return c_out * c_in * kernel * kernel * out_pixels
    if conv == "separable":
        return c_in * kernel * kernel * out_pixels + c_in * c_out * out_pixels
    raise ConfigError(f"layer sweep supports conv kinds standard and separable, got {conv!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def compose_model_group(group: str) -> dict[str, Any]:
    """The composed ``conf/model/<group>.yaml`` (defaults lists included), as Hydra's trainer sees it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    available = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    if group not in available:
        raise ConfigError(
            f"unknown model config group {group!r}: conf/model has {', '.join(available)} "
            "(or give {name: <registered model>, conv: ...})"
        )
    overrides = [f"+model={group}"]
    if GlobalHydra.instance().is_initialized():
        cfg = compose(overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(overrides=overrides)
    return dict(_plain(cfg.model))


def model_target(entry: Any, index: int, dataset: Mapping[str, Any]) -> Target:
    """One ``models:`` entry: a config group name, ``{group: ..., <overrides>}`` or ``{name: ..., ...}``."""
    entry = _plain(entry)
    where = f"models[{index}]"
    if isinstance(entry, str):
        entry = {"group": entry}
    if isinstance(entry, dict) and "run" in entry:
        return run_target(entry, where)
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a conf/model group name or a {{name|group: ...}} map: {entry!r}")
    overrides = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    if "group" in entry:
        spec = {**compose_model_group(str(entry["group"])), **overrides}
    elif "name" in entry:
        spec = overrides
    else:
        raise ConfigError(f"{where} needs `group: <conf/model file>` or `name: <registered model>`: {entry}")
    name = str(spec.get("name"))
    if name not in registered_models():
        raise ConfigError(
            f"{where}: unknown model {name!r}: registered models are {', '.join(registered_models())} "
            "(fix the entry in conf/bench.yaml or the models=... override)"
        )
    spec.setdefault("conv", "standard")
    shape = tuple(int(v) for v in entry.get("input_shape", dataset["input_shape"]))
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"{where}.input_shape must be [channels, height, width], got {list(shape)}")
    conv = describe_conv(spec["conv"])
    num_classes = int(entry.get("num_classes", dataset["num_classes"]))
    data_name = str(entry.get("dataset", dataset["name"]))
    rest = {k: v for k, v in spec.items() if k != "conv"}
    label = str(entry.get("label") or f"{name}/{conv}")
    pair_key = json.dumps({"model": rest, "shape": shape, "classes": num_classes}, sort_keys=True)
    return Target("model", label, conv, shape, num_classes, data_name, spec, pair_key)  # type: ignore[arg-type]


def run_target(entry: Mapping[str, Any], where: str) -> Target:
    """``{run: <run dir>, label?, pair_with?}``: the model a finished run trained, as it is (pruned or not).

    It joins the pair of the registered model it was built from (same options, conv kind and input);
    ``pair_with: <label>`` puts it in that entry's pair instead (e.g. a run trained with other options).
    """
    from dsconv.compression.runs import dataset_geometry, resolve_run

    if unknown := sorted(set(entry) - set(RUN_KEYS)):
        raise ConfigError(f"{where}: a run entry takes {', '.join(RUN_KEYS)}, not {', '.join(unknown)}")
    run = resolve_run(entry["run"], key=f"{where}.run")
    geometry = dataset_geometry(run.config.get("dataset") or {})
    if geometry is None:
        raise ConfigError(f"{where}.run={entry['run']}: its dataset's input shape is not known to the bench")
    shape, num_classes = geometry
    spec = dict(_plain(run.config.model))
    conv = describe_conv(spec.get("conv", "standard"))
    prune = _plain(run.config.get("prune")) or {}
    what = f"pruned {prune.get('method', 'structured')}" if prune.get("from") else "trained"
    label = str(entry.get("label") or f"{spec.get('name')}/{conv} {what} ({run.run_dir.name})")
    builder = {k: v for k, v in spec.items() if k not in ("conv", "match", "match_to")}
    pair_key = json.dumps({"model": builder, "shape": tuple(shape), "classes": num_classes}, sort_keys=True)
    data_name = str(run.config.get("dataset", {}).get("name", "-"))
    spec = {"run_dir": str(run.run_dir), "pair_with": entry.get("pair_with")}
    return Target("run", label, conv, tuple(shape), num_classes, data_name, spec, pair_key)  # type: ignore[arg-type]


def join_pairs(targets: list[Target]) -> list[Target]:
    """Run entries with ``pair_with: <label>`` take that entry's pair key (checked: the label exists)."""
    by_label = {t.label: t for t in targets}
    joined = []
    for target in targets:
        partner = target.spec.get("pair_with") if target.kind == "run" else None
        if partner is not None:
            if partner not in by_label:
                raise ConfigError(
                    f"pair_with={partner!r} ({target.label}): no entry has that label; labels: {', '.join(by_label)}"
                )
            target = dataclasses.replace(target, pair_key=by_label[partner].pair_key)
        joined.append(target)
    return joined


def layer_targets(entry: Any, index: int, bias: bool) -> list[Target]:
    """One ``layers:`` entry -> its standard layer and its DS twin."""
    entry = _plain(entry)
    where = f"layers[{index}]"
    required = {"c_in", "c_out", "kernel", "hw"}
    if not isinstance(entry, dict) or set(entry) - set(LAYER_KEYS) or not required <= set(entry):
        raise ConfigError(f"{where} must be {{c_in, c_out, kernel, hw, stride}} (stride default 1): {entry}")
    geometry = {key: int(entry.get(key, 1)) for key in LAYER_KEYS}
    if min(geometry.values()) < 1:
        raise ConfigError(f"{where} values must be positive integers, got {geometry}")
    g = geometry
    name = f"conv{g['c_in']}->{g['c_out']} k{g['kernel']} {g['hw']}x{g['hw']} s{g['stride']}"
    pair_key = json.dumps({"layer": geometry, "bias": bias}, sort_keys=True)
    return [
        Target(
            "layer", f"{name}/{conv}", conv, (g["c_in"], g["hw"], g["hw"]), 0, "-", {**geometry, "bias": bias}, pair_key
        )
        for conv in ("standard", "separable")
    ]
