"""`make demo` as a newcomer sees it, reduced to one epoch of the CNN pair: a short console that ends
with the report path and the exact TensorBoard command, both pointing at what the demo wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsconv.paths import REPO_ROOT

MODELS = ("mnist_cnn", "mnist_cnn_separable")
MAX_LINES = 40  # the whole console of the full demo must fit; the reduced one has fewer epochs and models


@pytest.mark.slow
def test_reduced_demo_prints_a_short_console_and_the_next_steps(tmp_path):
    if shutil.which("make") is None or not (REPO_ROOT / "Makefile").is_file():
        pytest.skip("needs make and the repository's Makefile")
    demo_dir = tmp_path / "demo"
    command = [
        "make",
        "--no-print-directory",
        "demo",
        "DEMO_DEPS=",  # the package is installed already: no pip run from a test
        f"VENV={sys.prefix}",
        f"DEMO_DIR={demo_dir}",
        "DEMO_EPOCHS=1",
        f"DEMO_MODELS={','.join(MODELS)}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    # One line per epoch per model, one line introducing each model, no Hydra launch lines or warnings.
    assert sum(line.startswith("epoch 1/1 ") for line in lines) == len(MODELS)
    assert sum(line.startswith("model mnist_cnn (conv=") for line in lines) == len(MODELS)
    assert not [line for line in lines if "[HYDRA]" in line or "Warning" in line]
    # The next steps are the last lines and name real paths.
    assert lines[-3:] == [
        "next steps:",
        f"  read the report:  {demo_dir}/report.md",
        f"  open TensorBoard: {sys.prefix}/bin/tensorboard --logdir {demo_dir}",
    ]
    assert (demo_dir / "report.md").is_file()
    assert os.access(Path(sys.prefix) / "bin" / "tensorboard", os.X_OK)
    assert sorted(p.parent.parent.name for p in demo_dir.glob("*/tensorboard/events.out.tfevents.*")) == ["0", "1"]
    # The report's table comes before the next steps and covers the pair.
    assert any(line.startswith("report: ") and "1 standard/separable pairs" in line for line in lines)
