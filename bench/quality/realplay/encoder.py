"""A fixed, cheap stand-in for a video VAE: RGB frames -> VVAE-shaped latents.

The product trains on latents of shape `[N_chunks, 16, 2, 64, 64]`: a video VAE compresses
4 video frames into 1 latent frame (temporal factor 4), 8x8 pixels into 1 latent pixel
(spatial factor 8) and keeps 16 channels. This module does the same compression with a
fixed linear map, so real rendered play becomes data of the right shape and statistics
without a trained network (nothing to download, nothing learned, bit-for-bit reproducible).

Recipe (ENCODER_VERSION 3), for 4 frames `(4, H, W, 3)` uint8 -> one latent frame `(16, 64, 64)`:
1. Every frame that is not 512x512 is resized to 512x512 (PIL, bilinear).
2. Temporal mean of the 4 frames (float32), scaled to [-1, 1]: `x = mean / 127.5 - 1`.
3. Cut into 64x64 non-overlapping 8x8x3 patches (192 values each, ordered row, column, colour).
4. Project every patch onto 16 fixed orthonormal directions (`basis()`): products of an
   orthonormal colour transform and the 8x8 orthonormal DCT-II, i.e. what JPEG keeps first:
     - luma `(R+G+B)/sqrt(3)` at the first 10 frequencies of the JPEG zig-zag order
       (0,0) (0,1) (1,0) (2,0) (1,1) (0,2) (0,3) (1,2) (2,1) (3,0)      -> channels 0..9
     - red-blue `(R-B)/sqrt(2)` at (0,0) (0,1) (1,0)                       -> channels 10..12
     - green-magenta `(2G-R-B)/sqrt(6)` at (0,0) (0,1) (1,0)               -> channels 13..15
   (frequency (u, v): u cycles down the patch, v across). Channel 0 is 8*sqrt(3) times the
   patch's mean brightness; the others are brightness and colour gradients inside it.
5. Normalise per channel with fixed constants: `z = (p - mean[c]) / std[c]`, one pair of
   16-vectors per environment (`NORMALISATION`), so every channel has mean ~0 and variance ~1 on
   that environment's play, as a VAE's latents have after the usual scaling.
6. Bound softly: `z = 5 tanh(z / 5)` (identity near 0, never beyond 5). Channels that are near
   zero on most of the picture (colour and fine detail over MiniGrid's flat tiles, Doom's colour)
   are heavy-tailed, and a small bright object would otherwise reach |z| of 20-100, where a
   squared error would weigh a few pixels over everything else; a VAE's latents are bounded too.
   On such channels the bound leaves the variance below 1 (a zero background with sparse spikes).
7. Store as float16.

The constants were measured once per environment with
`bench.quality.realplay.generate.measure_channel_stats(env, episodes=4, chunks=32, seed=1000)` (seeds
that the default datasets do not use) and written below; they are part of the encoder, not
of a dataset, so files of one environment are comparable whatever their seed. A file records
the constants it was written with (attrs `latent_mean`, `latent_std`). When an environment's
play or look changes, measure its constants again along with its `version` (which regenerates
only its datasets); bump ENCODER_VERSION when the encoder itself changes.

Cost: under 10 ms for 4 frames of 512x512 on one core (a mean, a reshape and one 4096x192 by 192x16
matrix product).
"""

from __future__ import annotations

import functools

import numpy as np

FRAMES_PER_LATENT = 4  # temporal compression
PATCH = 8  # spatial compression
FRAME_SIZE = 512  # frames are 512x512 RGB
LATENT_SIZE = FRAME_SIZE // PATCH  # 64
CHANNELS = 16
ENCODER_VERSION = 3  # 3: Crafter drawn without facing or inventory, its constants measured again
BOUND = 5.0  # step 6

