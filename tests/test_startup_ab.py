"""scripts/startup_ab.py: which side's tree is byte-compiled, the alternation, and the JSON it writes."""

from __future__ import annotations

import importlib.util
import json

import pytest

from dsconv.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("startup_ab", REPO_ROOT / "scripts" / "startup_ab.py")
startup_ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(startup_ab)


@pytest.fixture
def no_git_no_runs(monkeypatch):
    """Worktrees and runs replaced: record what gets compiled and which side runs when."""
    seen = {"compiled": [], "runs": []}
    monkeypatch.setattr(startup_ab, "short", lambda commit: commit[:7])
    monkeypatch.setattr(startup_ab.subprocess, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(startup_ab.compileall, "compile_dir", lambda path, **kwargs: seen["compiled"].append(path))

    def one_run(tree, out):
        seen["runs"].append(tree.name)
        return {"process_s": 1.0, "startup_s": 0.5, "fit_s": 0.25, "test_accuracy": 0.99}

    monkeypatch.setattr(startup_ab, "one_run", one_run)
    return seen


@pytest.mark.parametrize(
    ("precompile", "compiled"), [("both", ["before", "after"]), ("after", ["after"]), ("none", [])]
)
def test_precompile_names_the_sides_whose_src_is_compiled(no_git_no_runs, tmp_path, precompile, compiled):
    out = tmp_path / "ab.json"
    argv = ["abc1234", "abc1234", "--pairs", "2", "--precompile", precompile, "--json", str(out)]
    assert startup_ab.main(argv) == 0
    assert [path.parent.name for path in no_git_no_runs["compiled"]] == compiled
    assert all(path.name == "src" for path in no_git_no_runs["compiled"])
    assert no_git_no_runs["runs"] == ["before", "after", "before", "after"]
    result = json.loads(out.read_text())
    assert result["command"].endswith(f"byte-compiled src: {precompile})")
    assert [(run["side"], run["repeat"]) for run in result["runs"]] == [
        ("before", 1),
        ("after", 1),
        ("before", 2),
        ("after", 2),
    ]
