"""exp_dir reuse and resume-after-a-changed-config faults (checked before any expensive work)."""

import pytest

from otalign.train.checkpoint import ExpDirError, clear_run
from otalign.train.config import load_config, save_config
from otalign.train.trainer import check_exp_dir


def _old_run(exp, overrides=()):
    exp.mkdir(parents=True)
    save_config(load_config(None, [f"exp_dir={exp}", *overrides]), exp / "config.yaml")
    for name in ("epoch_1.pt", "epoch_1.json", "avg.pt", "cmvn.json"):
        (exp / name).write_bytes(b"old")
    (exp / "notes.txt").write_text("mine")


def test_fresh_run_into_a_used_exp_dir_is_refused_naming_folder_and_options(tmp_path):
    exp = tmp_path / "exp"
    _old_run(exp)
    with pytest.raises(ExpDirError, match=r"exp_dir .*exp already holds a training run.*--resume.*--overwrite"):
        check_exp_dir(load_config(None, [f"exp_dir={exp}"]), resume=False, overwrite=False, force=False)


def test_resume_with_a_changed_model_or_data_key_is_refused_naming_each_key(tmp_path):
    exp = tmp_path / "exp"
    _old_run(exp, ["transfer.aligner=uot"])
    new = load_config(None, [f"exp_dir={exp}", "transfer.aligner=none", "transfer.rho_frames=0.1",
                             "data.train_manifests=[other.jsonl]", "optim.epochs=20"])
    with pytest.raises(ExpDirError) as caught:
        check_exp_dir(new, resume=True, overwrite=False, force=False)
    text = str(caught.value)
    for key in ("transfer.aligner", "transfer.rho_frames", "data.train_manifests"):
        assert key in text
    assert "optim.epochs" not in text  # training longer is what a resume is for
    assert set(check_exp_dir(new, resume=True, overwrite=False, force=True)) >= {"transfer.aligner", "optim.epochs"}


def test_overwrite_clears_only_the_run_files(tmp_path):
    exp = tmp_path / "exp"
    _old_run(exp)
    (exp / "tensorboard").mkdir()
    outside = tmp_path / "keep.pt"
    outside.write_bytes(b"x")
    clear_run(exp)
    assert sorted(p.name for p in exp.iterdir()) == ["notes.txt"] and outside.exists()
