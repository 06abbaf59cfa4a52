"""The results page's verdicts: "beyond the seed spread" has one definition, tested on made-up results."""

import pytest

from otalign.train.experiment import ExperimentConfig
from otalign.train.report import beyond_spread, target_table, write_report


def runs(system, aligner, cers):
    return [{"system": system, "seed": k, "aligner": aligner, "test": {"t": {"cer": c, "wer": 0.5}}}
            for k, c in enumerate(cers)]


def test_beyond_the_spread_means_the_paired_mean_exceeds_the_paired_std():
    assert beyond_spread([-0.03, -0.03 + 1e-9, -0.03 - 1e-9])  # the same change on every seed
    assert not beyond_spread([-0.01, 0.0, -0.02, 0.005])  # mean -0.63, std 1.1 points: within
    assert beyond_spread([0.01, 0.02, 0.03])  # a steady loss is beyond the spread too
    # grid 2's uot_rho0.03 against ot on test_noisy: 3/3 seeds ahead, yet within its spread
    assert not beyond_spread([-0.0008, -0.0017, -0.0102])
    assert beyond_spread([-0.01]) is None and beyond_spread([]) is None


def test_target_table_counts_a_lead_within_the_spread_as_not_beating_ot():
    systems = {"ctc": runs("ctc", "none", [0.30, 0.30, 0.30]),
               "ot": runs("ot", "ot", [0.29, 0.28, 0.27]),
               "uot_a": runs("uot_a", "uot", [0.26, 0.25, 0.24]),   # -3 points against ot on every seed
               "uot_b": runs("uot_b", "uot", [0.29, 0.28, 0.28])}
    order = ["ctc", "ot", "uot_a", "uot_b"]
    assert "its std over the seeds" in target_table(systems, order)[0]
    # beyond: the same lead on every seed, std 0
    assert target_table(systems, order)[-1] == "| t | uot_a | 25.0 ± 1.0 | -16.7% | yes | -3.00 (3 seeds) | 0.00 | yes |"
    # within: ahead on the mean, by less than the change's own std (diffs -1.5, +0.5, -0.5 points)
    systems["uot_a"] = runs("uot_a", "uot", [0.275, 0.285, 0.265])
    assert target_table(systems, order)[-1] == "| t | uot_a | 27.5 ± 1.0 | -8.3% | no | -0.50 (3 seeds) | 1.00 | no |"
    # beyond the spread but behind ot: not beating it
    systems["uot_a"] = runs("uot_a", "uot", [0.30, 0.285, 0.275])
    assert target_table(systems, ["ctc", "ot", "uot_a"])[-1].endswith("| +0.67 (3 seeds) | 0.29 | no |")


@pytest.mark.parametrize("ot_seeds, uot_seeds, delta", [(1, 3, "-0.50 (1 seed)"), (3, 1, "-0.50 (1 seed)"),
                                                        (0, 3, "–")])
def test_target_table_with_one_paired_seed_is_not_measurable(ot_seeds, uot_seeds, delta):
    systems = {"ctc": runs("ctc", "none", [0.30, 0.30, 0.30]), "ot": runs("ot", "ot", [0.29, 0.28, 0.27][:ot_seeds]),
               "uot": runs("uot", "uot", [0.285, 0.20, 0.20][:uot_seeds])}
    row = target_table(systems, ["ctc", "ot", "uot"])[-1]
    assert row.endswith(f"| {delta} | – | not measurable (fewer than 2 paired seeds) |")
    assert target_table({"ctc": systems["ctc"]}, ["ctc"]) == []


def test_the_discussion_key_names_the_hand_written_part_of_the_page(tmp_path):
    (tmp_path / "res/b").mkdir(parents=True)
    (tmp_path / "notes.md").write_text("## Discussion\n\nwritten by hand\n")
    raw = {"systems": {"ctc": {}}, "benchmarks": {"b": {}}, "seeds": [0], "results_dir": str(tmp_path / "res"),
           "discussion": str(tmp_path / "notes.md")}
    write_report(ExperimentConfig.from_dict(raw, "x.yaml"), tmp_path / "out/results.md")
    page = (tmp_path / "out/results.md").read_text()
    assert page.startswith("# Results: experiment") and page.rstrip().endswith("written by hand")
    with pytest.raises(FileNotFoundError, match="discussion: .*missing.md"):
        write_report(ExperimentConfig.from_dict({**raw, "discussion": str(tmp_path / "missing.md")}, "x.yaml"),
                     tmp_path / "out/results.md")
    # without the key, results_discussion.md beside the page is appended if there (docs/results.md's)
    del raw["discussion"]
    (tmp_path / "out/results_discussion.md").write_text("beside the page\n")
    write_report(ExperimentConfig.from_dict(raw, "x.yaml"), tmp_path / "out/results.md")
    assert (tmp_path / "out/results.md").read_text().rstrip().endswith("beside the page")
