"""Find runs under sweep directories and group those that differ only by seed."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Keys that never change what a run measures, so they must not split groups.
IGNORED_KEYS = (
    "trainer.seed",
    "paths",
    "tensorboard",
    "debug",
    "objective",
    "trainer.progress_bar",
    "trainer.resume",
    "trainer.num_threads",
    "trainer.eval_batch_size",
    "hydra",
)

# Paths that differ per seed by design (each KD student has its own teacher run, each pruned model its own
# source run): only whether they are set says what kind of run it is, so that alone enters the group key.
PER_SEED_PATH_KEYS = ("distill.teacher", "prune.from")

# Settings added after runs were already on disk, with the value every earlier run ran with: a config
# that predates one reads as that value, so old and new seeds of one experiment stay one group.
ADDED_SETTINGS = {"trainer.eval_hflip": False}

# Blocks a run's metrics.json may carry to say how the model was made, and the fields of each that define
# the experiment (the rest, e.g. the teacher's hash or the achieved budget, vary per seed).
RUN_KIND_FIELDS = {
    "distill": ("alpha", "temperature"),
    "match": ("by", "to"),
    "prune": ("method", "finetune_epochs", "budget"),  # not sparsity: it may differ per seed
}


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    failure: dict[str, Any] | None = None
    model_choice: str | None = None  # the conf/model option the run was launched with

    @property
    def status(self) -> str:
        if self.metrics is not None:
            return "ok"
        return "failed" if self.failure is not None else "unfinished"

    @property
    def seed(self) -> Any:
        return self.config.get("trainer", {}).get("seed")


def find_runs(roots: list[Path]) -> list[Run]:
    """Every directory holding a composed config: a finished, failed or interrupted run."""
    seen: set[Path] = set()
    runs: list[Run] = []
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist: pass a run or sweep directory")
        candidates = {p.parent for p in root.rglob("metrics.json")} | {p.parent for p in root.rglob("failure.json")}
        candidates |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
        for run_dir in sorted(candidates):
            if run_dir.resolve() in seen or (run_dir / "multirun.yaml").exists():
                continue
            seen.add(run_dir.resolve())
            runs.append(load_run(run_dir))
    return runs


def load_run(run_dir: Path) -> Run:
    config = _read_yaml(run_dir / "config.yaml") or _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    hydra_cfg = _read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    choice = hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices", {}).get("model")
    run = Run(run_dir, config, model_choice=choice)
    if (run_dir / "metrics.json").is_file():
        run.metrics = json.loads((run_dir / "metrics.json").read_text())
    if (run_dir / "failure.json").is_file():
        run.failure = json.loads((run_dir / "failure.json").read_text())
        run.config = run.config or run.failure.get("config", {})
    if (run_dir / "training_log.csv").is_file():
        with (run_dir / "training_log.csv").open() as handle:
            run.history = [
                {k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)
            ]
    if (run_dir / "confusion_matrix.json").is_file():
        run.confusion = json.loads((run_dir / "confusion_matrix.json").read_text())
    return run


def _read_yaml(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else None


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else value
    return out


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


def run_kind(run: Run) -> dict[str, dict[str, Any]]:
    """The experiment-defining fields of the distill / match / prune blocks of a run's metrics.json."""
    metrics = run.metrics or {}
    return {
        name: {f: metrics[name].get(f) for f in fields}
        for name, fields in RUN_KIND_FIELDS.items()
        if isinstance(metrics.get(name), dict)
    }


def group_key(run: Run) -> tuple[tuple[str, Any], ...]:
    items = {}
    for key, value in {**ADDED_SETTINGS, **flatten(run.config)}.items():
        if _ignored(key):
            continue
        items[key] = ("<set>" if value is not None else None) if key in PER_SEED_PATH_KEYS else value
    for name, fields in run_kind(run).items():
        for field_name, value in fields.items():
            items[f"run_kind.{name}.{field_name}"] = value
    return tuple(sorted(items.items(), key=lambda kv: kv[0]))


@dataclass
class Group:
    key: tuple[tuple[str, Any], ...]
    runs: list[Run]
    label: str = ""

    @property
    def model_choice(self) -> str:
        return self.runs[0].model_choice or str(self.settings.get("model.name", "?"))

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.key)

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]

    @property
    def kinds(self) -> dict[str, dict[str, Any]]:
        """How the model was made: ``distill`` / ``match`` / ``prune`` blocks of the first run's metrics.json,
        else what the config says (a run killed before writing them still has its config)."""
        metrics = self.runs[0].metrics or {}
        found = {name: dict(metrics[name]) for name in RUN_KIND_FIELDS if isinstance(metrics.get(name), dict)}
        s = self.settings
        if "distill" not in found and s.get("distill.teacher") == "<set>":
            found["distill"] = {"alpha": s.get("distill.alpha"), "temperature": s.get("distill.temperature")}
        if "match" not in found and s.get("model.match") not in (None, "", "none"):
            found["match"] = {"by": s.get("model.match"), "to": s.get("model.match_to")}
        if "prune" not in found and s.get("prune.from") == "<set>":
            found["prune"] = {"method": s.get("prune.method"), "finetune_epochs": s.get("prune.finetune_epochs")}
        return found


