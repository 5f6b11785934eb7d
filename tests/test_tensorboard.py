"""TensorBoard as a user sees it: two tiny runs of a sweep dir, served by the real server on 127.0.0.1
and read back through its HTTP data API (the same JSON the dashboards draw from)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dsconv.evaluation.run_outputs import SCALAR_LAYOUT, pr_curve_tag
from dsconv.train import train
from support import TINY_RUN, compose_config

RUNS = ["0/tensorboard", "1/tensorboard"]
# The second run has a key the first lacks: the HParams table must still list it (no experiment
# summary from the first run fixing the columns).
OVERRIDES = [
    ["model.conv=standard", "optimizer.lr=0.001"],
    ["model.conv=separable", "optimizer.lr=0.002", "+model.conv_options.skip=true"],
]
SCALARS = {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "final/test_accuracy"}
FIGURES = ("confusion_matrix", "sample_predictions", "curves")
POLLS = 120  # x 0.5 s: bounds the wait for the server to start and to load the logdir
# urllib would route through a proxy from the environment; the server is local only.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, list[dict[str, Any]], str]:
    root = tmp_path_factory.mktemp("sweep")
    metrics = [
        train(compose_config([*TINY_RUN, "trainer.epochs=1", "profile_inference=false", *extra]), root / str(index))
        for index, extra in enumerate(OVERRIDES)
    ]
    with tensorboard_server(root, tmp_path_factory.mktemp("tensorboard")) as url:
        # The server loads the logdir in the background: wait until both runs are complete.
        _poll(lambda: _loaded(url))
        yield root, metrics, url


def _loaded(url: str) -> bool:
    """Both runs read to their end: the final metrics and the PR curves are among the last records."""
    scalars, pr_curves = _get(url, "/data/plugin/scalars/tags"), _get(url, "/data/plugin/pr_curves/tags")
    return all("final/test_accuracy" in scalars.get(run, {}) and pr_curves.get(run) for run in RUNS)


@contextmanager
def tensorboard_server(logdir: Path, scratch: Path) -> Iterator[str]:
    """``tensorboard --logdir DIR --port 0 --host 127.0.0.1``; yields its URL, always stops it."""
    log_path = scratch / "tensorboard.log"
    with log_path.open("w") as log_file:
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", "0"]
        proc = subprocess.Popen([*command, "--host", "127.0.0.1"], stdout=log_file, stderr=subprocess.STDOUT)
        try:
            # "TensorBoard 2.x at http://127.0.0.1:PORT/ (Press CTRL+C to quit)" names the port it got.
            match = _poll(lambda: proc.poll() is None and re.search(r"http://127\.0\.0\.1:\d+", log_path.read_text()))
            assert match, f"tensorboard did not start: {log_path.read_text()[-2000:]}"
            yield match.group(0)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _poll(check):
    for _ in range(POLLS):
        result = check()
        if result:
            return result
        time.sleep(0.5)
    return check()


def _get(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with HTTP.open(f"{url}{path}{query}", timeout=30) as response:
        body = response.read()
    return json.loads(body) if response.headers.get_content_type() == "application/json" else body


def _post(url: str, path: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{url}{path}", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with HTTP.open(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_each_run_appears_once_with_train_val_scalars_on_shared_charts(sweep):
    _, _, url = sweep
    assert sorted(_get(url, "/data/runs")) == RUNS  # no hparams sub-run next to either run
    tags = _get(url, "/data/plugin/scalars/tags")
    for run in RUNS:
        assert set(tags[run]) >= SCALARS, sorted(tags[run])
    layout = _get(url, "/data/plugin/custom_scalars/layout")
    charts = {chart["title"]: chart["multiline"]["tag"] for cat in layout["category"] for chart in cat["chart"]}
    assert charts == {"loss": ["loss/train", "loss/val"], "accuracy": ["accuracy/train", "accuracy/val"]}
    assert SCALAR_LAYOUT["train vs val"]["loss"][1] == charts["loss"]


@pytest.mark.slow
def test_hparams_table_lists_every_run_with_its_hparams_and_final_metrics(sweep):
    _, metrics, url = sweep
    experiment = _post(url, "/data/plugin/hparams/experiment", {})
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"model.name", "model.conv", "optimizer.lr", "trainer.epochs", "model.conv_options.skip"} <= names
    metric_tags = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"final/test_accuracy", "final/best_val_acc", "accuracy/val", "loss/val"} <= metric_tags
    request = {
        "startIndex": 0,
        "sliceSize": 10,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": "model.name"}],
    }
    listed = _post(url, "/data/plugin/hparams/session_groups", request)["sessionGroups"]
    groups = {group["name"]: group for group in listed}
    assert sorted(groups) == RUNS
    for run, run_metrics, lr, conv in zip(RUNS, metrics, (0.001, 0.002), ("standard", "separable")):
        group = groups[run]
        assert group["hparams"]["model.name"] == "mnist_cnn"
        assert group["hparams"]["model.conv"] == conv
        assert group["hparams"]["optimizer.lr"] == pytest.approx(lr)
        assert group["hparams"]["trainer.fast"] == "false"
        assert [session["status"] for session in group["sessions"]] == ["STATUS_SUCCESS"]
        values = {value["name"]["tag"]: value["value"] for value in group["metricValues"]}
        assert values["final/test_accuracy"] == pytest.approx(run_metrics["test_accuracy"], abs=1e-6)
        assert values["final/params_total"] == run_metrics["params_total"]
    assert "model.conv_options.skip" in groups[RUNS[1]]["hparams"]
    assert "model.conv_options.skip" not in groups[RUNS[0]]["hparams"]


@pytest.mark.slow
def test_per_class_pr_curves_and_figures_are_served(sweep):
    root, _, url = sweep
    report = json.loads((root / "0" / "classification_report.json").read_text())
    classes = [name for name, row in report.items() if isinstance(row, dict) and not name.endswith(" avg")]
    assert len(classes) == 10
    expected = {pr_curve_tag(index, name) for index, name in enumerate(classes)}
    pr_tags = _get(url, "/data/plugin/pr_curves/tags")
    for run in RUNS:
        assert set(pr_tags[run]) == expected
    curves = _get(url, "/data/plugin/pr_curves/pr_curves", run=RUNS[0], tag=pr_curve_tag(0, classes[0]))
    (entry,) = curves[RUNS[0]]
    assert len(entry["precision"]) == len(entry["recall"]) > 1
    image_tags = _get(url, "/data/plugin/images/tags")
    assert set(image_tags[RUNS[0]]) == {f"test/{name}" for name in FIGURES}
    for name in FIGURES:  # the served image is the PNG next to the run, byte for byte (rendered once)
        (meta,) = _get(url, "/data/plugin/images/images", run=RUNS[0], tag=f"test/{name}")
        served = _get(url, "/data/plugin/images/individualImage?" + meta["query"])
        assert served == (root / "0" / f"{name}.png").read_bytes()


def test_failed_run_ends_its_hparams_session_as_failed(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata
    from torch.utils.tensorboard import SummaryWriter

    from dsconv.evaluation.run_outputs import log_session_end, log_session_start

    writer = SummaryWriter(log_dir=str(tmp_path))
    log_session_start(writer, {"model.name": "mnist_cnn", "optimizer.lr": 0.5, "trainer.fast": True})
    log_session_end(writer, {}, 1, succeeded=False)
    writer.close()
    assert len(list(tmp_path.iterdir())) == 1  # one event file: nothing opened a second writer or a sub-run
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["model.name"].string_value == "mnist_cnn"
    assert start.hparams["optimizer.lr"].number_value == 0.5
    assert start.hparams["trainer.fast"].string_value == "true"
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.Status.Value("STATUS_FAILURE")
    assert metadata.EXPERIMENT_TAG not in content


def test_the_summary_writer_opens_at_the_first_epoch_end_not_before_the_first_step(tmp_path):
    """Start-up: importing TensorBoard and opening its writer wait until an epoch has something to log."""
    from dsconv.data import load_dataset
    from dsconv.registry import build_model
    from dsconv.training.run_writer import RunWriter

    cfg = compose_config(TINY_RUN)
    data = load_dataset(cfg.dataset, tmp_path)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    writer = RunWriter(cfg, tmp_path)
    writer.on_start(model, data, data.val.images[:2].float(), resume_epoch=None)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "model_summary.txt").is_file()
    assert writer.tensorboard is None and not (tmp_path / "tensorboard").exists()
    row = {"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "train_acc": 0.5, "val_acc": 0.4, "lr": 0.1}
    writer.on_epoch_end({**row, "images_per_s": 100.0, "epoch_time_s": 1.0})
    assert writer.tensorboard is not None and list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    writer.tensorboard.close()
