"""The action-quality benchmark: its ceiling learns from the true actions, and one tiny run end to end."""

from __future__ import annotations

import json

import pytest

from bench.idm import fit_inverse_dynamics
from lam.data.manifest import create_manifest, load_manifest, write_manifest
from lam.data.synth import write_synthetic_dataset


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """12 synthetic videos of 16 latent frames, split 6/3/3 by file, in a data root as bench.quality keeps it."""
    root = tmp_path_factory.mktemp("quality_data")
    data = root / "synthetic"
    write_synthetic_dataset(data, files=12, chunks=8, seed=0)
    write_manifest(create_manifest(data, 0.5, 0.25, 0.25, seed=0), data / "manifest.json")
    return root


def test_the_ceiling_beats_chance_on_a_small_dataset(small_world):
    manifest = load_manifest(small_world / "synthetic" / "manifest.json")
    result = fit_inverse_dynamics(manifest, seed=0, max_steps=120, eval_every=20, minutes=4.0, progress=False)
    assert result["stopped"] in ("patience", "max_steps") and result["minutes"] == 4.0  # no time cap reached on a small dataset
    assert result["transitions"] == {"train": 90, "val": 45, "test": 45}
    chance = 1 / 5 + 0.15  # five actions; the majority class of 45 held-out transitions stays well under this
    assert result["test_accuracy"] > chance, result


@pytest.mark.slow
def test_one_seed_end_to_end_writes_the_report_and_the_table(ray_session, small_world, tmp_path, capsys):
    from bench.quality import main

    out = tmp_path / "quality.json"
    code = main(["--recipe", "tiny", "--datasets", "synthetic", "--seeds", "1", "--epochs", "1", "--minutes", "0.1",
                 "--ceiling_minutes", "0.1", "--data_root", str(small_world), "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    run = report["datasets"]["synthetic"]
    assert run["epochs"] == 1 and len(run["per_seed"]) == 1
    seed = run["per_seed"][0]
    for part in ("untrained", "ours"):
        assert 0 <= seed[part]["probe_accuracy"] <= 1 and 0 <= seed[part]["nmi"] <= 1, part
        assert seed[part]["action_ids_used"] >= 1 and seed[part]["mse_vs_copy_last"] > 0
    assert 0 <= seed["ceiling"]["test_accuracy"] <= 1
    assert run["summary"]["ours"]["probe_accuracy"]["std"] == 0.0  # one seed
    table = capsys.readouterr().out.split("[quality] report")[0]
    assert any(line.startswith("synthetic ") for line in table.splitlines())  # the table's row

    # --extend keeps the earlier seeds below --seeds as they were, and trains none of them again
    earlier = dict(report, datasets={"synthetic": dict(run, per_seed=[seed, dict(seed, seed=5)])})
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    extended = tmp_path / "extended.json"
    code = main(["--recipe", "tiny", "--datasets", "synthetic", "--seeds", "1", "--epochs", "1", "--minutes", "0.1",
                 "--extend", str(tmp_path / "earlier.json"), "--data_root", str(small_world),
                 "--workdir", str(tmp_path / "work2"), "--out", str(extended)])
    assert code == 0
    assert "training" not in capsys.readouterr().out
    kept = json.loads(extended.read_text())
    assert kept["datasets"]["synthetic"]["per_seed"] == [seed]  # seed 5 is not among 0..0
    assert seed["commit"] == report["machine"]["commit"] and kept["extends"] == [{"report": str(tmp_path / "earlier.json"),
                                                                                  "commit": report["machine"]["commit"]}]
    assert kept["datasets"]["synthetic"]["summary"] == run["summary"]

    # two reports merge: the same run of a seed in both is kept once; a different one is an error
    seed1 = dict(seed, seed=1, ours=dict(seed["ours"], probe_accuracy=0.5))
    (tmp_path / "other.json").write_text(json.dumps(dict(report, datasets={"synthetic": dict(run, per_seed=[seed, seed1])})))
    merged_path = tmp_path / "merged.json"
    assert main(["--recipe", "tiny", "--datasets", "synthetic", "--seeds", "2", "--epochs", "1", "--minutes", "0.1",
                 "--extend", str(tmp_path / "earlier.json"), "--extend", str(tmp_path / "other.json"), "--data_root", str(small_world),
                 "--workdir", str(tmp_path / "work3"), "--out", str(merged_path)]) == 0
    assert "training" not in capsys.readouterr().out
    merged = json.loads(merged_path.read_text())["datasets"]["synthetic"]
    assert merged["per_seed"] == [seed, seed1]
    assert merged["summary"]["ours"]["probe_accuracy"]["mean"] == (seed["ours"]["probe_accuracy"] + 0.5) / 2
    (tmp_path / "clash.json").write_text(json.dumps(dict(report, datasets={"synthetic": dict(run, per_seed=[dict(seed, nmi_note=1)])})))
    assert main(["--recipe", "tiny", "--datasets", "synthetic", "--seeds", "1", "--epochs", "1", "--extend", str(tmp_path / "earlier.json"),
                 "--extend", str(tmp_path / "clash.json"), "--data_root", str(small_world), "--out", str(tmp_path / "x.json")]) == 2
    assert "synthetic seed 0 differs from the run of that seed in" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    from bench.quality import main

    assert main(["--datasets", "nope", "--data_root", str(tmp_path)]) == 2
    assert "unknown datasets ['nope']" in capsys.readouterr().err
    assert main(["--set", "embed_dim=30", "num_heads=8", "--datasets", "synthetic", "--data_root", str(tmp_path)]) == 2
    assert "divisible" in capsys.readouterr().err
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"recipe": "tiny", "overrides": {"embed_dim": "64"}, "machine": {"commit": "x"}, "datasets": {}}))
    assert main(["--recipe", "tiny", "--extend", str(earlier), "--datasets", "synthetic", "--data_root", str(tmp_path)]) == 2
    assert f"--extend {earlier}: it is of recipe 'tiny' with --set {{'embed_dim': '64'}}" in capsys.readouterr().err
    assert main(["--recipe", "tiny", "--extend", str(tmp_path / "none.json"), "--datasets", "synthetic", "--data_root", str(tmp_path)]) == 2
    assert "cannot read the report" in capsys.readouterr().err


