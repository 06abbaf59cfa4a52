import math

import pytest
import torch

from otalign.train.config import load_config


def test_defaults_validate_and_overrides_apply(tmp_path):
    recipe = tmp_path / "x.yaml"
    recipe.write_text("transfer:\n  aligner: ot\noptim:\n  epochs: 3\n")
    config = load_config(recipe, ["transfer.rho_frames=0.25", "optim.lr=1e-4", "transfer.aligner=uot"])
    assert config.transfer.aligner == "uot"
    assert config.transfer.rho_frames == 0.25
    assert config.optim.lr == pytest.approx(1e-4)
    assert config.optim.epochs == 3


def test_inf_override_is_parsed_as_infinity():
    assert math.isinf(load_config(None, ["transfer.rho_frames=inf"]).transfer.rho_frames)


def test_unknown_key_is_named_in_the_error(tmp_path):
    recipe = tmp_path / "x.yaml"
    recipe.write_text("transfer:\n  rho_frame: 1.0\n")
    with pytest.raises(ValueError, match="transfer.rho_frame"):
        load_config(recipe)
    with pytest.raises(ValueError, match="optim.learning_rate"):
        load_config(None, ["optim.learning_rate=3"])


def test_bad_values_and_missing_file_are_errors(tmp_path):
    with pytest.raises(ValueError, match="transfer.aligner"):
        load_config(None, ["transfer.aligner=sinkhorn"])
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["transfer.aligner"])


def test_every_shipped_recipe_loads():
    from pathlib import Path

    import yaml

    from otalign.train.config import to_dict

    def leaves(tree, path=()):
        if isinstance(tree, dict):
            for key, value in tree.items():
                yield from leaves(value, path + (key,))
        else:
            yield path, tree

    recipes = [r for r in sorted(Path(__file__).resolve().parents[2].glob("conf/*.yaml"))
               if not r.name.startswith("experiment")]
    assert "demo.yaml" in [r.name for r in recipes], "the glob found no training recipe: nothing was checked"
    for recipe in recipes:
        loaded = to_dict(load_config(recipe))
        for path, value in leaves(yaml.safe_load(recipe.read_text())):  # every key the recipe sets is kept
            got = loaded
            for key in path:
                got = got[key]
            assert got == value, (recipe.name, ".".join(path), got, value)


def test_quantity_weight_reaches_the_cif_aligner_and_rejects_negatives():
    from otalign.train.trainer import build_trainable

    config = load_config(None, ["transfer.aligner=cif", "transfer.quantity_weight=0.01", "model.preset=tiny"])
    trainable = build_trainable(config, vocab_size=30, plm_width=16)
    assert trainable.transfer.aux_weights["quantity"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="quantity_weight"):
        load_config(None, ["transfer.quantity_weight=-1"])


def test_adapter_hidden_builds_an_mlp_adapter_and_rejects_zero():
    from otalign.train.trainer import build_trainable

    linear = build_trainable(load_config(None, ["transfer.aligner=uot", "model.preset=tiny"]), 30, 16)
    mlp = build_trainable(load_config(None, ["transfer.aligner=uot", "transfer.adapter_hidden=64",
                                             "model.preset=tiny"]), 30, 16)
    hidden_widths = [m.out_features for m in mlp.transfer.adapter.proj if isinstance(m, torch.nn.Linear)]
    assert hidden_widths == [64, 16]
    assert sum(isinstance(m, torch.nn.Linear) for m in linear.transfer.adapter.proj) == 1
    with pytest.raises(ValueError, match="adapter_hidden"):
        load_config(None, ["transfer.adapter_hidden=0"])
    with pytest.raises(ValueError, match="adapter_hidden"):
        load_config(None, ["transfer.adapter_hidden=wide"])


def test_teacher_center_reaches_the_cache_and_must_be_a_bool(tmp_path):
    from otalign.text.cache import targets_from_config

    config = load_config(None, ["teacher.center=true", "transfer.aligner=uot", f"teacher.cache_dir={tmp_path}"])
    assert config.teacher.center is True
    assert targets_from_config(config.teacher).center is True
    with pytest.raises(ValueError, match="teacher.center"):
        load_config(None, ["teacher.center=maybe"])
