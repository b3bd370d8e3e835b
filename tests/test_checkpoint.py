"""Checkpoints: atomic save, clear errors, and checkpoints of the older format loading and evaluating as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lam.config import apply_overrides
from lam.errors import UserError
from lam.runtime.checkpoint import FORMAT, load_checkpoint, load_model, load_optimizer_state, optimizer_state, save_checkpoint

FORMAT_1 = Path(__file__).parent / "data" / "format1_checkpoints"
OLD = {  # fixture -> the parts its old boolean flags name today
    "vq_pair_token_rollout": dict(stem="pair", action_head="token", quantizer="vq", whiten=False, motion_moments="none",
                                  rollout="multistep"),
    "fsq_whiten_diff_moments_token_motion": dict(stem="diff", action_head="token+motion", quantizer="fsq", whiten=True,
                                                 motion_moments="patches"),
    "vq_whiten_pair_motion_only": dict(stem="pair", action_head="motion", quantizer="vq", whiten=True, motion_moments="none",
                                       rollout="none"),
}


def checkpoint(name: str) -> Path:
    return FORMAT_1 / name / "checkpoint_epoch0001"


@pytest.mark.parametrize("name", OLD)
def test_format_1_checkpoint_loads_with_its_parts_named_and_gives_the_same_outputs(name):
    raw = torch.load(checkpoint(name) / "state.pt", weights_only=True)
    assert "format" not in raw and any(k.startswith("encoder.") for k in raw["model"])  # really the old format
    model, cfg = load_model(checkpoint(name))
    assert {k: getattr(cfg.model, k) for k in OLD[name]} == OLD[name]

    ref = torch.load(FORMAT_1 / name / "reference.pt", weights_only=True)
    x = torch.from_numpy(np.random.default_rng(ref["input_seed"]).standard_normal(ref["input_shape"]).astype(np.float32))
    with torch.no_grad():
        idx, z = model.encode_actions(x)
        pred = model.decode_with_actions(x, idx)
        rolled = model.rollout(x[:, :1], idx[:, :3], 3)
        metrics = model(x).metrics
    assert torch.equal(idx, ref["indices"]) and torch.equal(model.action_ids(idx), ref["action_ids"])
    torch.testing.assert_close(z, ref["z"])
    torch.testing.assert_close(pred[..., ::8, ::8], ref["pred_sub"])
    torch.testing.assert_close(pred.double().sum(), ref["pred_sum"])
    torch.testing.assert_close(pred.double().pow(2).sum(), ref["pred_sq"])
    torch.testing.assert_close(rolled[..., ::8, ::8], ref["rolled_sub"])
    # the old metric set held FSQ's codebook and commitment losses as zeros; today they are not reported
    expected = {k: v for k, v in ref["metrics"].items() if k in metrics}
    assert set(ref["metrics"]) - set(metrics) <= {"codebook_loss", "commitment_loss"}
    assert {k: pytest.approx(v, rel=1e-5, abs=1e-7) for k, v in expected.items()} == {k: float(metrics[k]) for k in expected}


@pytest.mark.parametrize("name", OLD)
def test_a_format_1_run_resumes_with_the_same_next_step(name):
    """Resuming restores the optimizer state, which format 1 indexed by parameter position: the
    step after the checkpoint must match the one the old version took."""
    from lam.runtime.checkpoint import _FORMAT_1_MODEL_KEYS, _rename
    from lam.train.schedule import lr_multiplier

    state = load_checkpoint(checkpoint(name))
    assert state["format"] == FORMAT
    model, _ = load_model(checkpoint(name))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, 2, 10, 0.1))
    assert all(isinstance(name, str) for name in state["optimizer"]["state"])  # upgraded: keyed by name
    load_optimizer_state(optimizer, model, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])

    ref = torch.load(FORMAT_1 / name / "reference.pt", weights_only=True)
    x = np.random.default_rng(ref["next_step_batch_seed"]).standard_normal((4, 4, 16, 64, 64)).astype(np.float32)
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    out = model.train()(torch.from_numpy(x))
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    scheduler.step()
    model.after_optimizer_step()
    params = dict(model.named_parameters())
    for old_name, (total, squares) in ref["next_step_params"].items():
        name = _rename(old_name, _FORMAT_1_MODEL_KEYS)
        p = params[name].detach().double()
        step = p - before[name]
        # Tolerances are 1% of what the step moved (and 1e-6 for weights that hardly move): another
        # CPU's kernels round the gradient's long sums differently, while a wrong optimizer state
        # changes the step itself.
        assert p.sum().item() == pytest.approx(total, rel=0, abs=0.01 * step.abs().sum().item() + 1e-6), old_name
        assert p.pow(2).sum().item() == pytest.approx(squares, rel=0, abs=0.02 * (p * step).abs().sum().item() + 1e-6), old_name


class TwoParts(torch.nn.Module):
    """Two parts registered in either order: the same parameter names, other positions."""

    def __init__(self, first: str):
        super().__init__()
        for name in (first, "b" if first == "a" else "a"):
            self.add_module(name, torch.nn.Linear(3, 2))


def stepped(model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    loss = sum((i + 1) * p.pow(2).sum() for i, (_, p) in enumerate(sorted(model.named_parameters())))
    loss.backward()
    optimizer.step()
    return optimizer


def test_optimizer_state_is_restored_by_parameter_name_whatever_the_registration_order(tmp_path):
    torch.manual_seed(0)
    saved = TwoParts("a")
    optimizer = stepped(saved)
    save_checkpoint(tmp_path / "ckpt", model=saved.state_dict(), optimizer=optimizer_state(saved, optimizer), config={})
    state = load_checkpoint_raw(tmp_path / "ckpt")

    resumed = TwoParts("b")  # a part registered earlier now: every position moved
    resumed.load_state_dict(state["model"])
    fresh = torch.optim.AdamW(resumed.parameters(), lr=0.1)
    load_optimizer_state(fresh, resumed, state["optimizer"])
    by_param = {id(p): name for name, p in resumed.named_parameters()}
    restored = {by_param[id(p)]: s["exp_avg"] for p, s in fresh.state.items()}
    original = {name: optimizer.state[p]["exp_avg"] for name, p in saved.named_parameters()}
    assert restored.keys() == original.keys() == {"a.weight", "a.bias", "b.weight", "b.bias"}
    for name in original:
        torch.testing.assert_close(restored[name], original[name], rtol=0, atol=0)
    # read by position instead, b's moments would land on a's weights: the test can tell
    assert not torch.equal(original["a.weight"], original["b.weight"])

    with pytest.raises(UserError, match="do not match"):  # another model's state is refused, not half-loaded
        load_optimizer_state(torch.optim.AdamW(torch.nn.Linear(3, 2).parameters()), torch.nn.Linear(3, 2), state["optimizer"])


def test_a_format_2_checkpoint_gets_its_optimizer_state_keyed_by_name(tmp_path):
    """Format 2 indexed the optimizer state by position, in the order the model registered its
    parameters then; loading keys it by name."""
    from lam.model import LatentActionModel
    from lam.recipes import recipe_config

    cfg = recipe_config("tiny")
    torch.manual_seed(0)
    model = LatentActionModel(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, cfg.data.sequence_length, 16, 64, 64)).loss.backward()
    optimizer.step()
    (tmp_path / "ckpt").mkdir()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": cfg.to_dict(), "format": 2,
                "epoch": 0, "step": 1}, tmp_path / "ckpt" / "state.pt")
    state = load_checkpoint(tmp_path / "ckpt")
    assert state["format"] == FORMAT
    names = [name for name, _ in model.named_parameters()]
    assert list(state["optimizer"]["state"]) == [names[i] for i in optimizer.state_dict()["state"]]
    for name, p in model.named_parameters():
        torch.testing.assert_close(state["optimizer"]["state"][name]["exp_avg_sq"], optimizer.state[p]["exp_avg_sq"], rtol=0, atol=0)


def test_a_format_5_checkpoint_gets_the_label_and_moments_heads_under_the_optional_terms(tmp_path):
    """Format 5 kept the label and moments heads as `label_head.` and `moments_head.`: loading
    renames their weights and optimizer state, and the optimizer state loads into today's model."""
    from lam.model import LatentActionModel
    from lam.recipes import recipe_config

    cfg = recipe_config("tiny")
    cfg.model.label_classes, cfg.model.moments_weight = 3, 0.5
    torch.manual_seed(0)
    model = LatentActionModel(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, cfg.data.sequence_length, 16, 64, 64), torch.zeros(2, cfg.data.sequence_length - 1, dtype=torch.long)).loss.backward()
    optimizer.step()

    def old(name: str) -> str:
        return name.replace("optional_terms.label.head.", "label_head.").replace("optional_terms.moments.head.", "moments_head.")

    by_name = optimizer_state(model, optimizer)
    format_5 = {**by_name, "state": {old(n): v for n, v in by_name["state"].items()},
                "param_groups": [{**g, "params": [old(n) for n in g["params"]]} for g in by_name["param_groups"]]}
    assert "label_head.weight" in format_5["state"] and "moments_head.0.weight" in format_5["state"]
    (tmp_path / "ckpt").mkdir()
    torch.save({"model": {old(k): v for k, v in model.state_dict().items()}, "optimizer": format_5, "config": cfg.to_dict(),
                "format": 5, "epoch": 0, "step": 1}, tmp_path / "ckpt" / "state.pt")

    state = load_checkpoint(tmp_path / "ckpt")
    assert state["format"] == FORMAT and state["model"].keys() == model.state_dict().keys()
    restored, _ = load_model(tmp_path / "ckpt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value, rtol=0, atol=0)
    fresh = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    load_optimizer_state(fresh, restored, state["optimizer"])
    head = restored.optional_terms["label"].head.weight
    torch.testing.assert_close(fresh.state[head]["exp_avg"], optimizer.state[model.optional_terms["label"].head.weight]["exp_avg"],
                               rtol=0, atol=0)


def load_checkpoint_raw(directory: Path) -> dict:
    return torch.load(directory / "state.pt", weights_only=True)


def test_lam_eval_runs_on_a_format_1_checkpoint(tiny_data, tmp_path, capsys):
    from lam.commands import main

    code = main(["eval", "--checkpoint", str(checkpoint("fsq_whiten_diff_moments_token_motion")), "--data_dir", str(tiny_data),
                 "--split", "test", "--out", str(tmp_path / "eval"), "--no_figures"])
    assert code == 0 and (tmp_path / "eval" / "report.json").is_file()
    assert "ground truth" in capsys.readouterr().out


def test_save_is_atomic_and_marks_the_format(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", model={"w": torch.ones(2)}, config={})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["state.pt", "state.pt.sha256"]  # no temporary left
    state = torch.load(path, weights_only=True)
    assert state["format"] == FORMAT and state["model"]["w"].tolist() == [1.0, 1.0]


def test_a_folder_that_is_not_a_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a lam checkpoint"):
        load_model(tmp_path)


def flip_a_byte_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_tensor_data_is_a_corrupt_checkpoint(tmp_path):
    from lam.runtime.checkpoint import CorruptCheckpoint

    weights = torch.arange(200_000, dtype=torch.float32)  # most of the file: its middle is tensor data
    path = save_checkpoint(tmp_path / "ckpt", model={"w": weights}, config={})
    flip_a_byte_in_the_middle(path)
    changed = torch.load(path, weights_only=True)["model"]["w"]  # what torch alone makes of it: no error
    assert int((changed != weights).sum()) == 1
    with pytest.raises(CorruptCheckpoint, match=f"{path}: corrupt checkpoint: its bytes differ from those written"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_state_file_cut_short_is_named_with_the_bytes_it_lost(tmp_path):
    from lam.runtime.checkpoint import CorruptCheckpoint

    path = save_checkpoint(tmp_path / "ckpt", model={"w": torch.ones(1000)}, config={})
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    with pytest.raises(CorruptCheckpoint, match=rf"corrupt checkpoint, cannot be read \({size // 2} of the {size} bytes written\)"):
        load_checkpoint(tmp_path / "ckpt")


def test_lam_eval_on_a_checkpoint_with_a_flipped_byte_exits_2_in_one_line(tiny_data, tmp_path, capsys):
    from lam.commands import main
    from lam.model import LatentActionModel
    from lam.recipes import recipe_config

    cfg = recipe_config("tiny")
    path = save_checkpoint(tmp_path / "ckpt", model=LatentActionModel(cfg.model).state_dict(), config=cfg.to_dict(), epoch=0, step=0)
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data_dir", str(tiny_data), "--split", "test",
                 "--out", str(tmp_path / "eval"), "--no_figures"]) == 0  # intact: evaluates
    flip_a_byte_in_the_middle(path)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data_dir", str(tiny_data), "--split", "test",
                 "--out", str(tmp_path / "eval2"), "--no_figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "corrupt checkpoint" in err[0], err



@pytest.mark.parametrize("quantizer", ["fsq", "gaussian"])
def test_a_format_3_checkpoint_listing_every_quantizers_settings_evaluates_as_today(quantizer, tiny_data, tmp_path):
    """Format 3 configs listed every component's settings flat, the chosen one's and the rest
    (at their defaults, or set by a user and ignored by the model): loading keeps the chosen
    one's, and `lam eval` reports what it reports on the same weights saved today."""
    import json

    from lam.commands import main
    from lam.model import LatentActionModel
    from lam.recipes import recipe_config

    cfg = recipe_config("tiny")
    apply_overrides(cfg, {"quantizer": quantizer, "num_embeddings": 4}, "test")
    torch.manual_seed(0)
    weights = LatentActionModel(cfg.model).state_dict()
    every_setting = {"codebook_dim": 8, "commitment_weight": 0.4, "dead_code_steps": 100, "noise_std": 0.5, "kl_weight": 0.0,
                     "kmeans_samples": 4096, "latent_weight": 1.0, "latent_depth": 1, "latent_ema": 0.9}  # 0.4, 0.9: set, never read
    old_config = cfg.to_dict()
    old_config["model"] = {**old_config["model"], **every_setting, **cfg.to_dict()["model"]}
    assert old_config["model"]["commitment_weight"] == 0.4 and cfg.model.quantizer != "vq"
    save_checkpoint(tmp_path / "today", model=weights, config=cfg.to_dict(), epoch=0, step=0)
    save_checkpoint(tmp_path / "format3", model=weights, config=old_config, epoch=0, step=0)
    state = torch.load(tmp_path / "format3" / "state.pt", weights_only=True)
    torch.save({**state, "format": 3}, tmp_path / "format3" / "state.pt")
    (tmp_path / "format3" / "state.pt.sha256").unlink()  # format 3 predates the checksum's file too

    state = load_checkpoint(tmp_path / "format3")
    assert state["format"] == FORMAT and state["config"] == cfg.to_dict()
    reports = []
    for name in ("today", "format3"):
        assert main(["eval", "--checkpoint", str(tmp_path / name), "--data_dir", str(tiny_data), "--split", "test",
                     "--out", str(tmp_path / f"eval-{name}"), "--no_figures"]) == 0
        report = json.loads((tmp_path / f"eval-{name}" / "report.json").read_text())
        reports.append(json.dumps(report, sort_keys=True).replace(name, "CHECKPOINT"))
    assert reports[0] == reports[1]