def group_runs(runs: list[Run]) -> list[Group]:
    """Group finished runs by everything but the seed, and label each group by what varies."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        if run.status != "ok":
            continue
        key = group_key(run)
        groups.setdefault(key, Group(key, [])).runs.append(run)
    result = list(groups.values())
    varying = [k for k in _varying_keys(result) if not _implied_by_model_choice(k, result)]
    for group in result:
        settings = group.settings
        # Name the model config and conv kind; then whatever else differs between groups.
        head = f"{group.model_choice} [{_conv_label(settings.get('model.conv', '-'))}]"
        # Conv options a group does not set are the plain conv's defaults: naming them as None is noise.
        named = [k for k in varying if not _named_elsewhere(k)]
        named = [k for k in named if not (k.startswith("model.conv_options.") and settings.get(k) is None)]
        parts = [f"{_short(k)}={settings.get(k)}" for k in named]
        group.label = ", ".join([head, *kind_tags(group.kinds), *parts])
    return sorted(result, key=lambda g: g.label)


# Settings a variant kind changes by design (a pruned model's fine-tuning budget, a widened twin's width):
# they neither split it from its architecture nor appear in labels as if they were a separate experiment.
KIND_SETTINGS = {"match": ("model.width",), "prune": ("trainer.epochs", "trainer.early_stopping", "scheduler.")}

# Keys named by ``kind_tags`` instead of key=value (model.name and model.conv are in the head already).
_HEAD_KEYS = ("model.name", "model.conv")
_KIND_KEY_PREFIXES = ("model.match", "distill.", "prune.", "run_kind.")


def _named_elsewhere(key: str) -> bool:
    # Exact for the head keys: model.conv_options.* must still name a DS variant with custom options.
    return key in _HEAD_KEYS or key.startswith(_KIND_KEY_PREFIXES)


def kind_tags(kinds: dict[str, dict[str, Any]]) -> list[str]:
    """Short words for a label: ``KD (alpha=0.5, T=4.0)``, ``equal macs to mnist_cnn``, ``pruned structured``."""
    tags = []
    if "match" in kinds:
        m = kinds["match"]
        tags.append(f"equal {m.get('by') or 'budget'} to {m.get('to') or '?'}")
    if "prune" in kinds:
        p = kinds["prune"]
        epochs = p.get("finetune_epochs")
        tags.append(f"pruned {p.get('method') or ''}".strip() + (f", fine-tuned {epochs} epochs" if epochs else ""))
    if "distill" in kinds:
        d = kinds["distill"]
        tags.append(f"KD (alpha={d.get('alpha')}, T={d.get('temperature')})")
    return tags


def _kind_settings(group: Group) -> tuple[str, ...]:
    return tuple(p for kind in group.kinds for p in KIND_SETTINGS.get(kind, ()))


def _implied_by_model_choice(key: str, groups: list[Group]) -> bool:
    """A model.* key that is constant among groups launched with the same model config."""
    if not key.startswith("model."):
        return False
    values: dict[str, set[str]] = {}
    for group in groups:
        values.setdefault(group.model_choice, set()).add(json.dumps(group.settings.get(key), default=str))
    return all(len(v) == 1 for v in values.values())


def _varying_keys(groups: list[Group]) -> list[str]:
    """Keys whose value differs between groups, not counting the settings a group's kind sets by design."""
    exempt = [_kind_settings(g) for g in groups]
    settings = [g.settings for g in groups]
    keys = sorted({k for s in settings for k in s})
    varying = [
        k
        for k in keys
        if len({json.dumps(s.get(k), default=str) for s, own in zip(settings, exempt) if not k.startswith(own)}) > 1
    ]
    # Put the headline keys first so labels read "model=..., conv=..., ...".
    priority = ["model.name", "model.conv", "dataset.name"]
    return sorted(varying, key=lambda k: (priority.index(k) if k in priority else len(priority), k))


def _conv_label(conv: Any) -> str:
    if isinstance(conv, str) and conv.startswith("["):
        kinds = json.loads(conv)
        return kinds[0] if len(set(kinds)) == 1 else "hybrid " + "/".join(k[:3] for k in kinds)
    return str(conv)


def _short(key: str) -> str:
    return {
        "model.name": "model",
        "model.conv": "conv",
        "dataset.name": "dataset",
        "optimizer.name": "optimizer",
        "activation.name": "activation",
    }.get(key, key.removeprefix("model.conv_options."))