LUMA_FREQS = ((0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0))
CHROMA_FREQS = ((0, 0), (0, 1), (1, 0))
COLOUR = np.array(
    [
        [1.0, 1.0, 1.0],  # luma
        [1.0, 0.0, -1.0],  # red - blue
        [-1.0, 2.0, -1.0],  # green - magenta
    ]
)
COLOUR /= np.linalg.norm(COLOUR, axis=1, keepdims=True)

DESCRIPTION = (
    f"bench.realplay.encoder v{ENCODER_VERSION}: frames resized to 512x512, mean of 4 frames scaled to [-1, 1], "
    "8x8x3 patches projected on 16 orthonormal colour x DCT-II directions (luma: 10 lowest zig-zag "
    "frequencies; R-B and 2G-R-B: 3 each), per-channel fixed normalisation (attrs latent_mean, latent_std), 5 tanh(z / 5)"
)

# Per-environment (mean, std) of the 16 projected channels, from measure_channel_stats (see above).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "minigrid": (
        (-9.5074, -0.0008, 0.0015, 0.0046, 0.0002, 0.0009, -0.0055, 0.0002, 0.0003, -0.0054, 0.0051, -0.0, 0.0001, 0.0316, 0.002, 0.0012),
        (4.7366, 1.0322, 1.0326, 0.6769, 0.1487, 0.6741, 0.6424, 0.0893, 0.0896, 0.6428, 0.1549, 0.0633, 0.0635, 0.603, 0.1624, 0.1427),
    ),
    "crafter": (  # measured on CrafterPlay version 2
        (-7.9376, -0.0294, -0.0168, 0.0201, 0.0039, -0.0314, 0.0086, 0.0054, 0.0066, 0.006, -0.0526, -0.0186, -0.0071, 4.6938, -0.0533, 0.0026),
        (3.8569, 0.8303, 0.8136, 0.3602, 0.2955, 0.3937, 0.322, 0.2103, 0.2338, 0.3089, 1.7693, 0.3637, 0.3219, 3.4461, 0.6686, 0.6165),
    ),
    "vizdoom": (
        (-9.5388, -0.0013, -0.0049, -0.0013, -0.0002, 0.001, -0.0002, -0.0002, 0.0, 0.0003, 0.4339, -0.0, -0.0, 0.0807, -0.0, 0.0003),
        (2.7606, 0.3449, 0.3688, 0.1813, 0.1341, 0.1615, 0.1045, 0.0759, 0.0842, 0.105, 0.6722, 0.0951, 0.0712, 0.2277, 0.0444, 0.0345),
    ),
    "miniwob": (
        (-5.6925, 0.1009, 0.0467, -0.0554, 0.0007, 0.0217, 0.0638, 0.0015, 0.0055, -0.0982, 1.8495, -0.0058, 0.0462, 1.1958, -0.0041, 0.0262),
        (8.447, 1.3562, 1.4756, 0.7935, 0.5035, 1.1639, 0.7945, 0.4992, 0.4097, 0.6939, 3.9957, 0.4632, 0.5076, 2.304, 0.3422, 0.3719),
    ),
    "desktop": (
        (6.7642, -0.0203, 0.0294, 0.0204, -0.0007, -0.0155, 0.0128, 0.0014, -0.0009, 0.0412, -1.1249, -0.0139, -0.0011, 0.1614, 0.0019, -0.0002),
        (6.4352, 1.2348, 1.7132, 1.0038, 0.6569, 1.0436, 1.0028, 0.6409, 0.5402, 0.9072, 1.8226, 0.1769, 0.2921, 0.2126, 0.0205, 0.0333),
    ),
}


def dct_matrix(n: int = PATCH) -> np.ndarray:
    """The orthonormal DCT-II matrix `(n, n)`: row k is the k-th cosine, `D @ D.T = I`."""
    i = np.arange(n)
    d = np.cos(np.pi * (2 * i[None, :] + 1) * np.arange(n)[:, None] / (2 * n))
    d[0] *= np.sqrt(1.0 / n)
    d[1:] *= np.sqrt(2.0 / n)
    return d


