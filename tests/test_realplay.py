"""Real rendered play (`bench.quality.realplay`): the encoder's recipe, the files' contract, determinism, and
that every action shows on screen.

Each environment's tests skip, with the install command, where its package (or Chromium) is
missing; under CI (`CI` set) a missing one fails instead, since `scripts/setup.sh` installs them.
Sizes are tiny: 2 episodes of 2 chunks per environment.
"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT))  # `bench` is a folder of the repository, not an installed package
from bench.quality.realplay import encoder
from bench.quality.realplay.base import ENVIRONMENTS, MissingDependency, make_env
from bench.quality.realplay.generate import choose_action, generate, play_episode
from lam.data.h5 import inspect_file
from lam.data.manifest import load_manifest

ENVS = list(ENVIRONMENTS)
EPISODES, CHUNKS, SEED = 2, 2, 0
REQUIRED_ATTRS = ("generator", "env", "env_version", "action_names", "seed", "episode", "frames_per_latent", "encoder",
                  "encoder_version", "latent_mean", "latent_std")


def open_env(name: str):
    """The environment, or a skip (a failure under CI) that says how to install what is missing."""
    try:
        return make_env(name)
    except MissingDependency as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run every environment: {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="module", params=ENVS)
def dataset(request, tmp_path_factory):
    """(env name, folder) of a tiny dataset written by `generate`."""
    name = request.param
    open_env(name).close()
    out = tmp_path_factory.mktemp(f"realplay_{name}")
    generate(name, out, EPISODES, CHUNKS, SEED, log=None)
    return name, out / name


# ---------------------------------------------------------------------------------
# The encoder


def test_basis_is_orthonormal():
    b = encoder.basis().astype(np.float64)
    assert b.shape == (16, 192)
    np.testing.assert_allclose(b @ b.T, np.eye(16), atol=1e-6)


def test_encoder_shape_and_compression():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 512, 512, 3), dtype=np.uint8)
    z = encoder.encode(frames, "crafter")
    assert z.shape == (2, 16, 64, 64) and z.dtype == np.float16  # 4 frames -> 1 latent frame, 8x spatial

    # temporal: latent frame 1 depends only on frames 4..7, and on them only through their mean
    changed = frames.copy()
    changed[5] = 255 - changed[5]
    z2 = encoder.encode(changed, "crafter")
    np.testing.assert_array_equal(z2[0], z[0])
    assert np.abs(z2[1].astype(np.float32) - z[1]).max() > 0.1
    np.testing.assert_array_equal(encoder.encode(frames[[1, 0, 3, 2, 4, 5, 6, 7]], "crafter"), z)

    # spatial: one 8x8 patch of pixels is one latent pixel
    patched = frames.copy()
    patched[:4, 16:24, 40:48] = 0
    diff = np.abs(encoder.encode(patched, "crafter")[0].astype(np.float32) - z[0]).max(axis=0)
    assert diff[2, 5] > 0.1 and np.count_nonzero(diff) == 1


def test_decode_then_encode_gives_the_latents_back():
    rng = np.random.default_rng(1)
    z = encoder.encode(rng.integers(0, 256, (4, 512, 512, 3), dtype=np.uint8), "minigrid")
    frames = encoder.decode(z, "minigrid")
    assert frames.shape == (1, 512, 512, 3) and frames.dtype == np.uint8
    again = encoder.encode(np.repeat(frames, 4, axis=0), "minigrid").astype(np.float32)
    assert np.abs(again - z).max() < 0.5  # up to rounding to uint8 (and clipping) in between


def test_encoder_resizes_other_frame_sizes():
    frames = np.full((4, 480, 640, 3), 128, np.uint8)
    z = encoder.encode(frames, "vizdoom")
    assert z.shape == (1, 16, 64, 64)
    np.testing.assert_array_equal(z, encoder.encode(np.full((4, 512, 512, 3), 128, np.uint8), "vizdoom"))


def test_encoder_refuses_a_partial_latent_frame():
    with pytest.raises(ValueError, match="4L"):
        encoder.project(np.zeros((3, 512, 512, 3), np.uint8))


def test_every_environment_has_normalisation_constants():
    for name in ENVS:
        mean, std = encoder.normalisation(name)
        assert mean.shape == std.shape == (16,) and np.all(std > 0)


# ---------------------------------------------------------------------------------
# The files


def test_files_follow_the_data_contract(dataset):
    name, folder = dataset
    manifest = load_manifest(folder / "manifest.json")
    assert sorted(f for split in manifest.splits.values() for f in split) == [f"episode_{i:04d}.h5" for i in range(EPISODES)]
    for i in range(EPISODES):
        path = folder / f"episode_{i:04d}.h5"
        assert inspect_file(path, values="all").ok
        with h5py.File(path, "r") as f:
            latents, actions = f["latents"], f["actions"]
            assert latents.shape == (CHUNKS, 16, 2, 64, 64) and latents.dtype == np.float16
            assert latents.chunks == (1, 16, 2, 64, 64)
            assert actions.shape == (CHUNKS, 2) and actions.dtype == np.int64
            names = [str(n) for n in f.attrs["action_names"]]
            assert names == list(make_env(name).action_names)
            assert actions[()].min() >= 0 and actions[()].max() < len(names)
            for key in REQUIRED_ATTRS:
                assert key in f.attrs, key
            assert f.attrs["generator"] == "bench.realplay" and f.attrs["env"] == name
            assert f.attrs["frames_per_latent"] == 4 and f.attrs["episode"] == i
            assert np.all(np.isfinite(latents[()]))
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_latents_are_roughly_standardised(dataset):
    _, folder = dataset
    z = np.concatenate([h5py.File(folder / f"episode_{i:04d}.h5", "r")["latents"][()] for i in range(EPISODES)])
    z = z.astype(np.float32)  # (N, 16, 2, 64, 64)
    mean, std = z.mean(axis=(0, 2, 3, 4)), z.std(axis=(0, 2, 3, 4))
    assert np.all(np.abs(mean) < 2.0), mean  # loose: a few latent frames of one environment
    # > 0.1: colour channels over MiniGrid's grey tiles are zero but for a few bounded spikes
    assert np.all((std > 0.1) & (std < 5.0)), std
    assert 0.5 < float(np.sqrt(np.mean(std**2))) < 2.0


def test_same_seed_same_data_and_another_seed_other_data(dataset, tmp_path):
    name, folder = dataset
    generate(name, tmp_path / "again", 1, CHUNKS, SEED, log=None)
    generate(name, tmp_path / "other", 1, CHUNKS, SEED + 1, log=None)
    with h5py.File(folder / "episode_0000.h5", "r") as a, h5py.File(tmp_path / "again" / name / "episode_0000.h5", "r") as b:
        np.testing.assert_array_equal(a["latents"][()], b["latents"][()])
        np.testing.assert_array_equal(a["actions"][()], b["actions"][()])
    with h5py.File(folder / "episode_0000.h5", "r") as a, h5py.File(tmp_path / "other" / name / "episode_0000.h5", "r") as c:
        assert not np.array_equal(a["latents"][()], c["latents"][()])


# ---------------------------------------------------------------------------------
# The actions


@pytest.mark.parametrize("name", ENVS)
def test_different_actions_give_different_next_frames(name):
    """From one state (same seed, same two latent frames of play), every action that surely shows
    (`env.shows`: for most environments, every action that is not blocked) leads to its own next
    latent frame, different from every other action's."""
    env = open_env(name)
    with env:

        def next_latent(action: int) -> tuple[np.ndarray, list[bool]]:
            env.reset(123)
            rng, previous = np.random.default_rng(0), -1
            for _ in range(2):
                previous = choose_action(env, rng, previous, 0.75)
                env.play(previous)
            shows = [env.shows(a) for a in range(len(env.action_names))]
            return encoder.encode(env.play(action), name)[0].astype(np.float32), shows

        _, shows = next_latent(0)
        free = [a for a in range(len(env.action_names)) if shows[a]]
        assert len(free) >= min(3, len(env.action_names) - 1), shows
        nxt = {a: next_latent(a)[0] for a in free}
    for i, a in enumerate(free):
        for b in free[i + 1 :]:
            assert np.abs(nxt[a] - nxt[b]).max() > 1.0, (env.action_names[a], env.action_names[b])


