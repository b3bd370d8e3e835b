"""Synthetic VVAE-shaped latents with ground-truth actions: the embedded default data.

A small procedural world rendered straight into latent space, so that the demo and
tests need no real video, and so that "does the latent action model recover the
actions?" has a known answer.

The world (per latent frame, on a 64x64 latent grid)
- an **agent**: an 8x8 soft square with its own 16-channel signature, moved by a
  discrete action by `agent_step` (4) latent pixels per latent frame;
- a **distractor**: a round Gaussian blob with a different signature that bounces
  around on its own (random-walk velocity, reflecting walls), whatever the actions;
  so "something moved" is not the same as "the agent acted";
- a static **background**: a few smooth random fields (different per file, the same
  for all frames of a file) mixed into the 16 channels;
- i.i.d. Gaussian **noise** (std `noise_std`, 0.02 by default: mild, so the spec's overfit check (MSE < 0.01) is reachable) on every value.
Signatures and the channel mixing are fixed for the whole "game" (`default_style()`),
only the level (background), start positions and motion differ per file. Per-channel
offsets and scales are chosen so that every channel has mean ~0 and std ~1 over a
file, like a normalised VAE latent.

Actions, their semantics on the timeline and the simulation are in `lam.data.world`:
    z[2k + j] = latents[k, :, j]          the file's latent timeline, length 2 * N
    actions[k, j] = a[t], t = 2k + j     the action held during latent frame t (0 stay,
                                          1 up, 2 down, 3 left, 4 right, ...; ACTION_NAMES)

API
    simulate(n_frames, seed, ...) -> WorldTrajectory     the generator state (positions, actions)
    render_frames(traj, ...) -> float32 [T, 16, H, W]    frame-major latents for a trajectory
    render_video(n_chunks, seed, ...) -> (latents f16 [N,16,2,64,64], actions i64 [N,2])
    write_synthetic_dataset(out_dir, files=16, chunks=64, seed=0) -> [paths]

Run:
    python -m lam.data.synth demo_data --files 16 --chunks 64 --seed 0
"""

from __future__ import annotations

import functools
import os
import pathlib
import uuid
from dataclasses import dataclass

import numpy as np

from lam.data.world import ACTION_NAMES, WorldTrajectory, simulate, streams

CHANNELS, T_LATENT = 16, 2
STYLE_SEED = 20250101  # the fixed "game": signatures and channel mixing
GENERATOR_VERSION = 1  # bump when the same seed starts giving different data