@functools.cache
def basis() -> np.ndarray:
    """The 16 projection directions, float32 `(16, 192)`, orthonormal rows; a patch is flattened (row, col, colour)."""
    d = dct_matrix()
    rows = []
    for colour, freqs in ((0, LUMA_FREQS), (1, CHROMA_FREQS), (2, CHROMA_FREQS)):
        for u, v in freqs:
            spatial = np.outer(d[u], d[v])  # (8, 8)
            rows.append((spatial[:, :, None] * COLOUR[colour][None, None, :]).reshape(-1))
    return np.stack(rows).astype(np.float32)


def resize_frame(frame: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """An (H, W, 3) uint8 frame as (size, size, 3) uint8 (bilinear); unchanged when already that size."""
    if frame.shape[:2] == (size, size):
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))


def project(frames: np.ndarray) -> np.ndarray:
    """Steps 1-4: `(4L, H, W, 3)` uint8 frames -> float32 `(L, 16, 64, 64)` projections, not normalised."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] % FRAMES_PER_LATENT:
        raise ValueError(f"expected (4L, H, W, 3) frames with L >= 1, got shape {frames.shape}")
    if frames.shape[1:3] != (FRAME_SIZE, FRAME_SIZE):
        frames = np.stack([resize_frame(f) for f in frames])
    n = frames.shape[0] // FRAMES_PER_LATENT
    x = frames.reshape(n, FRAMES_PER_LATENT, FRAME_SIZE, FRAME_SIZE, 3).mean(axis=1, dtype=np.float32)
    x = x / np.float32(127.5) - np.float32(1.0)  # (L, 512, 512, 3) in [-1, 1]
    g = LATENT_SIZE
    patches = x.reshape(n, g, PATCH, g, PATCH, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n * g * g, PATCH * PATCH * 3)
    coef = patches @ basis().T  # (L*64*64, 16)
    return coef.reshape(n, g, g, CHANNELS).transpose(0, 3, 1, 2).copy()  # (L, 16, 64, 64)


def normalisation(env: str) -> tuple[np.ndarray, np.ndarray]:
    """The fixed per-channel (mean, std), float32 `(16,)` each, for `env`."""
    if env not in NORMALISATION:
        raise ValueError(f"no normalisation constants for environment {env!r} (have {sorted(NORMALISATION)})")
    mean, std = NORMALISATION[env]
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def encode(frames: np.ndarray, env: str) -> np.ndarray:
    """`(4L, H, W, 3)` uint8 frames of `env` -> float16 latents `(L, 16, 64, 64)` (the module's recipe)."""
    mean, std = normalisation(env)
    z = (project(frames) - mean[None, :, None, None]) / std[None, :, None, None]
    return (BOUND * np.tanh(z / BOUND)).astype(np.float16)


def decode(z: np.ndarray, env: str) -> np.ndarray:
    """An approximate inverse for looking at latents: `(L, 16, 64, 64)` -> `(L, 512, 512, 3)` uint8.

    Undoes the normalisation and maps every latent pixel back to the 8x8x3 patch it keeps (a
    blurred picture: the low frequencies only). `project(decode(z))` gives back z up to rounding.
    """
    mean, std = normalisation(env)
    z = BOUND * np.arctanh(np.clip(np.asarray(z, np.float32) / BOUND, -0.9999, 0.9999))  # undo step 6
    p = z * std[None, :, None, None] + mean[None, :, None, None]  # (L, 16, 64, 64)
    n, g = p.shape[0], LATENT_SIZE
    patches = p.transpose(0, 2, 3, 1).reshape(-1, CHANNELS) @ basis()  # (L*64*64, 192)
    x = patches.reshape(n, g, g, PATCH, PATCH, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, FRAME_SIZE, FRAME_SIZE, 3)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
