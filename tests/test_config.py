"""Config, recipes and flags: precedence, the old boolean keys, help text from the fields' own docs."""

from __future__ import annotations

import dataclasses
from argparse import ArgumentParser

import pytest
import yaml

from lam.commands import main
from lam.commands.flags import add_config_flags, config_from_args
import lam.config as lam_config
from lam.config import MultistepSettings
from lam.config import DEPRECATED_KEYS, ModelConfig, RunConfig, SweepConfig, apply_overrides, flat_fields, load_yaml
from lam.errors import UserError
from lam.recipes import RECIPES, recipe_config


def parse(*argv: str) -> RunConfig:
    parser = ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_yaml_config_with_cli_overrides_and_saved_resolved_config(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": {"data_dir": "D", "sequence_length": 4}, "model": {"embed_dim": 64}, "batch_size": 8}))
    cfg = parse("--config", str(cfg_file), "--embed-dim", "32", "--rollout", "multistep", "--learning_rate", "3e-4", "--quantizer", "fsq")
    assert (cfg.data.data_dir, cfg.data.sequence_length, cfg.model.embed_dim, cfg.train.batch_size) == ("D", 4, 32, 8)
    assert cfg.model.rollout == "multistep" and cfg.train.learning_rate == 3e-4 and cfg.model.quantizer == "fsq"
    assert cfg.train.num_epochs == 100 and cfg.model.num_embeddings == 12  # spec defaults elsewhere
    # the saved resolved config loads back to the same config
    saved = tmp_path / "saved.yaml"
    saved.write_text(yaml.safe_dump(cfg.to_dict()))
    assert RunConfig.from_dict(load_yaml(saved)) == cfg


def test_recipes_are_valid_configs_and_the_spec_recipe_is_the_defaults():
    assert recipe_config("spec") == RunConfig()
    for name in RECIPES:
        cfg = recipe_config(name)
        cfg.data.data_dir = "D"
        cfg.validate()
    demo = recipe_config("demo").model
    assert (demo.stem, demo.action_head, demo.quantizer, demo.whiten, demo.motion_moments) == ("diff", "token+motion", "fsq", True, "patches")
    real = recipe_config("real")  # the demo's model and training, with the continuous bottleneck and the shifts
    assert real.model.quantizer == "gaussian" and real.model.quantizer_settings.noise_std > 0
    assert (real.model.frame_correlation, real.model.prediction) == ("phase+change", "shifted-local")
    assert (real.model.stem, real.model.embed_dim, real.data.sequence_length, real.train.num_epochs) == \
        (demo.stem, demo.embed_dim, recipe_config("demo").data.sequence_length, recipe_config("demo").train.num_epochs)
    with pytest.raises(UserError, match="unknown recipe 'nope'; choose one of spec, demo, real, tiny"):
        recipe_config("nope")


def test_precedence_is_recipe_then_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("embed_dim: 64\nnum_epochs: 3\n")
    cfg = parse("--recipe", "demo", "--config", str(cfg_file), "--num_epochs", "7")
    assert cfg.model.quantizer == "fsq" and cfg.data.sequence_length == 3  # from the recipe
    assert cfg.model.embed_dim == 64  # the YAML over the recipe
    assert cfg.train.num_epochs == 7  # the flag over both


@pytest.mark.parametrize("start, old, expected", [
    ("spec", {"fsq": True}, dict(quantizer="fsq")),
    ("demo", {"fsq": False}, dict(quantizer="vq")),
    ("spec", {"standardize_z": True}, dict(whiten=True)),
    ("spec", {"diff_motion_stem": True}, dict(stem="diff")),
    ("spec", {"motion_to_code": True}, dict(action_head="token+motion")),
    ("spec", {"motion_code_only": True}, dict(action_head="motion")),  # implied motion_to_code
    ("spec", {"motion_code_only": True, "motion_to_code": False}, dict(action_head="motion")),
    ("demo", {"motion_to_code": False}, dict(action_head="token")),
    ("demo", {"motion_code_only": True}, dict(action_head="motion")),
    ("spec", {"fsq": True, "quantizer": "vq"}, dict(quantizer="vq")),  # a current key given beside an old one wins
    ("spec", {"use_rollout": True}, dict(rollout="multistep")),
    ("spec", {"use_rollout": True, "rollout_horizon": 3}, dict(rollout="multistep", rollout_settings=MultistepSettings(rollout_horizon=3))),
])
def test_old_boolean_keys_map_onto_the_named_parts(start, old, expected):
    cfg = apply_overrides(recipe_config(start), old, source="test", warn_deprecated=False)
    assert {k: getattr(cfg.model, k) for k in expected} == expected


def test_old_boolean_flags_still_work_with_a_one_line_warning(capsys):
    cfg = parse("--fsq", "--standardize_z", "--diff-motion-stem", "--motion_to_code")
    assert (cfg.model.quantizer, cfg.model.whiten, cfg.model.stem, cfg.model.action_head) == ("fsq", True, "diff", "token+motion")
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line == "lam: warning: command line: 'fsq' is deprecated; use quantizer: fsq (false: vq)" for line in err)
    assert all(line.startswith("lam: warning:") for line in err)