def test_the_player_holds_actions_and_avoids_blocked_ones():
    class Stub:
        action_names = ("a", "b", "c")

        def blocked(self, action):
            return action == 2

    rng = np.random.default_rng(0)
    actions, previous = [], -1
    for _ in range(400):
        previous = choose_action(Stub(), rng, previous, 0.75)
        actions.append(previous)
    actions = np.array(actions)
    assert 2 not in actions and set(actions) == {0, 1}
    assert 0.6 < np.mean(actions[1:] == actions[:-1]) < 0.95  # held for a few latent frames


def test_play_episode_counts_latent_frames():
    env = open_env("minigrid")
    with env:
        ep = play_episode(env, 5, 6)
    assert ep.latents.shape == (6, 16, 64, 64) and ep.actions.shape == (6,)


# ---------------------------------------------------------------------------------
# The command line


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bench.quality.realplay", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_cli_help_and_user_errors():
    out = run_cli("--help")
    assert out.returncode == 0 and "--episodes" in out.stdout and "examples" in out.stdout
    bad = run_cli("--env", "pong")
    assert bad.returncode == 2 and "minigrid" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert run_cli("--chunks", "0").returncode == 2


def test_cli_says_what_to_install_when_something_is_missing(tmp_path):
    env = {**os.environ, "MINIWOB_CHROME_BINARY": str(tmp_path / "no-chromium"), "MINIWOB_CHROMEDRIVER": str(tmp_path / "no-driver")}
    out = subprocess.run([sys.executable, "-m", "bench.quality.realplay", "--env", "miniwob", "--out", str(tmp_path)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and "apt-get install chromium chromium-driver" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "miniwob").exists()


def test_cli_writes_a_dataset_the_product_validates(tmp_path):
    open_env("minigrid").close()
    out = run_cli("--env", "minigrid", "--episodes", 2, "--chunks", 2, "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "episode 2/2" in out.stdout
    check = subprocess.run([sys.executable, "-m", "lam", "validate", str(tmp_path / "minigrid")],
                           capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# ---------------------------------------------------------------------------------
# The desktop environment (real applications under Xvfb)


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("dataset", ["desktop"], indirect=True)
def test_desktop_dataset_is_valid(dataset):
    _, folder = dataset
    check = subprocess.run([sys.executable, "-m", "lam", "validate", str(folder)], capture_output=True, text=True,
                           timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    with h5py.File(folder / "episode_0000.h5", "r") as f:
        assert len(str(f.attrs["apps"]).split(",")) in (2, 3) and "python-xlib" in f.attrs["packages"]


def test_desktop_plays_varied_actions_and_leaves_no_process():
    env = open_env("desktop")
    try:
        env.reset(1)
        first = env.processes()
        assert len(first) >= 4  # Xvfb, Openbox and at least two applications
        episode = play_episode(env, 3, 40, encode=False)  # a new episode: the first one's programs are gone
        assert not [pid for pid in first if running(pid)]
        assert len(set(episode.actions.tolist())) >= 5, [env.action_names[a] for a in episode.actions]
        started = env.processes()
        folder = env._root_dir
    finally:
        env.close()
    assert started and not [pid for pid in started if running(pid)]
    assert not os.path.exists(folder)
    env.close()  # a second close does nothing


def test_desktop_says_what_to_install(monkeypatch, tmp_path):
    from bench.quality.realplay.desktop_env import DesktopPlay

    monkeypatch.setenv("PATH", str(tmp_path))  # no program found
    with pytest.raises(MissingDependency, match="apt-get install xvfb openbox mousepad"):
        DesktopPlay()


# ---------------------------------------------------------------------------------
# What the product makes of real play


def test_a_window_gets_the_same_ids_in_training_and_in_evaluation(tmp_path):
    """On real-play files, a model of the `real` recipe's parts (continuous action on whitened
    vectors, k-means ids) gives the training windows the ids in evaluation that its training
    forward gives them, and uses as many: the k-means is fitted on, and the training ids read
    from, the vectors as evaluation whitens them, not as the batch's statistics whiten them."""
    import copy

    import torch
    from helpers import small_model_config

    from lam.data.manifest import create_manifest
    from lam.eval.evaluate import split_batches
    from lam.model import LatentActionModel
    from lam.recipes import RECIPES
    from lam.train.metrics import CodeCounter

    open_env("minigrid").close()
    generate("minigrid", tmp_path, 8, 8, SEED, log=None)
    data = tmp_path / "minigrid"
    manifest = create_manifest(data, 0.7, 0.15, 0.15, seed=0)
    x = torch.cat([b[0] for b in split_batches(3, manifest, "train", 64)])  # (N, 3, 16, 64, 64)
    x = torch.nn.functional.avg_pool2d(x.flatten(0, 1), 4).unflatten(0, x.shape[:2])[:, :, :4]  # the small model's 4 x 16 x 16
    parts = {k: RECIPES["real"].overrides[k] for k in ("stem", "motion_moments", "action_head", "quantizer", "whiten",
                                                       "frame_correlation", "prediction", "noise_std")}
    torch.manual_seed(0)
    model = LatentActionModel(small_model_config(**parts, num_codes=1, codebook_dim=4, num_embeddings=9, kmeans_samples=512))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(2):  # two epochs: the second trains with the first one's centroids
        model.train()
        for batch in torch.randperm(len(x), generator=order).split(16):
            out = model(x[batch])
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        model.after_epoch()

    shuffled = torch.randperm(len(x), generator=order).split(16)
    evaluation = copy.deepcopy(model).eval()
    counts = {"train": CodeCounter(1, 9, "cpu"), "eval": CodeCounter(1, 9, "cpu")}
    same = total = 0
    with torch.no_grad():
        for batch in shuffled:
            trained_ids = copy.deepcopy(model).train()(x[batch]).indices  # the same model's training forward
            eval_ids, _ = evaluation.encode_actions(x[batch])
            counts["train"].add(trained_ids)
            counts["eval"].add(eval_ids)
            same, total = same + int((trained_ids == eval_ids).sum()), total + trained_ids.numel()
    used = {k: c.compute(k)[f"{k}/action_ids_used"] for k, c in counts.items()}
    assert used["train"] >= 3  # the check means something: the model uses several ids
    assert used["eval"] >= used["train"], used
    assert same / total >= 0.95, f"only {same} of {total} transitions get the same id in training and in evaluation"
