"""A continuous, noise-regularised action, discretised by k-means for its ids.

In training the decoder gets the encoder's vector z plus Gaussian noise of std
`noise_std`, not a code: how much a vector can tell the decoder is bounded by the
noise (for unit-variance vectors, at most 0.5 * log2(1 + 1/noise_std^2) bits per
dimension), so the encoder has to spend it on what predicts the next frame, and
there is no codebook to collapse. This is the beta-VAE-style bottleneck of
latent-action work where dropping the quantiser helped (AdaWorld, LAOM). With
`kl_weight` > 0 the prior term 0.5 * mean(z^2) joins the loss, which keeps the
vectors near unit scale without whitening (with `whiten` they already are).

Ids come from k-means: position k of the K codes has M centroids, fitted at the end
of every training epoch (`after_epoch`) on the last `kmeans_samples` vectors of that
epoch's training batches, as evaluation sees them (with `whiten`, whitened by the running
statistics, not the batch's: centroids fitted on batch-whitened vectors put evaluation's
vectors into a few of them) (gathered from all ranks; rank 0 fits with scikit-learn and
broadcasts, so every rank holds the same centroids). The centroids are buffers, so
a checkpoint carries them and `lam eval` / `lam export` use them:

    nearest(z)        -> the nearest centroid of each position (the action's ids)
    lookup(indices)   -> the centroids, which is what the decoder gets for given ids
                         (delta-t PSNR and rollouts with ids measure the discrete actions)

Before the first fit every id is 0 (and lookup gives zero vectors). The buffer of
vectors is emptied at each fit, so a fit sees only its own epoch, whether the run got
there straight or after a resume.
"""

from __future__ import annotations

import numpy as np
import torch

from lam.config import GaussianSettings, ModelConfig
from lam.model.distributed import all_gather, broadcast_from_rank0_, rank
from lam.model.quantize.base import Quantizer, QuantizerOutput


class GaussianBottleneck(Quantizer):
    settings = GaussianSettings

    loss_names = ("kl_loss",)
    continuous = True

    def __init__(self, num_codes: int = 1, num_embeddings: int = 12, code_dim: int = 8, noise_std: float = 0.5,
                 kl_weight: float = 0.0, kmeans_samples: int = 4096):
        super().__init__(num_codes, num_embeddings, code_dim)
        self.noise_std, self.kl_weight = noise_std, kl_weight
        self.register_buffer("centroids", torch.zeros(num_codes, num_embeddings, code_dim))  # (K, M, D)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("fits", torch.zeros((), dtype=torch.long))  # seeds the next fit's k-means
        # This epoch's vectors, per rank; not saved (a fit only uses its own epoch's).
        self.register_buffer("recent", torch.zeros(num_codes, kmeans_samples, code_dim), persistent=False)
        # How many rows of `recent` are filled, and where the next vectors go (a ring). Both stay
        # on the device, so a training step never reads them back and compiles into one graph.
        self.register_buffer("recent_count", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("next_row", torch.zeros((), dtype=torch.long), persistent=False)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "GaussianBottleneck":
        s = cfg.quantizer_settings
        return cls(cfg.num_codes, cfg.num_embeddings, s.codebook_dim, s.noise_std, s.kl_weight, s.kmeans_samples)

    # ----------------------------------------------------------------- lookups
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (..., K) long of the nearest centroid for z (..., K, D). Pure: no state changes."""
        with torch.autocast(z.device.type, enabled=False):
            flat = z.detach().float().reshape(-1, self.num_codes, self.code_dim)  # (n, K, D)
            dist2 = (flat[:, :, None, :] - self.centroids[None]).pow(2).sum(-1)  # (n, K, M)
            return dist2.argmin(-1).reshape(z.shape[:-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Centroids (..., K, D) float32 for indices (..., K)."""
        k = torch.arange(self.num_codes, device=indices.device)
        return self.centroids[k, indices]

    # ----------------------------------------------------------------- forward
    def forward(self, z: torch.Tensor, z_ids: torch.Tensor | None = None) -> QuantizerOutput:
        """z: (..., K, D) encoder outputs. Training: z + noise goes to the decoder; evaluation: z.
        The ids, and the vectors kept for the next k-means fit, are those of `z_ids` where given
        (z as evaluation whitens it), else of z."""
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            ids_from = z if z_ids is None else z_ids.float()
            kl_loss = 0.5 * z.pow(2).mean()  # the prior term of KL(N(z, s^2) || N(0, 1)), up to a constant
            out = z + self.noise_std * torch.randn_like(z) if self.training and self.noise_std > 0 else z
            indices = self.nearest(ids_from)
            _, usage, perplexity = self.code_statistics(indices)
            if self.training:
                self.remember(ids_from)
        return QuantizerOutput(quantized=out, indices=indices, usage=usage, perplexity=perplexity,
                               losses={"kl_loss": kl_loss}, loss=self.kl_weight * kl_loss if self.kl_weight > 0 else None)

    @torch.no_grad()
    def remember(self, z: torch.Tensor) -> None:
        """Keep vectors z (..., K, D) for the next fit (a ring of the latest `kmeans_samples`).
        Reads nothing back from the device."""
        vecs = z.detach().float().reshape(-1, self.num_codes, self.code_dim).transpose(0, 1)  # (K, n, D)
        size = self.recent.shape[1]
        vecs = vecs[:, -size:]
        n = vecs.shape[1]
        rows = (torch.arange(n, device=vecs.device) + self.next_row) % size
        self.recent[:, rows] = vecs
        self.next_row.copy_((self.next_row + n) % size)
        self.recent_count.copy_((self.recent_count + n).clamp_max(size))

    # ----------------------------------------------------------------- k-means
    def after_epoch(self) -> None:
        self.fit_centroids()

    @torch.no_grad()
    def fit_centroids(self) -> bool:
        """Fit each position's M centroids to the remembered vectors of all ranks; call on every
        rank. Returns whether a fit happened (it needs at least M vectors)."""
        counts = all_gather(self.recent_count.reshape(1))
        buffers = all_gather(self.recent)
        fitted = torch.zeros((), dtype=torch.bool, device=self.centroids.device)
        if rank() == 0:
            pool = torch.cat([b[:, : int(c)] for b, c in zip(buffers, counts)], dim=1)  # (K, n, D)
            # A step that was skipped as non-finite still passed its vectors here; leave them out.
            pool = pool[:, torch.isfinite(pool).all(-1).all(0)]
            if pool.shape[1] >= self.num_embeddings:
                self.centroids.copy_(self._kmeans(pool.cpu().double().numpy()).to(self.centroids))
                fitted.fill_(True)
        broadcast_from_rank0_(fitted)
        if bool(fitted):
            broadcast_from_rank0_(self.centroids)
            self.fitted.fill_(True)
            self.fits += 1
        self.recent_count.zero_()
        self.next_row.zero_()
        return bool(fitted)

    def _kmeans(self, pool: np.ndarray) -> torch.Tensor:
        from sklearn.cluster import KMeans  # only a fit needs scikit-learn

        centres = []
        for k in range(self.num_codes):
            km = KMeans(n_clusters=self.num_embeddings, n_init=4, random_state=int(self.fits) * self.num_codes + k)
            centres.append(km.fit(pool[k]).cluster_centers_)
        return torch.from_numpy(np.stack(centres)).float()
