"""`lam train` as a user runs it (in-process, on the session's Ray): test mode, exit codes, config files."""

import pytest

from lam.commands import main

TINY_FLAGS = ["--sequence_length", "3", "--patch_grid", "8", "--patch_dim", "128", "--embed_dim", "64", "--num_heads", "4",
              "--encoder_depth", "1", "--decoder_depth", "1", "--codebook_dim", "32", "--num_embeddings", "8",
              "--warmup_steps", "10", "--wandb_mode", "disabled", "--log_every", "100"]


@pytest.fixture(scope="module")
def overfit_data(tmp_path_factory):
    from lam.data.manifest import create_manifest, write_manifest
    from lam.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("overfit")
    write_synthetic_dataset(root, files=2, chunks=4, seed=0)
    write_manifest(create_manifest(root, 1.0, 0.0, 0.0), root / "manifest.json")
    return root


@pytest.mark.slow
def test_test_mode_passes_on_a_small_model(ray_session, overfit_data, tmp_path, capsys):
    # The spec's overfit check through its own command (`lam train --test_mode`), with the tiny recipe
    # and enough steps to land well inside the thresholds, not at their edge.
    code = main(["train", "--recipe", "tiny", "--data_dir", str(overfit_data), "--manifest_path", str(overfit_data / "manifest.json"),
                 "--test_mode", "--num_epochs", "100", "--learning_rate", "2e-3", "--storage_path", str(tmp_path)])
    out = capsys.readouterr().out
    assert "-> PASS" in out, out
    assert code == 0


@pytest.mark.slow
def test_test_mode_reports_fail_with_exit_code_1(ray_session, overfit_data, tmp_path, capsys):
    # Impossible: 2 steps at a tiny learning rate leave the model at the copy-last baseline
    # (which on this smooth data is itself under MSE 0.01: the baseline rule makes it FAIL).
    code = main(["train", "--data_dir", str(overfit_data), "--test_mode", "--num_epochs", "2", "--batch_size", "4",
                 "--learning_rate", "1e-7", "--storage_path", str(tmp_path), *TINY_FLAGS])
    assert code == 1
    assert "-> FAIL" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--embed_dim", "30", "--num_heads", "8"], "divisible"),
        (["--batch_size", "0"], "batch_size must be >= 1"),
        (["--precision", "fp8"], "precision must be"),
        (["--batch_size", "5", "--num_workers", "2"], "multiple of num_workers"),
        (["--manifest_path", "/nonexistent/manifest.json"], "manifest does not exist"),
    ],
)
def test_bad_train_settings_exit_2_before_anything_starts(tmp_path, capsys, args, message):
    code = main(["train", "--data_dir", str(tmp_path), "--storage_path", str(tmp_path), *args])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [(["--num_epochs", "0"], "num_epochs must be >= 1"),
                                           (["--num_workers", "0"], "num_workers must be >= 1")])
def test_bad_demo_settings_exit_2_before_any_data_is_written(tmp_path, capsys, args, message):
    code = main(["demo", "--workdir", str(tmp_path), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_unknown_config_key_is_refused(tmp_path, capsys):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("embed_dimm: 3\n")
    assert main(["train", "--config", str(cfg_file)]) == 2
    assert "unknown key 'embed_dimm'" in capsys.readouterr().err


def test_train_help_lists_spec_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ["--data_dir", "--manifest_path", "--test_mode", "--num_epochs", "--batch_size", "--learning_rate", "--sequence_length",
                 "--codebook_dim", "--num_embeddings", "--embed_dim", "--encoder_depth", "--decoder_depth", "--commitment_weight",
                 "--rollout_horizon", "--wandb_project", "--num_workers", "--use_gpu", "--warmup_steps", "--save_every", "--run_name",
                 "--storage_path", "--config", "examples:"]:
        assert flag in out, flag