def file_seed(seed: int, index: int) -> int:
    """The seed of file `index` of a dataset written with `seed` (independent streams per file)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------
# Rendering: scene maps -> 16 channels
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldStyle:
    """The fixed look of the game, in output (latent) units.

    A frame is `mixing @ fields + agent_signature * A + sum_k distractor_signatures[k] * D_k
    - channel_offset + noise`, where the fields have zero mean and unit variance and
    A, D_k are the agent's and distractors' shape maps (peak 1).
    """

    agent_signature: np.ndarray  # (16,)
    distractor_signatures: np.ndarray  # (MAX_DISTRACTORS, 16)
    mixing: np.ndarray  # (16, background_rank), unit-norm rows before per-channel scaling
    background_scales: tuple[float, ...]  # smoothing length (latent pixels) of each field


MAX_DISTRACTORS = 4


@functools.lru_cache(maxsize=None)
def default_style(background_rank: int = 6) -> WorldStyle:
    """The signatures and channel mixing shared by every synthetic file (fixed seed)."""
    rng = np.random.default_rng(STYLE_SEED)
    sigs = rng.standard_normal((1 + MAX_DISTRACTORS, CHANNELS))
    # Gram-Schmidt: agent and distractors get mutually orthogonal channel signatures.
    q, _ = np.linalg.qr(sigs.T)  # (16, 1+MAX_DISTRACTORS)
    sigs = q.T * np.sign(np.sum(q.T * sigs, axis=1, keepdims=True)) * np.sqrt(CHANNELS)  # RMS 1
    agent = np.clip(2.5 * sigs[0], -4.0, 4.0)  # RMS ~2.5 per channel: clearly visible
    distractors = np.clip(2.0 * sigs[1:], -4.0, 4.0)
    mixing = rng.standard_normal((CHANNELS, background_rank))
    mixing /= np.linalg.norm(mixing, axis=1, keepdims=True)
    scales = tuple(float(s) for s in np.geomspace(2.5, 10.0, background_rank))
    return WorldStyle(agent, distractors, mixing, scales)


def _agent_profile(size: int) -> np.ndarray:
    """1-D profile of the agent square: 1 inside, soft 2-pixel edges (e.g. .5 .87 1 1 1 1 .87 .5)."""
    i = np.arange(size)
    edge = np.minimum(i + 0.5, size - i - 0.5)
    return np.sqrt(np.clip(edge / 2.0, 0.0, 1.0))


def _background_fields(rng: np.random.Generator, scales: tuple[float, ...], height: int, width: int) -> np.ndarray:
    """(K, H, W) smooth periodic random fields, exactly zero-mean, orthogonal, unit variance."""
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.fftfreq(width)[None, :]
    k2 = (2 * np.pi) ** 2 * (ky**2 + kx**2)
    white = rng.standard_normal((len(scales), height, width))
    lowpass = np.exp(-0.5 * k2[None] * np.asarray(scales)[:, None, None] ** 2)
    fields = np.fft.ifft2(np.fft.fft2(white) * lowpass).real.reshape(len(scales), -1)
    fields -= fields.mean(axis=1, keepdims=True)
    q, _ = np.linalg.qr(fields.T)  # whiten: sample covariance becomes exactly the identity
    return (q.T * np.sqrt(height * width)).reshape(len(scales), height, width)


def _moments(maps_mean: float, maps_sq_mean: float) -> float:
    return maps_sq_mean - maps_mean**2


def render_frames(
    traj: WorldTrajectory,
    *,
    noise_std: float = 0.02,
    style: WorldStyle | None = None,
) -> np.ndarray:
    """Render a trajectory as frame-major latents, float32 `(T, 16, H, W)`.

    Uses the trajectory's seed for the background and the noise, so it is deterministic.
    Per channel, the expected mean over a file is 0 and the variance 1: the background is
    scaled to fill what the agent, the distractors and the noise leave of the unit variance.
    """
    style = style or default_style()
    n_d = traj.distractor_pos.shape[1]
    if n_d > MAX_DISTRACTORS:
        raise ValueError(f"at most {MAX_DISTRACTORS} distractors, got {n_d}")
    T, H, W = traj.n_frames, traj.height, traj.width
    _, _, rng_bg, rng_noise = streams(traj.seed)
    hw = float(H * W)

    # ---- shape maps: separable, so build rows and columns ----
    prof = _agent_profile(traj.agent_size).astype(np.float32)
    arange_t = np.arange(T)[:, None]
    rows = np.zeros((T, H), np.float32)
    cols = np.zeros((T, W), np.float32)
    rows[arange_t, traj.agent_pos[:, :1] + np.arange(traj.agent_size)] = prof
    cols[arange_t, traj.agent_pos[:, 1:] + np.arange(traj.agent_size)] = prof
    agent_map = rows[:, :, None] * cols[:, None, :]  # (T, H, W)
    s = traj.distractor_sigma
    gy = np.exp(-0.5 * ((np.arange(H)[None, None] - traj.distractor_pos[..., 0:1]) / s) ** 2)  # (T, n_d, H)
    gx = np.exp(-0.5 * ((np.arange(W)[None, None] - traj.distractor_pos[..., 1:2]) / s) ** 2)  # (T, n_d, W)
    dist_maps = (gy[..., :, None] * gx[..., None, :]).astype(np.float32)  # (T, n_d, H, W)

    # ---- per-channel moments of the objects (constant: they never leave the frame) ----
    a_mean, a_var = prof.sum() ** 2 / hw, _moments(prof.sum() ** 2 / hw, (prof**2).sum() ** 2 / hw)
    g = np.exp(-0.5 * (np.arange(-4 * s, 4 * s + 1) / s) ** 2)
    d_mean, d_var = g.sum() ** 2 / hw, _moments(g.sum() ** 2 / hw, (g**2).sum() ** 2 / hw)
    a_sig = style.agent_signature
    d_sig = style.distractor_signatures[:n_d]  # (n_d, 16)
    offset = a_sig * a_mean + d_sig.sum(0) * d_mean  # (16,)
    obj_var = a_sig**2 * a_var + (d_sig**2).sum(0) * d_var
    bg_var = 1.0 - noise_std**2 - obj_var
    if np.any(bg_var <= 0.05):
        raise ValueError("noise_std too large: the channels cannot keep unit variance")

    # ---- background: smooth fields mixed into 16 channels, scaled to fill the variance ----
    fields = _background_fields(rng_bg, style.background_scales, H, W)  # (K, H, W)
    mixing = style.mixing * np.sqrt(bg_var)[:, None]  # rows of norm sqrt(bg_var)
    background = np.tensordot(mixing, fields, axes=1) - offset[:, None, None]  # (16, H, W)

    # ---- compose: noise + background + objects ----
    out = rng_noise.standard_normal((T, CHANNELS, H, W), dtype=np.float32)
    out *= np.float32(noise_std)
    out += background.astype(np.float32)[None]
    out += agent_map[:, None] * a_sig.astype(np.float32)[None, :, None, None]
    for k in range(n_d):
        out += dist_maps[:, k, None] * d_sig[k].astype(np.float32)[None, :, None, None]
    return out


def frames_to_chunks(frames: np.ndarray, dtype=np.float16) -> np.ndarray:
    """Frame-major `(2N, C, H, W)` -> file layout `(N, C, 2, H, W)`, C-contiguous."""
    t, c, h, w = frames.shape
    if t % T_LATENT:
        raise ValueError(f"the number of frames must be a multiple of {T_LATENT}, got {t}")
    out = np.empty((t // T_LATENT, c, T_LATENT, h, w), dtype=dtype)
    out[...] = frames.reshape(t // T_LATENT, T_LATENT, c, h, w).transpose(0, 2, 1, 3, 4)
    return out


def render_video(
    n_chunks: int,
    seed: int,
    *,
    num_actions: int = 5,
    noise_std: float = 0.02,
    style: WorldStyle | None = None,
    **sim_kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic video: `(latents float16 [n_chunks, 16, 2, 64, 64], actions int64 [n_chunks, 2])`.

    `actions[k, j]` is the action that moved the agent into latent frame `2k + j`
    (see the module docstring). Extra keyword arguments go to `simulate` (agent_step,
    hold_prob, n_distractors, ...). Deterministic for `seed`.
    """
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    traj = simulate(T_LATENT * n_chunks, seed, num_actions=num_actions, **sim_kwargs)
    frames = render_frames(traj, noise_std=noise_std, style=style)
    return frames_to_chunks(frames), traj.actions.reshape(n_chunks, T_LATENT).copy()


