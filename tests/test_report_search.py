"""The search report's table and corner lines, from hand-made trials with known answers."""

from __future__ import annotations

import json

from dsconv.report.cli import main as report_main
from dsconv.report.search import corner_lines, front_table, write_search_report
from dsconv.search.front import front


def _trial(number, conv, accuracy, cost, corner=None, state="COMPLETE"):
    return {
        "number": number,
        "state": state,
        "conv": conv,
        "kernel_size": [3] * len(conv),
        "depth_multiplier": 1,
        "width": 1.0,
        "label": "-".join(k[0].upper() for k in conv),
        "corner": corner,
        "accuracy": accuracy,
        "cost": cost,
        "cost_metric": "macs_per_image",
    }


TRIALS = [
    _trial(0, ["standard", "standard"], 0.80, 1000.0, "all-standard"),
    _trial(1, ["separable", "separable"], 0.70, 100.0, "all-separable"),
    _trial(2, ["separable", "standard"], 0.85, 400.0),
    _trial(3, ["standard", "separable"], 0.60, 500.0),  # dominated by trial 2
    _trial(4, ["standard", "separable"], None, None, state="FAIL"),
]


def test_front_table_lists_each_stage_and_the_reruns():
    best = front(TRIALS)
    rerun = {"configs": [{"number": 2, "test_accuracy_mean": 0.84, "test_accuracy_std": 0.01, "n": 3}]}
    lines = front_table(best, rerun).splitlines()
    assert lines[0] == "| trial | label | stage 1 | stage 2 | val acc % | macs_per_image | test acc % of the re-runs |"
    assert lines[2] == "| 1 | `S-S` (all-separable) | separable | separable | 70.00 | 100 | — |"
    assert lines[3] == "| 2 | `S-S` | separable | standard | 85.00 | 400 | 84.00 ± 1.00 (n=3) |"
    assert len(lines) == 4  # trials 0 and 3 are dominated, 4 failed


def test_corner_lines_name_the_cheapest_front_point_that_beats_a_corner():
    lines = corner_lines(TRIALS, front(TRIALS))
    assert lines[0].startswith("- all-standard (trial 0: 80.00% val at 1,000) is dominated")
    assert "(trial 2) reaches 85.00% at 400, 2.50x cheaper" in lines[0]
    assert lines[1] == "- all-separable (trial 1: 70.00% val at 100) is on the front."


def test_report_cli_on_committed_search_files(tmp_path):
    source = tmp_path / "search"
    source.mkdir()
    (source / "trials.json").write_text(json.dumps(TRIALS))
    assert report_main([str(source), "--out", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "front.json").read_text())
    assert [t["number"] for t in saved] == [1, 2]
    assert (tmp_path / "out" / "pareto_search.png").stat().st_size > 10_000


def test_a_search_with_no_finished_trial_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "trials.json").write_text(json.dumps([TRIALS[-1]]))
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no completed trial") and err.count("\n") == 1
    assert not (tmp_path / "report.md").exists()


def test_write_search_report_returns_what_it_wrote(tmp_path):
    (tmp_path / "trials.json").write_text(json.dumps(TRIALS))
    written = write_search_report(tmp_path, tmp_path / "out")
    assert written["trials"] == 5 and written["front"] == 2


def test_labels_of_overlapping_front_points_are_merged_once():
    from dsconv.report.search_plot import label_groups

    def point(label, accuracy, cost):
        return {"label": label, "accuracy": accuracy, "cost": cost}

    best = [point("A", 0.70, 100), point("B", 0.702, 110), point("B", 0.702, 110), point("C", 0.80, 120)]
    groups = label_groups(best)  # accuracy range 0.10: A and B are 2% of it apart, C is far above
    assert [(anchor["label"], text) for anchor, text in groups] == [("B", "B\nA"), ("C", "C")]
