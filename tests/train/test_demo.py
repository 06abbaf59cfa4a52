"""`make demo`'s driver, on the tiny corpus with a 1-layer model: every stage runs and reports."""

from otalign.train.demo import run_demo
from tests.train.conftest import tiny_overrides


def test_demo_runs_every_stage(tiny_corpus, tmp_path, capsys):
    keep = [o for o in tiny_overrides(tiny_corpus, tmp_path / "demo", epochs=1)
            if o.split("=")[0] in {"data.feature_cache_dir", "teacher.cache_dir", "model.overrides", "optim.epochs",
                                   "optim.warmup_steps", "transfer.n_iter"}]
    assert run_demo(str(tmp_path / "demo"), corpus=str(tiny_corpus), overrides=keep) == 0
    printed = capsys.readouterr().out
    assert "alignment plots failed" not in printed
    assert "test_clean" in printed and "CER" in printed
    assert (tmp_path / "demo" / "avg.pt").exists()
    assert list((tmp_path / "demo" / "alignment" / "trained").glob("*.png"))
    assert list((tmp_path / "demo" / "alignment" / "synthetic").glob("*.png"))
