"""The action-quality benchmark: its ceiling learns from the true actions, and one tiny run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.quality.idm import fit_inverse_dynamics
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


@pytest.mark.slow  # fits an inverse-dynamics model to convergence
def test_the_ceiling_converges_and_scores_every_test_transition(small_world):
    manifest = load_manifest(small_world / "synthetic" / "manifest.json")
    result = fit_inverse_dynamics(manifest, seed=0, eval_every=20, patience=3, bootstrap=20, progress=False)
    assert result["stopped"] == "patience" and result["steps_run"] < 30_000  # no clock: it stops when val stops improving
    assert result["transitions"] == {"train": 90, "val": 45, "test": 45}  # 15 transitions a file of 16 frames
    chance = 1 / 5 + 0.15  # five actions; the majority class of 45 held-out transitions stays well under this
    assert result["test_accuracy"] > chance, result
    assert result["test_accuracy_std"] > 0 and result["label_fraction"] == 1.0


def test_a_training_pair_is_shifted_as_a_whole():
    import torch

    from bench.quality.idm import shifted

    pairs = torch.zeros(6, 2, 3, 16, 16)
    pairs[:, 0, :, 7, 7] = 1.0  # a dot that moves one pixel right between the two frames
    pairs[:, 1, :, 7, 8] = 1.0
    moved = shifted(pairs, np.random.default_rng(0), margin=3)
    assert moved.shape == pairs.shape
    offsets = set()
    for pair in moved:
        (y0, x0), (y1, x1) = (torch.nonzero(pair[0, 0]).tolist()[0], torch.nonzero(pair[1, 0]).tolist()[0])
        assert (y1 - y0, x1 - x0) == (0, 1)  # both frames moved alike: the motion, and so the action, is kept
        assert abs(y0 - 7) <= 3 and abs(x0 - 7) <= 3
        offsets.add((y0, x0))
    assert len(offsets) > 1  # every pair its own offset
    assert torch.equal(shifted(pairs, np.random.default_rng(0), margin=0), pairs)


@pytest.fixture()
def generated_world(tmp_path, monkeypatch):
    """A data root where bench.quality generates its synthetic set itself, at a tiny size: 10 files of
    16 latent frames, split 5/1/4 by file as the yardstick splits; its ceilings fitted and cached
    (with fast checks, stopped by patience) as `python -m bench.quality.idm` would."""
    import bench.quality.yardstick as quality
    from bench.quality.idm import LABEL_BUDGETS, cache_path

    monkeypatch.setattr(quality, "SYNTHETIC", {"files": 10, "chunks": 8})
    root = tmp_path / "data"
    data = quality.ensure_dataset("synthetic", root)
    manifest = load_manifest(data / "manifest.json")
    for fraction in (1.0, *LABEL_BUDGETS):
        result = fit_inverse_dynamics(manifest, seed=0, label_fraction=fraction, eval_every=10, patience=2, bootstrap=10,
                                      progress=False)
        cache_path(data, 0, fraction).write_text(json.dumps(result))
    return root


@pytest.mark.slow
def test_one_seed_end_to_end_every_row_on_the_same_transitions(ray_session, generated_world, tmp_path, capsys):
    from bench.quality.idm import IDM_VERSION
    from bench.quality.yardstick import main

    data = generated_world / "synthetic"
    stamp = json.loads((data / "dataset.json").read_text())
    assert stamp["spec"]["files"] == 10 and stamp["generation_seconds"] >= 0
    manifest = load_manifest(data / "manifest.json")
    test_transitions = sum(manifest.files[f]["n_frames"] - 1 for f in manifest.split_files("test"))
    assert len(manifest.split_files("test")) == 4 and test_transitions == 60

    # --prepare: the data and the ceilings only (both already there), with their sizes and stop reasons
    assert main(["--prepare", "--datasets", "synthetic", "--seeds", "1", "--data_root", str(generated_world)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic: 4 test files, 60 test transitions" in printed and "all labels" in printed and "(step" in printed

    out = tmp_path / "quality.json"
    code = main(["--recipe", "tiny", "--datasets", "synthetic", "--seeds", "1", "--epochs", "1",
                 "--data_root", str(generated_world), "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fitting the ceiling" not in printed  # the cached ceilings were used
    assert "fewer than the 20 and 2000" in printed  # a test split this small is said to be too small
    report = json.loads(out.read_text())
    run = report["datasets"]["synthetic"]
    assert report["yardstick"] == 2 and run["epochs"] == 1 and run["test_files"] == 4
    seed = run["per_seed"][0]
    # every row scored on every test transition, once: the old half-split scored 30 here
    assert seed["test_transitions"] == 60
    assert seed["untrained"]["scored_transitions"] == seed["ours"]["scored_transitions"] == 60
    assert all(c["transitions"]["test"] == 60 for c in seed["ceilings"].values())
    assert set(seed["ceilings"]) == {"all", "0.01", "0.025", "0.1"}
    assert run["summary"]["transitions"] == [60]
    for part in ("untrained", "ours"):
        assert 0 <= seed[part]["probe_accuracy"] <= 1 and 0 <= seed[part]["nmi"] <= 1, part
        assert seed[part]["action_ids_used"] >= 1 and seed[part]["mse_vs_copy_last"] > 0
    # the floor and the model share the data and the folds: the same chance and frames-only rows
    assert seed["untrained"]["chance"] == seed["ours"]["chance"]
    assert seed["untrained"]["frame_probe_accuracy"] == seed["ours"]["frame_probe_accuracy"]
    s = run["summary"]
    base = max(seed["untrained"]["probe_accuracy"], seed["ours"]["frame_probe_accuracy"])
    ceiling = seed["ceilings"]["all"]["test_accuracy"]
    if ceiling - base > 1e-9:
        assert s["gap_closed"]["mean"] == pytest.approx((seed["ours"]["probe_accuracy"] - base) / (ceiling - base))
    assert s["ours"]["probe_accuracy"]["std"] == 0.0  # one seed
    table = printed.split("[quality] report")[0]
    assert any(line.startswith("| synthetic | 4 / 60 |") for line in table.splitlines())  # the table's row
    assert "gap closed beyond one frame" in table and f"ceilings stopped by patience (inverse-dynamics model version {IDM_VERSION})" in table

    # --table prints the same table from the report, and --readme puts it between the markers
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- quality-table:start -->\nOLD TABLE\n<!-- quality-table:end -->\nrest\n")
    assert main(["--table", str(out), "--readme", str(readme)]) == 0
    printed = capsys.readouterr().out
    text = readme.read_text()
    assert "OLD TABLE" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "| synthetic | 1 |" in text and f"python -m bench.quality --table {out}" in text  # the headline rows
    assert "IDM 1.0% labels" not in text and "IDM 1.0% labels" in printed
    assert "| synthetic | 4 / 60 |" in printed

    # --extend keeps the earlier seeds below --seeds as they were, and trains none of them again;
    # a kept run whose ceilings were fitted by another version of the inverse-dynamics model is read
    # against the current ones (here from the cache beside the data)
    older_ceilings = {k: dict(c, idm_version=IDM_VERSION - 1, test_accuracy=0.5) for k, c in seed["ceilings"].items()}
    earlier = dict(report, datasets={"synthetic": dict(run, per_seed=[dict(seed, ceilings=older_ceilings), dict(seed, seed=5)])})
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    extended = tmp_path / "extended.json"
    code = main(["--recipe", "tiny", "--datasets", "synthetic", "--seeds", "1", "--epochs", "1",
                 "--extend", str(tmp_path / "earlier.json"), "--data_root", str(generated_world),
                 "--workdir", str(tmp_path / "work2"), "--out", str(extended)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "training" not in printed and "seed 0: the kept run is read against ceilings fitted again" in printed
    kept = json.loads(extended.read_text())
    assert kept["datasets"]["synthetic"]["per_seed"] == [seed]  # seed 5 is not among 0..0
    assert kept["datasets"]["synthetic"]["summary"] == run["summary"]
    # a report of the old yardstick is not merged
    (tmp_path / "old.json").write_text(json.dumps({k: v for k, v in report.items() if k != "yardstick"}))
    assert main(["--recipe", "tiny", "--datasets", "synthetic", "--seeds", "1", "--epochs", "1", "--extend", str(tmp_path / "old.json"),
                 "--data_root", str(generated_world), "--out", str(tmp_path / "x.json")]) == 2
    assert "yardstick version 1" in capsys.readouterr().err


def test_a_dataset_is_generated_by_one_process_at_a_time(tmp_path, monkeypatch, capsys):
    import fcntl
    import threading

    import bench.quality.yardstick as quality

    monkeypatch.setattr(quality, "SYNTHETIC", {"files": 4, "chunks": 2})
    root = tmp_path / "data"
    root.mkdir()
    with open(root / ".synthetic.lock", "w") as held:  # another process generating the set
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=quality.ensure_dataset, args=("synthetic", root))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not (root / "synthetic").exists()  # it waits, and deletes nothing
        fcntl.flock(held, fcntl.LOCK_UN)
    waiting.join(timeout=60)
    assert not waiting.is_alive() and (root / "synthetic" / "dataset.json").is_file()
    assert "another process is generating it; waiting" in capsys.readouterr().out


def test_rows_scored_on_different_transitions_are_an_error():
    from bench.quality.yardstick import check_same_transitions
    from lam.errors import UserError

    run = {"seed": 0, "test_transitions": 762, "untrained": {"scored_transitions": 762}, "ours": {"scored_transitions": 762},
           "ceilings": {"all": {"transitions": {"test": 762}}}}
    assert check_same_transitions("crafter", run) == 762
    half = dict(run, ours={"scored_transitions": 381})  # a probe fitted on half of the test files, scored on the rest
    with pytest.raises(UserError, match="different numbers of test transitions"):
        check_same_transitions("crafter", half)


def test_a_run_with_labels_is_read_against_the_ceiling_on_the_same_labels(monkeypatch):
    import bench.quality.yardstick as quality

    fitted = []
    monkeypatch.setattr(quality, "cached_ceiling", lambda data_dir, manifest, seed, fraction=1.0, kept=None:
                        fitted.append(fraction) or {"test_accuracy": {1.0: 0.9, 0.01: 0.3, 0.025: 0.4, 0.05: 0.5, 0.1: 0.6}[fraction],
                                                          "stopped": "patience", "test_accuracy_std": 0.01})
    assert list(quality.ceilings("d", None, 0)) == ["all", "0.01", "0.025", "0.1"]
    assert list(quality.ceilings("d", None, 0, label_fraction=0.05)) == ["all", "0.01", "0.025", "0.05", "0.1"]
    assert list(quality.ceilings("d", None, 0, label_fraction=0.025)) == ["all", "0.01", "0.025", "0.1"]  # already one
    assert 0.05 in fitted

    def run(seed, probe):
        return {"seed": seed, "test_transitions": 10, "ceilings": quality.ceilings("d", None, seed, label_fraction=0.05),
                "untrained": {k: 0.2 for k in ("probe_accuracy", "nmi", "delta_psnr", "mse_vs_copy_last", "action_ids_used",
                                               "probe_accuracy_sampling_std")},
                "ours": {"probe_accuracy": probe, "frame_probe_accuracy": 0.25, "chance": 0.2, "nmi": 0.1, "delta_psnr": 1.0,
                         "mse_vs_copy_last": 0.9, "action_ids_used": 9, "chance_sampling_std": 0.01,
                         "frame_probe_accuracy_sampling_std": 0.01, "probe_accuracy_sampling_std": 0.01, "nmi_sampling_std": 0.01}}

    summary = quality.summarise([run(0, 0.6), run(1, 0.4)], label_fraction=0.05)
    same = summary["same_labels"]
    assert same["ceiling"]["mean"] == pytest.approx(0.5) and same["model_minus_ceiling"]["mean"] == pytest.approx(0.0)
    assert same["model_minus_ceiling"]["std"] == pytest.approx(0.1)
    assert same["share_of_full_ceiling"]["mean"] == pytest.approx(0.5 / 0.9)
    assert "same_labels" not in quality.summarise([run(0, 0.6)])  # unsupervised: no such row
    report = {"recipe": "real", "overrides": {"label_fraction": 0.05}, "machine": {"commit": "abc"},
              "datasets": {"crafter": {"epochs": 4, "test_files": 2, "per_seed": [run(0, 0.6), run(1, 0.4)], "summary": summary}}}
    assert "crafter: trained with 5.0% of the train labels: model - IDM on the same labels (0.50 ± 0.00) = 0.00 ± 0.10" in quality.table(report)


def test_a_changed_environment_regenerates_only_its_own_dataset(monkeypatch):
    from bench.quality.yardstick import dataset_spec
    from bench.quality.realplay.crafter_env import CrafterPlay

    crafter, minigrid = dataset_spec("crafter"), dataset_spec("minigrid")
    monkeypatch.setattr(CrafterPlay, "version", CrafterPlay.version + 1)
    assert dataset_spec("crafter") != crafter
    assert dataset_spec("minigrid") == minigrid


def test_extended_runs_are_kept_only_on_data_generated_the_same_way(capsys):
    from bench.quality.yardstick import dataset_spec, kept_seeds
    from lam.errors import UserError

    spec = dataset_spec("crafter")
    older = dict(spec, env_version=spec["env_version"] - 1)  # the environment changed since that report

    def report(commit, data, seeds):
        runs = [{"seed": s, "ours": {"probe_accuracy": 0.5 + s / 10}} for s in seeds]
        return {"machine": {"commit": commit}, "datasets": {"crafter": {"data": data, "epochs": 4, "per_seed": runs}}}

    same = ("same.json", report("a", spec, [0, 1]))
    stale = ("stale.json", report("b", older, [2]))
    kept = kept_seeds([same, stale], "crafter", epochs=4, seeds=3, spec=spec)
    assert sorted(r["seed"] for r in kept) == [0, 1]  # seed 2 is run again on the current data
    assert all(r["commit"] == "a" for r in kept)
    assert "stale.json: its crafter runs were on data generated as" in capsys.readouterr().out
    assert [r["seed"] for r in kept_seeds([same], "crafter", epochs=4, seeds=1, spec=spec)] == [0]
    with pytest.raises(UserError, match="trained 4 epochs a run there, 8 here"):
        kept_seeds([same], "crafter", epochs=8, seeds=3, spec=spec)
    other = ("other.json", report("c", spec, [1]))
    other[1]["datasets"]["crafter"]["per_seed"][0]["ours"]["probe_accuracy"] = 0.9
    with pytest.raises(UserError, match="seed 1 differs from the run of that seed"):
        kept_seeds([same, other], "crafter", epochs=4, seeds=3, spec=spec)


def test_an_extended_report_carries_every_dataset_until_it_is_merged():
    from bench.quality.yardstick import carried_datasets
    from lam.errors import UserError

    a = ("a.json", {"datasets": {"synthetic": {"per_seed": [0]}, "crafter": {"per_seed": [0]}}})
    b = ("b.json", {"datasets": {"synthetic": {"per_seed": [1]}}})
    # Listed or not, every dataset starts as it was: a run stopped before reaching one keeps it.
    assert carried_datasets([a, b], ["synthetic"]) == {"synthetic": {"per_seed": [0]}, "crafter": {"per_seed": [0]}}
    assert carried_datasets([a], ["synthetic", "crafter"]) == a[1]["datasets"]
    with pytest.raises(UserError, match="synthetic is also in a.json; list it in --datasets"):
        carried_datasets([a, b], ["crafter"])


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    from bench.quality.yardstick import main

    assert main(["--datasets", "nope", "--data_root", str(tmp_path)]) == 2
    assert "unknown datasets ['nope']" in capsys.readouterr().err
    assert main(["--set", "embed_dim=30", "num_heads=8", "--datasets", "synthetic", "--data_root", str(tmp_path)]) == 2
    assert "divisible" in capsys.readouterr().err
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"yardstick": 2, "recipe": "tiny", "overrides": {"embed_dim": "64"}, "machine": {"commit": "x"}, "datasets": {}}))
    assert main(["--recipe", "tiny", "--extend", str(earlier), "--datasets", "synthetic", "--data_root", str(tmp_path)]) == 2
    assert f"--extend {earlier}: it is of recipe 'tiny' with --set {{'embed_dim': '64'}}" in capsys.readouterr().err
    assert main(["--recipe", "tiny", "--extend", str(tmp_path / "none.json"), "--datasets", "synthetic", "--data_root", str(tmp_path)]) == 2
    assert "cannot read the report" in capsys.readouterr().err


def untrained_checkpoint(world, folder, **model_keys):
    """The tiny recipe's model on `world`, untrained (its seed's weights, ids fitted as bench.quality
    fits its floor's): a checkpoint whose scores must equal the floor's."""
    from bench.quality.yardstick import untrained_model
    from helpers import tiny_config
    from lam.runtime.checkpoint import save_checkpoint

    cfg = tiny_config(world, folder, **model_keys)
    return save_checkpoint(folder / "checkpoint", model=untrained_model(cfg).state_dict(), config=cfg.to_dict(), epoch=0, step=0).parent


def test_id_schemes_of_an_untrained_checkpoint_equal_its_floor(small_world, tmp_path, capsys):
    from bench.quality.id_schemes import main

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
    from bench.quality.id_schemes import main

    ckpt = untrained_checkpoint(small_world / "synthetic", tmp_path, quantizer="fsq", num_embeddings=5)
    assert main([str(ckpt)]) == 2
    assert "no continuous vectors" in capsys.readouterr().err


def test_a_ceiling_that_did_not_converge_is_refused_with_the_refit_command(small_world, tmp_path):
    from bench.quality.idm import IDM_VERSION, data_fingerprint
    from bench.quality.yardstick import cached_ceiling
    from lam.errors import UserError

    data = small_world / "synthetic"
    manifest = load_manifest(data / "manifest.json")
    capped = {"test_accuracy": 0.7, "best_step": 400, "steps_run": 400, "stopped": "time", "transitions": {"test": 45},
              "data_fingerprint": data_fingerprint(manifest), "idm_version": IDM_VERSION}
    path = data / "ceiling_seed7.json"
    path.write_text(json.dumps(capped))
    with pytest.raises(UserError) as refused:
        cached_ceiling(data, manifest, 7)
    assert str(path) in str(refused.value) and "stopped by time at step 400" in str(refused.value)
    assert f"python -m bench.quality.idm {data} --seed 7 --max_steps 1600" in str(refused.value)
    path.write_text(json.dumps(dict(capped, stopped="patience")))
    assert cached_ceiling(data, manifest, 7)["test_accuracy"] == 0.7  # converged: read from the cache, not fitted again
    path.unlink()


@pytest.mark.slow  # fits an inverse-dynamics model
def test_the_idm_command_fits_and_caches_a_ceiling(small_world, capsys):
    from bench.quality.idm import main

    data = small_world / "synthetic"
    assert main([str(data), "--seed", "3", "--label_fraction", "0.1", "--quiet"]) == 0
    written = json.loads((data / "ceiling_seed3_labels0.1.json").read_text())
    assert written["label_fraction"] == 0.1 and written["transitions"]["train"] == 9 and written["stopped"] == "patience"
    assert "stopped by patience" in capsys.readouterr().out
    (data / "ceiling_seed3_labels0.1.json").unlink()
    assert main([str(data / "nowhere")]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_the_data_fingerprint_is_of_the_content_not_of_the_files(small_world, tmp_path):
    import shutil
    import time

    import h5py

    from bench.quality.idm import data_fingerprint

    original = load_manifest(small_world / "synthetic" / "manifest.json")
    time.sleep(0.01)  # the copies get other modification times
    copy = tmp_path / "synthetic"
    shutil.copytree(small_world / "synthetic", copy)
    manifest = load_manifest(copy / "manifest.json", copy)
    assert data_fingerprint(manifest) == data_fingerprint(original)  # the same data generated again elsewhere
    first = copy / manifest.split_files("test")[0]
    with h5py.File(first, "r+") as f:
        f["actions"][0, 0] = (f["actions"][0, 0] + 1) % 5
    assert data_fingerprint(manifest) != data_fingerprint(original)


def test_an_earlier_reports_ceiling_is_used_only_if_fitted_on_the_same_data_by_the_same_model(small_world, capsys, monkeypatch):
    import functools

    import bench.quality.yardstick as quality
    from bench.quality.idm import IDM_VERSION, cache_path, data_fingerprint
    from bench.quality.yardstick import cached_ceiling

    # the real fit, with checks as frequent as the other tests' so that it stops soon
    monkeypatch.setattr(quality, "fit_inverse_dynamics", functools.partial(fit_inverse_dynamics, eval_every=10, patience=2, bootstrap=10))

    data = small_world / "synthetic"
    manifest = load_manifest(data / "manifest.json")
    kept = {"test_accuracy": 0.123, "best_step": 40, "steps_run": 100, "stopped": "patience", "transitions": {"test": 45},
            "data_fingerprint": data_fingerprint(manifest), "idm_version": IDM_VERSION}
    path = cache_path(data, 5)
    assert cached_ceiling(data, manifest, 5, kept=kept) == kept  # read from the report, not fitted
    assert json.loads(path.read_text()) == kept and "fitting" not in capsys.readouterr().out  # and cached for the next run
    path.unlink()
    older = dict(kept, idm_version=IDM_VERSION - 1)
    path.write_text(json.dumps(older))
    fitted = cached_ceiling(data, manifest, 5, kept=older)
    printed = capsys.readouterr().out
    assert f"fitted by inverse-dynamics model version {IDM_VERSION - 1}, not {IDM_VERSION}" in printed
    assert "fitting the ceiling" in printed and fitted["idm_version"] == IDM_VERSION and fitted["test_accuracy"] != 0.123
    path.unlink()


def test_score_ranking_says_which_training_score_ranks_runs_like_the_probe(tmp_path, capsys):
    from bench.quality.score_ranking import main

    def run(probe, psnr, mse):
        return {"ours": {"probe_accuracy": probe, "val_scores": {"val/delta_psnr": psnr, "val/mse_loss": mse}}}

    probes = [0.3, 0.4, 0.5, 0.6, 0.7]
    report = {"datasets": {
        # delta-t PSNR rises with the probe; val/mse_loss falls with it (lower is better: it ranks well too)
        "minigrid": {"per_seed": [run(p, 0.1 + p, 1 - p) for p in probes]},
        # here val/mse_loss rises with the probe: it ranks runs backwards
        "miniwob": {"per_seed": [run(p, 0.1 + p, p) for p in probes]},
        "crafter": {"per_seed": [run(0.5, 1.0, 0.1)]},  # too few runs: left out
    }}
    old = {"datasets": {"minigrid": {"per_seed": [{"ours": {"probe_accuracy": 0.9}}]}}}  # no val scores: left out
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(json.dumps(report))
    paths[1].write_text(json.dumps(old))
    assert main([str(p) for p in paths] + ["--out", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert set(out) == {"minigrid", "miniwob"} and out["minigrid"]["runs"] == 5
    assert out["minigrid"]["correlations"]["val/delta_psnr"] == pytest.approx(1.0)
    assert out["minigrid"]["correlations"]["val/mse_loss"] == pytest.approx(1.0)
    assert out["miniwob"]["correlations"]["val/mse_loss"] == pytest.approx(-1.0)
    assert out["miniwob"]["correlations"]["val/action_perplexity"] is None  # not in these runs
    table = capsys.readouterr().out
    assert table.index("| val/delta_psnr |") < table.index("| val/mse_loss |")  # the best first
    assert "| val/delta_psnr | +1.00 | +1.00 | +1.00 |" in table
    assert main([str(paths[1])]) == 2  # nothing to rank
    assert "no dataset has 4 or more runs" in capsys.readouterr().err


def test_levers_reads_each_change_against_the_base_on_the_same_seeds(tmp_path, capsys):
    from bench.quality.levers import main

    def run(seed, probe):
        return {"seed": seed, "test_transitions": 10,
                "ceilings": {"all": {"test_accuracy": 1.0, "stopped": "patience", "test_accuracy_std": 0.0}},
                "untrained": {k: 0.2 for k in ("probe_accuracy", "nmi", "delta_psnr", "mse_vs_copy_last", "action_ids_used",
                                               "probe_accuracy_sampling_std")},
                "ours": {"probe_accuracy": probe, "frame_probe_accuracy": 0.2, "chance": 0.1, "nmi": 0.1, "delta_psnr": 1.0,
                         "mse_vs_copy_last": 0.9, "action_ids_used": 9, "chance_sampling_std": 0.01,
                         "frame_probe_accuracy_sampling_std": 0.01, "probe_accuracy_sampling_std": 0.01, "nmi_sampling_std": 0.01}}

    # the base: gap (probe - 0.2) / 0.8 per seed; seed 0 at 0.6 -> 0.5, seeds 1-2 much higher
    base = {"recipe": "real", "overrides": {}, "datasets": {
        "minigrid": {"epochs": 4, "per_seed": [run(0, 0.6), run(1, 1.0), run(2, 1.0)]},
        "miniwob": {"epochs": 4, "per_seed": [run(0, 0.6)]}}}
    screen = {"recipe": "real", "overrides": {"motion_weight": 1.0}, "datasets": {
        "minigrid": {"epochs": 4, "per_seed": [run(0, 0.68)]},  # +0.10 against seed 0, not against the 3-seed mean
        "miniwob": {"epochs": 4, "per_seed": [run(0, 0.63)]}}}  # +0.04: within the margin
    paths = {name: tmp_path / f"{name}.json" for name in ("base", "screen", "longer", "other")}
    paths["base"].write_text(json.dumps(base))
    paths["screen"].write_text(json.dumps(screen))
    assert main([str(paths["base"]), str(paths["screen"]), "--out", str(tmp_path / "levers.md")]) == 0
    table = capsys.readouterr().out
    assert "| `real` (seed 0) | 0.50 | 0.50 | | |" in table
    assert "| `real` + motion_weight=1.0 | 0.60 (+0.10) | 0.54 (+0.04) | 1 | 0 |" in table
    assert (tmp_path / "levers.md").read_text().strip() == table.strip()

    # runs of another length or another recipe are not compared
    paths["longer"].write_text(json.dumps({**screen, "datasets": {"miniwob": {**screen["datasets"]["miniwob"], "epochs": 16}}}))
    paths["other"].write_text(json.dumps({**screen, "recipe": "demo"}))
    assert main([str(paths["base"]), str(paths["longer"])]) == 2
    assert "miniwob trained 16 epochs, the base 4" in capsys.readouterr().err
    assert main([str(paths["base"]), str(paths["other"])]) == 2
    assert "recipe demo, the base's is real" in capsys.readouterr().err