def untrained_checkpoint(world, folder, **model_keys):
    """The tiny recipe's model on `world`, untrained (its seed's weights, ids fitted as bench.quality
    fits its floor's): a checkpoint whose scores must equal the floor's."""
    from bench.quality import untrained_model
    from helpers import tiny_config
    from lam.runtime.checkpoint import save_checkpoint

    cfg = tiny_config(world, folder, **model_keys)
    return save_checkpoint(folder / "checkpoint", model=untrained_model(cfg).state_dict(), config=cfg.to_dict(), epoch=0, step=0).parent


def test_id_schemes_of_an_untrained_checkpoint_equal_its_floor(small_world, tmp_path, capsys):
    from bench.id_schemes import main

    ckpt = untrained_checkpoint(small_world / "synthetic", tmp_path, quantizer="gaussian", num_embeddings=5,
                                prediction="shifted-local")
    out = tmp_path / "ids.json"
    assert main([str(ckpt), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["trained"]
    assert set(rows) == {"model_ids", "kmeans_5", "kmeans_16", "kmeans_32", "kmeans_5_shift_kernel",
                         "kmeans_5_shift_mean", "linear_probe_on_vectors", "train_fit_linear_probe_on_vectors",
                         "train_fit_linear_probe_on_head", "train_fit_linear_probe_on_motion",
                         "train_fit_mlp_probe_on_motion", "train_fit_mlp_probe_on_pixel_moments"}
    assert all(0 <= v <= 1 for v in rows.values())
    assert rows == report["untrained"]  # the same weights, ids and split: the same scores
    assert "linear_probe_on_vectors" in capsys.readouterr().out


def test_id_schemes_refuse_a_discrete_bottleneck(small_world, tmp_path, capsys):
    from bench.id_schemes import main

    ckpt = untrained_checkpoint(small_world / "synthetic", tmp_path, quantizer="fsq", num_embeddings=5)
    assert main([str(ckpt)]) == 2
    assert "no continuous vectors" in capsys.readouterr().err


def test_a_ceiling_stopped_by_its_time_cap_is_reported(tmp_path, capsys):
    from bench.quality import cached_ceiling

    capped = {"test_accuracy": 0.7, "val_accuracy": 0.72, "best_step": 400, "steps_run": 400, "stopped": "time", "minutes": 3.0}
    (tmp_path / "ceiling_seed1.json").write_text(json.dumps(capped))
    assert cached_ceiling(tmp_path, None, 1, 15.0) == capped  # read from the cache, not fitted again
    out = capsys.readouterr().out  # the cap the fit ran under, not the one asked for now
    assert "ceiling stopped at its time cap (3 min) at step 400" in out and str(tmp_path / "ceiling_seed1.json") in out
    (tmp_path / "ceiling_seed0.json").write_text(json.dumps(dict(capped, stopped="patience")))
    cached_ceiling(tmp_path, None, 0, 15.0)
    assert "warning" not in capsys.readouterr().out
    # a file from before fits recorded why they stopped: it cannot be trusted blindly
    (tmp_path / "ceiling_seed2.json").write_text(json.dumps({k: v for k, v in capped.items() if k not in ("stopped", "minutes")}))
    cached_ceiling(tmp_path, None, 2, 15.0)
    out = capsys.readouterr().out
    assert "does not say why its fit stopped" in out and "ran 400 steps" in out and str(tmp_path / "ceiling_seed2.json") in out
