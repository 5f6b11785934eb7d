"""Skipping Hydra's mode probe (a whole extra config composition per start) only where it cannot matter."""

from __future__ import annotations

import pytest
import yaml
from hydra._internal.hydra import Hydra

from dsconv.paths import CONF_DIR
from dsconv.train import _without_mode_probe


def test_no_dsconv_config_sets_hydra_mode():
    # The skip relies on this: with no hydra.mode in any config, the probe can only answer None.
    files = sorted(CONF_DIR.rglob("*.yaml"))
    assert len(files) > 20
    for path in files:
        document = yaml.safe_load(path.read_text()) or {}
        assert "mode" not in (document.get("hydra") or {}), f"{path} sets hydra.mode"


def test_the_probe_is_skipped_and_restored():
    probe = Hydra.get_mode
    with _without_mode_probe(["experiment=mnist_speedrun", "trainer.seed=1"]):
        assert Hydra.get_mode is not probe
        assert Hydra.get_mode(object(), config_name="config", overrides=[]) is None
    assert Hydra.get_mode is probe


@pytest.mark.parametrize(
    "argv",
    [["hydra.mode=MULTIRUN"], ["+hydra.searchpath=[file:///tmp/x]"], ["-cd", "/tmp/conf"], ["--config-name=other"]],
)
def test_the_probe_stays_where_the_command_line_can_set_the_mode(argv):
    probe = Hydra.get_mode
    with _without_mode_probe(argv):
        assert Hydra.get_mode is probe


def test_the_probe_comes_back_after_an_error():
    probe = Hydra.get_mode
    with pytest.raises(RuntimeError), _without_mode_probe([]):
        raise RuntimeError("job failed")
    assert Hydra.get_mode is probe
