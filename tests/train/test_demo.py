"""`make demo`'s driver, on the tiny corpus: every stage runs and reports, with the demo's own
front end (Whisper tiny.en, 3 layers frozen) and with the from-scratch model it had before."""

import pytest

from otalign.train.demo import run_demo
from tests.train.conftest import FROM_SCRATCH_DEMO, tiny_overrides

FROM_SCRATCH = FROM_SCRATCH_DEMO + ["model.overrides={d_model: 48, num_layers: 1, ff_dim: 96, num_heads: 4}"]


@pytest.mark.slow
@pytest.mark.parametrize("frontend", ["whisper-tiny.en", "fbank"])
def test_demo_runs_every_stage(tiny_corpus, tmp_path, capsys, frontend):
    keep = [o for o in tiny_overrides(tiny_corpus, tmp_path / "demo", epochs=1)
            if o.split("=")[0] in {"data.feature_cache_dir", "teacher.cache_dir", "optim.epochs",
                                   "optim.warmup_steps", "transfer.n_iter"}]
    keep += [f"data.whisper_cache_dir={tmp_path}/whisper_cache"]
    if frontend == "fbank":
        keep += FROM_SCRATCH
    assert run_demo(str(tmp_path / "demo"), corpus=str(tiny_corpus), overrides=keep) == 0
    printed = capsys.readouterr().out
    assert f"training {'tiny Conformer-CTC' if frontend == 'fbank' else 'whisper-tiny.en CTC'} + uot" in printed
    assert "alignment plots failed" not in printed
    assert "test_clean" in printed and "CER" in printed
    assert (tmp_path / "demo" / "avg.pt").exists()
    assert list((tmp_path / "demo" / "alignment" / "trained").glob("*.png"))
    assert list((tmp_path / "demo" / "alignment" / "synthetic").glob("*.png"))


def _trained_model_rows():
    """A sweep as a trained model gives it: every aligner's precision low (~0.1), recall high."""
    rows = [{"aligner": "uniform", "eps": 0.05, "precision": 0.04, "token_recall": 0.0, "coverage": 0.0,
             "mass_on_nonspeech": 0.5}]
    for eps in (0.05, 0.1):
        for k, rho in enumerate((0.1, 0.3, 1.0, 10.0)):
            rows.append({"aligner": "uot", "eps": eps, "rho_frames": rho, "precision": 0.06 + 0.01 * k,
                         "token_recall": 0.86 + 0.03 * k, "coverage": 0.80 + 0.04 * k,
                         "mass_on_nonspeech": 0.4 - 0.05 * k, "speech_fraction": 0.55})
        rows.append({"aligner": "ot", "eps": eps, "precision": 0.05, "token_recall": 0.99, "coverage": 0.95,
                     "mass_on_nonspeech": 0.45, "speech_fraction": 0.55})
        for m in (0.4, 0.8):
            rows.append({"aligner": "partial", "eps": eps, "partial_mass": m, "precision": 0.09 + 0.02 * m,
                         "token_recall": 0.82 + 0.1 * m, "coverage": 0.83, "mass_on_nonspeech": 0.3,
                         "speech_fraction": 0.55})
    return rows


def test_pr_plot_legends_cover_no_point(tmp_path):
    from otalign.align.plots import plot_pr_curves, pr_figure

    fig = pr_figure(_trained_model_rows())
    fig.tight_layout()  # as plot_pr_curves saves it
    fig.canvas.draw()
    checked = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent()
        for line in ax.get_lines():
            xs, ys = line.get_xdata(), line.get_ydata()
            if line.get_marker() in (None, "None", "", " ") or len(xs) == 0:
                continue
            for x, y in ax.transData.transform(list(zip(xs, ys))):
                checked += 1
                assert not box.contains(x, y), f"the legend of '{ax.get_title()}' covers a point at {x:.0f},{y:.0f}"
    assert checked > 10
    import matplotlib.pyplot as plt

    image = plt.imread(plot_pr_curves(_trained_model_rows(), tmp_path / "pr.png"))
    assert image.ndim == 3 and min(image.shape[:2]) > 100 and image[..., :3].std() > 0.01, "a blank or tiny image"
