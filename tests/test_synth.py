"""The synthetic world: shapes and scale, determinism, and that the actions are real.

The key check recovers the agent's position from the rendered latents alone (unmix
the 16 channels with the published signatures, then match an 8x8 box) and checks
that every move between consecutive latent frames is the recorded action.
"""

import os

import h5py
import numpy as np
import pytest

from lam.data import synth, world

STEP = 4
SIZE = 8


def frames_of(latents: np.ndarray) -> np.ndarray:
    """File layout (N, C, 2, H, W) -> timeline (2N, C, H, W) with z[2k+j] = latents[k, :, j]."""
    n, c, t, h, w = latents.shape
    return latents.astype(np.float32).transpose(0, 2, 1, 3, 4).reshape(n * t, c, h, w)


def object_maps(frames: np.ndarray, n_distractors: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel least-squares unmixing onto [background mixing | agent | distractors]."""
    style = synth.default_style()
    cols = np.concatenate(
        [style.mixing, style.agent_signature[:, None], style.distractor_signatures[:n_distractors].T], axis=1
    )  # (16, K + 1 + n_d)
    coef = np.einsum("kc,tchw->tkhw", np.linalg.pinv(cols), frames)
    k = style.mixing.shape[1]
    return coef[:, k], coef[:, k + 1 :]


def locate_agent(agent_map: np.ndarray) -> np.ndarray:
    """(T, H, W) -> (T, 2) top-left (y, x) of the best-matching SIZE x SIZE box."""
    win = np.lib.stride_tricks.sliding_window_view(agent_map, (SIZE, SIZE), axis=(1, 2))
    score = win.sum(axis=(-1, -2))  # (T, H-S+1, W-S+1)
    flat = score.reshape(score.shape[0], -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, score.shape[1:]), axis=1)


def locate_peak(m: np.ndarray) -> np.ndarray:
    flat = m.reshape(m.shape[0], -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, m.shape[1:]), axis=1)


def run_lengths(a: np.ndarray) -> np.ndarray:
    change = np.flatnonzero(np.diff(a)) + 1
    bounds = np.concatenate([[0], change, [len(a)]])
    return np.diff(bounds)


# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_actions", [5, 9])
def test_shapes_dtypes_and_action_range(num_actions):
    latents, actions = synth.render_video(6, seed=3, num_actions=num_actions)
    assert latents.shape == (6, 16, 2, 64, 64)
    assert latents.dtype == np.float16 and latents.flags["C_CONTIGUOUS"]
    assert actions.shape == (6, 2) and actions.dtype == np.int64
    assert actions.min() >= 0 and actions.max() < num_actions
    assert np.isfinite(latents).all()


def test_bad_num_actions():
    with pytest.raises(ValueError):
        synth.render_video(1, 0, num_actions=4)


def test_per_channel_mean_and_std_look_like_a_normalised_vae():
    latents, _ = synth.render_video(32, seed=11)
    x = latents.astype(np.float32)
    mean = x.mean(axis=(0, 2, 3, 4))
    std = x.std(axis=(0, 2, 3, 4))
    assert np.all(np.abs(mean) < 0.1), mean
    assert np.all((std > 0.85) & (std < 1.15)), std


def test_deterministic_for_a_seed_and_seeds_differ():
    a1, b1 = synth.render_video(4, seed=5)
    a2, b2 = synth.render_video(4, seed=5)
    a3, b3 = synth.render_video(4, seed=6)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert not np.array_equal(a1, a3)
    t1, t3 = synth.simulate(64, 5), synth.simulate(64, 6)
    assert not np.array_equal(t1.agent_pos, t3.agent_pos)


@pytest.mark.parametrize("num_actions", [5, 9])
def test_generator_state_follows_the_actions_and_walls(num_actions):
    traj = synth.simulate(2000, seed=2, num_actions=num_actions)
    deltas = world.ACTION_DELTAS[traj.actions] * traj.agent_step
    # every recorded action, t = 0 included (from the unseen frame t = -1), is the move
    assert np.array_equal(traj.displacements(), deltas)
    # walls: the agent is always fully inside the frame, and every action is used
    for pos in (traj.agent_pos, traj.agent_pos_before[None]):
        assert pos.min() >= 0 and pos.max() <= 64 - traj.agent_size
    assert set(np.unique(traj.actions)) == set(range(num_actions))
    # render_video records exactly the simulated actions, in the file layout
    _, actions = synth.render_video(50, seed=2, num_actions=num_actions)
    assert np.array_equal(actions.reshape(-1), synth.simulate(100, seed=2, num_actions=num_actions).actions)


def test_agent_motion_in_the_latents_matches_the_actions():
    seed, n_chunks = 7, 48
    latents, actions = synth.render_video(n_chunks, seed)
    traj = synth.simulate(2 * n_chunks, seed)
    agent_map, _ = object_maps(frames_of(latents))
    pos = locate_agent(agent_map)
    # the agent is found exactly where the generator put it...
    assert np.mean(np.all(pos == traj.agent_pos, axis=1)) >= 0.98
    # ...and every move between consecutive latent frames points the way the action says
    a = actions.reshape(-1)[1:]  # actions[t] for t >= 1: z[t-1] -> z[t]
    move = np.diff(pos, axis=0)
    assert np.mean(np.all(np.sign(move) == world.ACTION_DELTAS[a], axis=1)) >= 0.98
    assert np.mean(np.all(move == STEP * world.ACTION_DELTAS[a], axis=1)) >= 0.98
    # the motion is not trivial: all five actions occur, including real moves
    assert set(np.unique(a)) == set(range(5))


def test_distractor_moves_on_its_own_during_stay():
    seed, n_chunks = 1, 64
    latents, actions = synth.render_video(n_chunks, seed, hold_prob=0.9)
    traj = synth.simulate(2 * n_chunks, seed, hold_prob=0.9)
    a = actions.reshape(-1)
    stay = np.flatnonzero(a[1:] == 0) + 1  # frames t >= 1 reached by "stay"
    assert len(stay) >= 5
    # generator state: the agent is still, the distractor is not
    assert np.all(traj.displacements()[stay] == 0)
    dmove = np.linalg.norm(traj.distractor_pos[stay, 0] - traj.distractor_pos[stay - 1, 0], axis=1)
    assert np.mean(dmove > 0.5) >= 0.9 and dmove.mean() > 1.5  # (a bounce can shorten one step)
    # in the latents: the distractor's peak moves while the agent stays, and the frames change
    agent_map, dist_maps = object_maps(frames_of(latents))
    apos, dpos = locate_agent(agent_map), locate_peak(dist_maps[:, 0])
    assert np.mean(np.all(apos[stay] == apos[stay - 1], axis=1)) >= 0.95
    assert np.mean(np.any(dpos[stay] != dpos[stay - 1], axis=1)) >= 0.9
    assert np.mean(np.abs(dpos - traj.distractor_pos[:, 0]) <= 1.0) >= 0.95
    z = frames_of(latents)
    assert np.mean(np.abs(z[stay] - z[stay - 1]).max(axis=(1, 2, 3)) > 1.0) >= 0.9  # noise alone: < 0.7


def test_actions_persist_like_a_held_key():
    a = synth.simulate(4000, seed=4).actions
    assert run_lengths(a).mean() > 2.0
    a0 = synth.simulate(4000, seed=4, hold_prob=0.0).actions
    assert run_lengths(a0).mean() < run_lengths(a).mean()


def test_write_synthetic_dataset(tmp_path):
    out = tmp_path / "data"
    paths = synth.write_synthetic_dataset(out, files=3, chunks=4, seed=9)
    assert [p.name for p in paths] == ["video_0000.h5", "video_0001.h5", "video_0002.h5"]
    assert sorted(os.listdir(out)) == [p.name for p in paths]  # no temp files left
    for i, p in enumerate(paths):
        with h5py.File(p, "r") as f:
            lat, act = f["latents"], f["actions"]
            assert lat.shape == (4, 16, 2, 64, 64) and lat.dtype == np.float16
            assert lat.chunks == (1, 16, 2, 64, 64) and lat.compression is None
            assert act.shape == (4, 2) and act.dtype == np.int64
            ref_lat, ref_act = synth.render_video(4, synth.file_seed(9, i))
            assert np.array_equal(lat[...], ref_lat) and np.array_equal(act[...], ref_act)
    with h5py.File(paths[0], "r") as f0, h5py.File(paths[1], "r") as f1:
        assert not np.array_equal(f0["latents"][0], f1["latents"][0])  # files differ


def test_vary_length(tmp_path):
    paths = synth.write_synthetic_dataset(tmp_path, files=4, chunks=8, seed=0, vary_length=True)
    lengths = []
    for p in paths:
        with h5py.File(p, "r") as f:
            lengths.append(f["latents"].shape[0])
            assert f["actions"].shape == (lengths[-1], 2)
    assert len(set(lengths)) == 4 and min(lengths) >= 4 and max(lengths) == 8
    assert not [n for n in os.listdir(tmp_path) if not n.endswith(".h5")]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def boom(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(synth.os, "fsync", boom)
    with pytest.raises(OSError, match="disk on fire"):
        synth.write_synthetic_dataset(tmp_path, files=2, chunks=2)
    assert os.listdir(tmp_path) == []



def test_lam_synth_command(tmp_path):
    from lam.commands import main

    assert main(["synth", str(tmp_path), "--files", "2", "--chunks", "2", "--vary-length", "--num_actions", "9"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["video_0000.h5", "video_0001.h5"]
    with h5py.File(tmp_path / "video_0000.h5") as f:
        assert f["actions"][()].max() < 9