# ---------------------------------------------------------------------------------
# Writing H5 files
# ---------------------------------------------------------------------------------


def file_lengths(files: int, chunks: int, vary_length: bool) -> list[int]:
    """Chunks per file: all `chunks`, or evenly spread over `chunks // 2 .. chunks` (distinct where possible)."""
    if not vary_length or files == 1:
        return [chunks] * files
    return [int(round(x)) for x in np.linspace(max(1, chunks // 2), chunks, files)]


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    files: int = 16,
    chunks: int = 64,
    seed: int = 0,
    *,
    vary_length: bool = False,
    progress: bool = False,
    num_actions: int = 5,
    compression: str | None = None,
    **render_kwargs,
) -> list[pathlib.Path]:
    """Write `out_dir/video_0000.h5`, ... and return their paths.

    Each file has `latents` (float16 `[N, 16, 2, 64, 64]`, HDF5-chunked one chunk row
    at a time, uncompressed unless `compression` is given) and `actions` (int64
    `[N, 2]`); file i uses `file_seed(seed, i)`. Every file is written to a hidden
    temporary name in `out_dir` and renamed into place, so a crash never leaves a
    half-written file under a final name. Existing files with the same names are
    replaced; other files in `out_dir` are left alone.
    """
    import h5py

    if files < 1 or chunks < 1:
        raise ValueError(f"files and chunks must be >= 1, got files={files}, chunks={chunks}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lengths = file_lengths(files, chunks, vary_length)
    indices = range(files)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="synthetic videos", unit="file")
    paths = []
    for i in indices:
        fseed = file_seed(seed, i)
        latents, actions = render_video(lengths[i], fseed, num_actions=num_actions, **render_kwargs)
        final = out / f"video_{i:04d}.h5"
        # a hidden name that no `*.h5` listing picks up; h5py creates it with the usual umask
        tmp = str(out / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset(
                    "latents", data=latents, chunks=(1, *latents.shape[1:]), compression=compression
                )
                f.create_dataset("actions", data=actions)
                f.attrs.update(
                    generator="lam.data.synth",
                    generator_version=GENERATOR_VERSION,
                    seed=fseed,
                    dataset_seed=int(seed),
                    file_index=i,
                    num_actions=num_actions,
                    action_names=list(ACTION_NAMES[:num_actions]),
                    actions_semantics="actions[k, j] moved the agent into latent frame 2k+j "
                    "(from frame 2k+j-1; for t=0 from an unseen frame t=-1)",
                )
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        paths.append(final)
    return paths

