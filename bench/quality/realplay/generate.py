"""Record episodes of random play, encode them and write one H5 file per episode plus a manifest.

The player: like a person holding a key, each latent frame it keeps the previous action with
probability `hold_prob` (0.75: runs of ~4-6 latent frames; an environment may set its own,
`PlayEnv.hold_prob`, where a held action would show in a single frame), otherwise it draws one
uniformly (possibly the same); an action that the environment says is `blocked` (it would change nothing
on screen: a wall, a screen edge) is replaced by one drawn uniformly among the others, as
`lam.data.world.simulate` does at its walls. Actions change only between latent frames.

Files (the product's data contract, README "Data format"), `OUT/<env>/episode_0000.h5`, ...:
    latents  float16 [N, 16, 2, 64, 64], HDF5-chunked one chunk row at a time; z[2k + j] = latents[k, :, j]
    actions  int64 [N, 2]: actions[k, j] is the action held during latent frame 2k + j, i.e. during the
             4 video frames encoded into it (so it caused the change z[t-1] -> z[t])
    attrs    generator, generator_version, env, env_version, env_description, frames, action_names, num_actions,
             seed, dataset_seed, episode, frames_per_latent, hold_prob, burn_in_frames, encoder,
             encoder_version, latent_mean, latent_std, packages, actions_semantics, and what the
             environment adds (vizdoom: map, restarts)
and `OUT/<env>/manifest.json` (`lam.data.manifest`, split by file 0.75 / 0.125 / 0.125).
Files are written under a hidden temporary name and renamed into place, as
`lam.data.synth.write_synthetic_dataset` does. Everything is a function of the seed: the same
seed gives the same latents and actions.
"""

from __future__ import annotations

import os
import pathlib
import time
import uuid
import warnings
from dataclasses import dataclass

import numpy as np

from bench.quality.realplay import encoder
from bench.quality.realplay.base import PlayEnv, make_env
from lam.data.synth import T_LATENT, file_seed, frames_to_chunks

GENERATOR_VERSION = 2  # bump when the same seed starts giving different data
HOLD_PROB = 0.75
SPLIT_RATIOS = (0.75, 0.125, 0.125)


@dataclass
class Episode:
    """One recorded episode: `latents` float16 (2N, 16, 64, 64) frame-major, `actions` int64 (2N,)."""

    latents: np.ndarray
    actions: np.ndarray
    burn_in_frames: int


def choose_action(env: PlayEnv, rng: np.random.Generator, previous: int, hold_prob: float) -> int:
    """The next latent frame's action: keep `previous` with probability `hold_prob`, else draw; never a blocked one."""
    n = len(env.action_names)
    hold = rng.random() < hold_prob
    fresh = int(rng.integers(n))
    action = previous if (hold and previous >= 0) else fresh
    if env.blocked(action):
        allowed = [a for a in range(n) if a != action and not env.blocked(a)]
        if allowed:
            action = int(rng.choice(allowed))
    return action


def hold_prob_of(env: PlayEnv, hold_prob: float | None = None) -> float:
    """The probability of holding an action: the one asked for, else the environment's own, else HOLD_PROB."""
    if hold_prob is not None:
        return float(hold_prob)
    return HOLD_PROB if env.hold_prob is None else float(env.hold_prob)


def play_episode(env: PlayEnv, seed: int, n_frames: int, hold_prob: float | None = None, encode: bool = True) -> Episode:
    """Reset `env` with `seed`, play `n_frames` latent frames after the burn-in, encode each as it comes.
    `hold_prob`: None for the environment's own (`hold_prob_of`).

    With `encode=False` the latents are the encoder's raw projections (float32, before the
    per-channel normalisation), which is what `measure_channel_stats` needs.
    """
    hold_prob = hold_prob_of(env, hold_prob)
    env.reset(seed)
    rng = np.random.default_rng([int(seed), 1])  # the player's own stream, apart from the environment's
    burn_in = int(rng.integers(env.burn_in)) if env.burn_in > 0 else 0
    action = -1
    for _ in range(burn_in):
        action = choose_action(env, rng, action, hold_prob)
        env.play(action)
    latents = np.empty((n_frames, encoder.CHANNELS, encoder.LATENT_SIZE, encoder.LATENT_SIZE), np.float16 if encode else np.float32)
    actions = np.empty(n_frames, np.int64)
    for t in range(n_frames):
        action = choose_action(env, rng, action, hold_prob)
        frames = env.play(action)  # (4, 512, 512, 3) uint8
        latents[t] = encoder.encode(frames, env.name)[0] if encode else encoder.project(frames)[0]
        actions[t] = action
    return Episode(latents, actions, burn_in)


