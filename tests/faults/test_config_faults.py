"""Config faults: each bad key or file is refused by the schema, naming the key (or file and line)."""

import subprocess
import sys

import pytest

from otalign.train.config import ConfigError, load_config


@pytest.mark.parametrize("override, key", [
    ("transfer.weight=-100", "transfer.weight"),
    ("optim.epochs=2.5", "optim.epochs"),
    ("seed=1.5", "seed"),
    ("data.train_manifests=d", "data.train_manifests"),
    ("transfer.rho_frames=-1", "transfer.rho_frames"),
    ("transfer.eps=-0.1", "transfer.eps"),
    ("transfer.eps=0", "transfer.eps"),
    ("optim.lr=nan", "optim.lr"),
    ("transfer.partial_mass=1.5", "transfer.partial_mass"),
    ("model.dropout=1", "model.dropout"),
    ("transfer.n_iter=0", "transfer.n_iter"),
    ("data.cmvn=yes please", "data.cmvn"),
    ("model.overrides={layers: 2}", "model.overrides.layers"),
    ("optim.no_such_key=1", "optim.no_such_key"),
    ("seed=-1", "seed"),
    ("data.max_batch_seconds=0", "data.max_batch_seconds"),
])
def test_bad_value_is_refused_naming_its_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_broken_yaml_names_the_file_and_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("transfer:\n  aligner: uot\n  eps: [0.1\noptim:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML at line \d+"):
        load_config(recipe)


@pytest.mark.slow
def test_cli_prints_one_line_and_exits_2_for_bad_config(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("optim: {epochs: [1\n")
    done = subprocess.run([sys.executable, "-m", "otalign.cli", "train", "--config", str(recipe)],
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("otalign train: error:") and "broken.yaml" in lines[0] and "line" in lines[0]
