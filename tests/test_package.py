"""The package installs as a user gets it: a wheel that carries every config and runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dsconv.paths import CONF_DIR, REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO_ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (built,) = out.glob("dsconv-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked into its own directory (dependencies come from this environment)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-compile",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return target


def test_wheel_holds_every_config_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(CONF_DIR.parents[1]).as_posix() for p in CONF_DIR.rglob("*.yaml"))
    assert len(configs) > 40
    missing = [c for c in configs if c not in names]
    assert missing == []


def _run_installed(installed: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # The unpacked wheel comes first on the path, and the command runs outside the checkout: configs must
    # come from the installed package, not from src/.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("DSCONV_CONF_DIR", None)
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_installed_package_runs_from_any_directory(installed, tmp_path):
    where = _run_installed(installed, tmp_path, "-c", "import dsconv.paths as p; print(p.CONF_DIR)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == (installed / "dsconv" / "conf").resolve()

    help_ = _run_installed(installed, tmp_path, "-m", "dsconv.train", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "model" in help_.stdout and "dataset" in help_.stdout

    job = _run_installed(installed, tmp_path, "-m", "dsconv.train", "--cfg", "job", "model=densenet4")
    assert job.returncode == 0, job.stderr
    assert "name: densenet4" in job.stdout

    bench = _run_installed(installed, tmp_path, "-m", "dsconv.benchmark.cli", "--cfg", "job")
    assert bench.returncode == 0, bench.stderr
    assert "models:" in bench.stdout

    report = _run_installed(installed, tmp_path, "-m", "dsconv.report.cli", str(tmp_path / "nothing-here"))
    assert report.returncode == 2
    assert report.stderr.startswith("error:") and len(report.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # nothing ran, nothing was written
