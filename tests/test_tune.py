"""`lam tune`: search-space parsing, and real sweeps on the session's local Ray (ASHA, resume, cleanup)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import tiny_config
from lam.commands import build_parser, main as lam_main
from lam.commands.flags import config_from_args
from lam.config import RunConfig, SweepConfig, dump_yaml, load_yaml
from lam.errors import UserError
from lam.tune.space import DEFAULT_SPACE_PATH, check_against, count_grid, load_search_space, to_param_space
from lam.tune.sweep import derive_max_concurrent, run_sweep, trial_config

ROOT = Path(__file__).resolve().parent.parent


def write_space(tmp_path: Path, space: dict) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return str(path)


# ----------------------------------------------------------------------------- search space


def test_default_space_covers_size_bottleneck_and_inputs_and_is_valid():
    raw = load_search_space(None)
    assert set(raw) == {"embed_dim", "encoder_depth", "decoder_depth", "learning_rate", "quantizer", "num_codes", "num_embeddings", "codebook_dim",
                        "commitment_weight", "noise_std", "stem", "motion_moments", "frame_correlation", "prediction", "change_weight", "augment_shift",
                        "motion_weight", "forward_target", "action_offset", "augment_crop"}
    assert raw["quantizer"] == {"choice": ["vq", "fsq", "gaussian"]}
    base = RunConfig()
    base.data.data_dir = "unused"
    check_against(base, raw, str(DEFAULT_SPACE_PATH))  # every value makes a valid spec-sized config


def test_space_forms_become_tune_domains(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    raw = load_search_space(write_space(tmp_path, {
        "embed_dim": {"grid": [64, 128]}, "num_embeddings": {"choice": [8, 12]},
        "learning_rate": {"loguniform": [1e-4, 1e-2]}, "commitment_weight": {"uniform": [0.1, 0.5]},
        "encoder_depth": {"randint": [1, 4]}, "decoder_depth": 2,
    }))
    space = to_param_space(raw)
    assert space["embed_dim"] == {"grid_search": [64, 128]}
    assert isinstance(space["num_embeddings"], Categorical) and space["num_embeddings"].categories == [8, 12]
    assert isinstance(space["learning_rate"], Float) and (space["learning_rate"].lower, space["learning_rate"].upper) == (1e-4, 1e-2)
    assert isinstance(space["encoder_depth"], Integer)
    assert space["decoder_depth"] == 2
    assert count_grid(raw) == 2


@pytest.mark.parametrize("space, message", [
    ({"not_a_field": {"choice": [1]}}, "unknown config key 'not_a_field'"),
    ({"embed_dim": {"pick": [1]}}, "must be a value or one of"),
    ({"embed_dim": {"choice": []}}, "non-empty list"),
    ({"learning_rate": {"loguniform": [0.0, 1e-3]}}, "low > 0"),
    ({"commitment_weight": {"uniform": [0.5, 0.1]}}, "low < high"),
    ({}, "search space is empty"),
])
def test_bad_space_is_a_user_error(tmp_path, space, message):
    with pytest.raises(UserError, match=message):
        load_search_space(write_space(tmp_path, space))


def test_a_value_that_breaks_the_config_fails_at_start_up(tmp_path):
    base = RunConfig()
    base.data.data_dir = "unused"
    raw = load_search_space(write_space(tmp_path, {"embed_dim": {"choice": [256, 100]}}))  # 100 % 8 heads != 0
    with pytest.raises(UserError, match="embed_dim=100 gives an invalid config"):
        check_against(base, raw, "space.yaml")


def test_a_quantizers_settings_are_drawn_beside_it_and_a_trial_keeps_those_its_quantizer_reads(tmp_path):
    base = RunConfig()
    base.data.data_dir = "unused"
    space = {"quantizer": {"choice": ["vq", "fsq"]}, "commitment_weight": {"uniform": [0.1, 0.5]}}
    check_against(base, load_search_space(write_space(tmp_path, space)), "space.yaml")  # checked on vq, which reads it
    fsq = trial_config(base.to_dict(), {"quantizer": "fsq", "commitment_weight": 0.3}, str(tmp_path), "s", "a")
    vq = trial_config(base.to_dict(), {"quantizer": "vq", "commitment_weight": 0.3}, str(tmp_path), "s", "b")
    assert "commitment_weight" not in fsq.to_dict()["model"] and vq.model.quantizer_settings.commitment_weight == 0.3
    unread = load_search_space(write_space(tmp_path, {"quantizer": {"choice": ["vq", "fsq"]}, "noise_std": {"uniform": [0.1, 1.0]}}))
    with pytest.raises(UserError, match=r"'noise_std' is a setting of quantizer gaussian only; the sweep draws quantizer from \['vq', 'fsq'\]"):
        check_against(base, unread, "space.yaml")


def test_max_concurrent_trials_follows_the_cluster_resources():
    cfg = RunConfig()
    cfg.train.num_workers, cfg.train.cpus_per_worker = 2, 1.0
    assert derive_max_concurrent(cfg, {"CPU": 16}) == 5  # 3 CPUs a trial: 2 workers + data
    assert derive_max_concurrent(cfg, {"CPU": 2}) == 1  # never 0: one trial waits for resources
    cfg.train.use_gpu = True
    assert derive_max_concurrent(cfg, {"CPU": 64, "GPU": 4}) == 2  # 2 GPUs a trial


def test_each_trial_is_its_own_run_in_the_sweeps_wandb_group(tmp_path):
    base = RunConfig()
    base.data.data_dir = "d"
    cfg = trial_config(base.to_dict(), {"learning_rate": 3e-4, "embed_dim": 256}, str(tmp_path / "sweep1"), "sweep1", "ab12c_00003")
    assert (cfg.train.learning_rate, cfg.model.embed_dim) == (3e-4, 256)
    assert cfg.train.run_name == "trial_ab12c_00003"
    assert cfg.train.storage_path == str(tmp_path / "sweep1" / "trials")
    assert cfg.train.wandb_group == "sweep1"
    base.train.wandb_group = "mine"  # a group the user chose wins
    assert trial_config(base.to_dict(), {}, "s3://b/sweep1", "sweep1", "x").train.wandb_group == "mine"


def test_cli_reports_a_bad_space_with_exit_code_2(tmp_path, tiny_data, capsys):
    space = write_space(tmp_path, {"embed_dim": {"choice": [32, 33]}})  # 33 % 2 heads != 0
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    base = tmp_path / "base.yaml"
    base.write_text(dump_yaml(cfg))
    code = lam_main(["tune", "--config", str(base), "--search_space", space])
    assert code == 2
    assert "embed_dim=33 gives an invalid config" in capsys.readouterr().err


def test_step_checkpoints_are_refused_in_a_sweep_with_exit_code_2(tmp_path, tiny_data, capsys):
    """A trial's every report is a result to Tune: step checkpoints would be ASHA rungs."""
    base = tmp_path / "base.yaml"
    base.write_text(dump_yaml(tiny_config(tiny_data, tmp_path / "runs", save_every_steps=5)))
    assert lam_main(["tune", "--config", str(base), "--num_samples", "1"]) == 2
    assert "save_every_steps (5) is for lam train" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before anything started