def test_an_old_yaml_config_still_loads(tmp_path):
    cfg_file = tmp_path / "old.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": {"fsq": True, "motion_code_only": True, "num_codes": 1}}))
    cfg = parse("--config", str(cfg_file))
    assert (cfg.model.quantizer, cfg.model.action_head, cfg.model.num_codes) == ("fsq", "motion", 1)


@pytest.mark.parametrize("given, expected", [(True, "patches"), (False, "none"), ("true", "patches"), ("false", "none"),
                                             ("pixels", "pixels"), ("patches+pixels", "patches+pixels")])
def test_motion_moments_takes_its_names_and_the_booleans_it_once_was(given, expected, tmp_path):
    assert apply_overrides(recipe_config("spec"), {"motion_moments": given}, source="test").model.motion_moments == expected
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": {"motion_moments": given}}))
    assert parse("--config", str(cfg_file)).model.motion_moments == expected
    assert parse("--motion_moments", str(given).lower()).model.motion_moments == expected


def test_an_unknown_part_name_is_refused_by_the_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--stem", "rgb")
    assert e.value.code == 2 and "invalid choice: 'rgb'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="model.stem must be one of pair, diff; got 'rgb'"):
        ModelConfig(stem="rgb").validate()


@pytest.mark.parametrize("command", ["train", "tune"])
def test_help_describes_every_flag_with_its_default_in_sections(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    out = "".join(text.split())  # argparse wraps lines, also at hyphens
    for title in ("data options", "model options", "training options", "scaling options", "outputs and logging options"):
        assert f"\n{title}:\n" in text
    fields = [f for _, f in flat_fields().values()] + (list(dataclasses.fields(SweepConfig)) if command == "tune" else [])
    for f in fields:
        help_text = "".join(f"{f.metadata['help']} (default: {f.default!r}".split())  # a recipe's own may follow
        assert f"--{f.name}" in out and help_text in out, f.name
    for name, recipe in RECIPES.items():
        assert f"  {name:<6} {recipe.summary}\n" in text
    for name in DEPRECATED_KEYS:
        assert f"--{name}" in out


def test_the_configuration_reference_names_every_field():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    fields = [name for name in flat_fields()] + [f.name for f in dataclasses.fields(SweepConfig)]
    assert [name for name in fields if f"`{name}`" not in text] == []


def test_whitening_with_fewer_vectors_a_step_than_dims_is_refused_at_start_up():
    from lam.recipes import recipe_config

    cfg = recipe_config("real")
    cfg.data.data_dir = "d"
    cfg.validate()  # 16 windows x 2 transitions = 32 vectors of 4 dims
    cfg.model.quantizer_settings.codebook_dim = 32
    with pytest.raises(UserError, match=r"whiten needs more action vectors per step than each has dims: .* 32 vectors for codebook_dim 32"):
        cfg.validate()
    cfg.model.whiten, cfg.model.quantizer_settings.kl_weight = False, 0.1  # a large continuous action with the KL bottleneck instead
    cfg.validate()
    cfg.model.whiten = True
    apply_overrides(cfg, {"quantizer": "fsq"}, "test")  # FSQ whitens its few grid dims, and has no codebook_dim
    cfg.validate()


# ----------------------------------------------------------------------------- a component's own settings


@pytest.mark.parametrize("args, message", [
    (["--quantizer", "fsq", "--noise_std", "0.3"], "'noise_std' is a setting of the gaussian quantizer; quantizer fsq does not use it"),
    (["--commitment_weight", "0.3", "--quantizer", "gaussian"],
     "'commitment_weight' is a setting of the vq quantizer; quantizer gaussian does not use it"),
    (["--recipe", "demo", "--codebook_dim", "16"], "'codebook_dim' is a setting of the vq and gaussian quantizers; quantizer fsq does not use it"),
])
def test_a_setting_the_chosen_quantizer_does_not_read_exits_2_in_one_line_naming_both(tmp_path, capsys, args, message):
    code = main(["train", "--data_dir", str(tmp_path), "--storage_path", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_yaml_file_with_a_setting_its_quantizer_does_not_read_is_refused_naming_the_file(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": {"quantizer": "vq", "kmeans_samples": 512}}))
    with pytest.raises(UserError, match=f"{cfg_file}: 'kmeans_samples' is a setting of the gaussian quantizer; quantizer vq"):
        parse("--config", str(cfg_file))


def test_settings_follow_their_quantizer_whatever_the_order_and_a_new_choice_starts_from_its_defaults():
    cfg = parse("--noise_std", "0.3", "--quantizer", "gaussian", "--codebook_dim", "8")  # the choice is applied first
    assert cfg.model.quantizer_settings == lam_config.GaussianSettings(codebook_dim=8, noise_std=0.3)
    real = recipe_config("real").model.quantizer_settings
    assert (real.codebook_dim, real.noise_std) == (4, 0.5)
    switched = parse("--recipe", "real", "--quantizer", "vq")  # the recipe's gaussian settings are not vq's
    assert switched.model.quantizer_settings == lam_config.VQSettings()
    assert parse("--recipe", "real", "--quantizer", "gaussian").model.quantizer_settings == real  # the same choice keeps them
    assert parse("--recipe", "real", "--fsq").model.quantizer_settings == lam_config.FSQSettings()  # so does the old boolean


def test_a_config_written_in_full_by_an_older_version_loads_and_keeps_only_what_its_quantizer_reads():
    """Older versions listed every quantizer's settings, at their defaults unless a user set one
    (which the model then ignored): the defaults pass, a changed value is named."""
    old = {"quantizer": "fsq", "num_embeddings": 9, "codebook_dim": 128, "commitment_weight": 0.25, "dead_code_steps": 100,
           "noise_std": 0.5, "kl_weight": 0.0, "kmeans_samples": 4096}
    cfg = RunConfig.from_dict({"model": old}, source="old.yaml")
    assert cfg.model.quantizer_settings == lam_config.FSQSettings() and cfg.model.num_embeddings == 9
    assert "codebook_dim" not in cfg.to_dict()["model"]
    with pytest.raises(UserError, match="old.yaml: 'noise_std' is a setting of the gaussian quantizer; quantizer fsq"):
        RunConfig.from_dict({"model": {**old, "noise_std": 0.9}}, source="old.yaml")
    dropped = RunConfig.from_dict({"model": {**old, "noise_std": 0.9}}, source="checkpoint", unused="drop")
    assert dropped.model == cfg.model


def test_every_quantizer_name_has_its_settings_class_and_the_registry_is_built_from_them():
    from lam.model.quantize import QUANTIZERS

    assert {name: cls.settings for name, cls in QUANTIZERS.items()} == lam_config.QUANTIZER.choices
    with pytest.raises(TypeError, match="no class for"):
        lam_config.QUANTIZER.registry(QUANTIZERS["vq"], QUANTIZERS["fsq"])


def test_the_forward_targets_settings_are_its_own_too():
    cfg = parse("--latent_ema", "0.9", "--forward_target", "pixels+latent")
    assert cfg.model.forward_target_settings == lam_config.PixelsLatentSettings(latent_ema=0.9)
    with pytest.raises(UserError, match="'latent_depth' is a setting of the pixels\\+latent forward_target; forward_target pixels does not use it"):
        parse("--latent_depth", "2")
    with pytest.raises(ValueError, match=r"model.latent_ema must be in \[0, 1\)"):
        ModelConfig(forward_target="pixels+latent", forward_target_settings=lam_config.PixelsLatentSettings(latent_ema=1.0)).validate()
    from lam.model.latent_target import FORWARD_TARGETS

    assert {name: part.settings if part else lam_config.PixelsSettings for name, part in FORWARD_TARGETS.items()} == \
        lam_config.FORWARD_TARGET.choices


def test_compile_mode_takes_torch_compiles_modes_only():
    cfg = recipe_config("tiny")
    cfg.data.data_dir = "d"
    for mode in ("default", "max-autotune", "max-autotune-no-cudagraphs"):
        cfg.train.compile_mode = mode
        cfg.validate()
    cfg.train.compile_mode = "fast"
    with pytest.raises(UserError, match="compile_mode must be one of default, max-autotune, max-autotune-no-cudagraphs, got 'fast'"):
        cfg.validate()