def write_episode(path: pathlib.Path, env: PlayEnv, episode: Episode, *, seed: int, dataset_seed: int, index: int, hold_prob: float) -> None:
    """Write one episode atomically (hidden temporary name in the same folder, fsync, rename)."""
    import h5py

    latents = frames_to_chunks(episode.latents, dtype=np.float16)  # (N, 16, 2, 64, 64)
    actions = episode.actions.reshape(-1, T_LATENT).copy()  # (N, 2)
    mean, std = encoder.normalisation(env.name)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("latents", data=latents, chunks=(1, *latents.shape[1:]))
            f.create_dataset("actions", data=actions)
            f.attrs.update(
                generator="bench.realplay",  # the generator's name in every file and report, kept as it was
                generator_version=GENERATOR_VERSION,
                env=env.name,
                env_version=int(env.version),
                env_description=env.description,
                frames=env.frames_note,
                action_names=list(env.action_names),
                num_actions=len(env.action_names),
                seed=int(seed),
                dataset_seed=int(dataset_seed),
                episode=int(index),
                frames_per_latent=encoder.FRAMES_PER_LATENT,
                hold_prob=float(hold_prob),
                burn_in_frames=int(episode.burn_in_frames),
                encoder=encoder.DESCRIPTION,
                encoder_version=encoder.ENCODER_VERSION,
                latent_mean=mean,
                latent_std=std,
                packages=env.versions(),
                actions_semantics="actions[k, j] is the action held during the 4 video frames encoded into latent frame 2k+j "
                "(it made the change from z[2k+j-1]; for t=0 from an unrecorded frame)",
            )
            f.attrs.update(env.episode_attrs())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def generate(
    env_name: str,
    out_dir: str | os.PathLike,
    episodes: int = 16,
    chunks: int = 64,
    seed: int = 0,
    *,
    hold_prob: float | None = None,
    log=print,
) -> list[pathlib.Path]:
    """Write `episodes` files of `chunks` chunks for one environment under `out_dir/env_name`, and its manifest.

    Episode i uses `lam.data.synth.file_seed(seed, i)`; `hold_prob` None is the environment's own. Existing files with the same names are
    replaced; other files are left alone (and, being in the folder, are in the manifest).
    `log` gets one progress line per episode (None: silent).
    """
    from lam.data.manifest import create_manifest, write_manifest

    if episodes < 1 or chunks < 1:
        raise ValueError(f"episodes and chunks must be >= 1, got episodes={episodes}, chunks={chunks}")
    folder = pathlib.Path(out_dir) / env_name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with make_env(env_name) as env:
        hold_prob = hold_prob_of(env, hold_prob)
        for i in range(episodes):
            start = time.perf_counter()
            eseed = file_seed(seed, i)
            episode = play_episode(env, eseed, 2 * chunks, hold_prob)
            path = folder / f"episode_{i:04d}.h5"
            write_episode(path, env, episode, seed=eseed, dataset_seed=seed, index=i, hold_prob=hold_prob)
            paths.append(path)
            if log:
                log(f"[realplay] {env_name} episode {i + 1}/{episodes}: {chunks} chunks in {time.perf_counter() - start:.1f} s -> {path}")
    others = [p for p in folder.rglob("*") if p.suffix in (".h5", ".hdf5") and p not in paths]
    if others and log:
        log(f"[realplay] {env_name}: note: {len(others)} other H5 files in {folder} go into the manifest too")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty val or test split with very few episodes is expected
        manifest = create_manifest(folder, *SPLIT_RATIOS, seed=seed)
    write_manifest(manifest, folder / "manifest.json")
    if log:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in manifest.splits.items())
        log(f"[realplay] {env_name}: manifest {folder / 'manifest.json'} ({sizes} files)")
    return paths


def measure_channel_stats(env_name: str, episodes: int = 4, chunks: int = 32, seed: int = 1000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the encoder's raw projections over some play: the constants of `encoder.NORMALISATION`."""
    values = []
    with make_env(env_name) as env:
        for i in range(episodes):
            values.append(play_episode(env, file_seed(seed, i), 2 * chunks, encode=False).latents)
    z = np.concatenate(values).astype(np.float64)  # (T, 16, 64, 64)
    mean = z.mean(axis=(0, 2, 3))
    std = z.std(axis=(0, 2, 3))
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]