# ----------------------------------------------------------------------------- real sweeps


def base_config(tiny_data, storage) -> RunConfig:
    cfg = tiny_config(tiny_data, storage, num_workers=1, eval_every=0, save_every=1)
    cfg.data.data_dir = str(tiny_data)
    return cfg


def ray_snapshot():
    import ray
    from ray.util.state import list_actors, list_placement_groups

    address = ray.get_runtime_context().gcs_address  # this session's cluster, not any other on the machine
    pgs = {p.placement_group_id: p.state for p in list_placement_groups(address=address, limit=10_000)}
    actors = {a.actor_id: (a.class_name, a.state) for a in list_actors(address=address, limit=10_000)}
    return pgs, actors


TRIAL_ACTOR_CLASSES = {"ImplicitFunc", "TrainController", "RayTrainWorker", "PlacementGroupCleaner"}


def leftovers(before) -> tuple[list, list]:
    """Placement groups and trial actors created since `before` that are still alive."""
    pgs_before, actors_before = before
    pgs, actors = ray_snapshot()
    live_pgs = [pid for pid, state in pgs.items() if pid not in pgs_before and state != "REMOVED"]
    live_actors = [(aid, cls) for aid, (cls, state) in actors.items()
                   if aid not in actors_before and cls in TRIAL_ACTOR_CLASSES and state != "DEAD"]
    return live_pgs, live_actors


@pytest.mark.slow
def test_sweep_with_asha_stops_bad_trials_writes_best_config_and_cleans_up(ray_session, tiny_data, tmp_path):
    before = ray_snapshot()
    # Two sensible learning rates first, then one that wrecks the model: once the good ones
    # have reported at a rung, ASHA stops the bad one there.
    space = write_space(tmp_path, {"learning_rate": {"grid": [3e-3, 1e-3, 1.0]}, "commitment_weight": {"uniform": [0.1, 0.3]}})
    settings = SweepConfig(search_space=space, name="asha", max_epochs=4, grace_period=1, reduction_factor=2, max_concurrent_trials=2)
    outcome = run_sweep(base_config(tiny_data, tmp_path / "runs"), settings, verbose=False)

    assert outcome.finished and len(outcome.rows) == 3
    statuses = [r.status for r in outcome.rows]
    assert "error" not in statuses, statuses
    stopped = [r for r in outcome.rows if r.status == "stopped early"]
    assert stopped and all(r.epochs < 4 for r in stopped)
    assert outcome.best.params["learning_rate"] in (3e-3, 1e-3)
    assert Path(outcome.best_checkpoint, "state.pt").is_file()

    # Nothing of any trial (stopped early or not) keeps resources: Ray Train's placement-group
    # cleaner polls once a second, so give it a moment.
    deadline = time.time() + 60
    while (live := leftovers(before)) != ([], []) and time.time() < deadline:
        time.sleep(2)
    assert live == ([], []), f"left alive after the sweep: placement groups {live[0]}, actors {live[1]}"

    results = json.loads(Path(outcome.sweep_dir, "results.json").read_text())
    assert results["best_trial"] == outcome.best.trial_id and len(results["trials"]) == 3

    # The best config is a config `lam train --config` takes, with the winning values (that
    # a config from the command line trains is tested elsewhere).
    best = load_yaml(outcome.best_config_path)
    assert best["train"]["learning_rate"] == outcome.best.params["learning_rate"]
    args = build_parser().parse_args(["train", "--config", outcome.best_config_path])
    cfg = config_from_args(args).validate()
    assert cfg.train.learning_rate == outcome.best.params["learning_rate"] and cfg.train.num_epochs == 4
    assert cfg.model.quantizer_settings.commitment_weight == outcome.best.params["commitment_weight"]
    assert cfg.data.data_dir == str(tiny_data)


def trial_metric_lines(sweep_dir: Path) -> dict[str, int]:
    return {p.parent.name: len(p.read_text().splitlines()) for p in sweep_dir.glob("trials/trial_*/metrics.jsonl")}


def completed_trials(sweep_dir: Path, epochs: int) -> list[str]:
    done = []
    for path in sweep_dir.glob("trials/trial_*/metrics.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if any(r.get("epoch") == epochs and "val/mse_loss" in r for r in lines):
            done.append(path.parent.name)
    return done


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_session, tiny_data, tmp_path):
    import ray

    storage = tmp_path / "runs"
    base = tmp_path / "base.yaml"
    base.write_text(dump_yaml(base_config(tiny_data, storage)))
    space = write_space(tmp_path, {"learning_rate": {"grid": [3e-3, 1e-3]}})
    # No ASHA stops (grace = max_epochs), one trial at a time: the first finishes, then Ctrl-C.
    args = ["tune", "--config", str(base), "--search_space", space, "--name", "resumable",
            "--max_epochs", "2", "--grace_period", "2", "--max_concurrent_trials", "1"]
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, RAY_AUTH_MODE="token")
    sweep_dir = storage / "resumable"
    proc = subprocess.Popen([sys.executable, "-m", "lam", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 400
        while len(completed_trials(sweep_dir, 2)) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be interrupted:\n" + proc.stdout.read()[-3000:]
        assert len(completed_trials(sweep_dir, 2)) >= 1, "no trial finished in time"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output[-3000:]
    assert "--resume" in output

    finished = set(completed_trials(sweep_dir, 2))
    lines_before = trial_metric_lines(sweep_dir)
    cfg = RunConfig.from_dict(load_yaml(base))
    outcome = run_sweep(cfg, SweepConfig(search_space=space, name="resumable", max_epochs=2, grace_period=2, resume=True), verbose=False)

    assert outcome.finished
    assert sorted(r.status for r in outcome.rows) == ["completed"] * 2
    lines_after = trial_metric_lines(sweep_dir)
    for name in finished:  # finished trials were not trained again
        assert lines_after[name] == lines_before[name], name
    assert len(lines_after) == 2


def test_the_real_recipe_sweeps_on_delta_psnr_unless_told_otherwise():
    from lam.commands.flags import sweep_from_args

    def sweep(*argv):
        return sweep_from_args(build_parser().parse_args(["tune", *argv]))

    assert (sweep("--recipe", "real").metric, sweep("--recipe", "real").mode) == ("val/delta_psnr", "max")
    assert (sweep().metric, sweep().mode) == ("val/mse_loss", "min")  # SweepConfig's defaults
    assert (sweep("--recipe", "demo").metric, sweep("--recipe", "demo").mode) == ("val/mse_loss", "min")
    told = sweep("--recipe", "real", "--metric", "val/mse_loss", "--mode", "min")
    assert (told.metric, told.mode) == ("val/mse_loss", "min")
    assert sweep("--recipe", "real", "--metric", "val/nmi").mode == "max"  # one flag given, the other from the recipe


def test_an_action_check_metric_makes_every_trial_run_the_check_every_epoch(tiny_data, tmp_path):
    from lam.tune.sweep import metric_every_epoch

    cfg = tiny_config(tiny_data, tmp_path / "runs", eval_every=2)
    assert metric_every_epoch(cfg, "val/mse_loss") is None and cfg.train.eval_every == 2  # an every-epoch metric
    assert metric_every_epoch(cfg, "val/delta_psnr") == ("val/delta_psnr comes from the action check: every trial runs it "
                                                         "every epoch (eval_every 1, not 2)")
    assert cfg.train.eval_every == 1
    assert metric_every_epoch(cfg, "val/delta_psnr") is None  # already every epoch
