"""Model hyperparameters.

Defaults are the spec's (README_VVAE_LAM.md): 16-channel 64x64 VVAE latents, 256
patches of dim 256, a 512-wide transformer with 3 encoder and 3 decoder layers,
3 codes of dim 128 per action, 12 entries per codebook (12^3 = 1,728 actions),
commitment weight 0.25. Only plain int/float/bool fields, so the config survives
YAML and `dataclasses.asdict` round trips unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    # VVAE latent frames: [in_channels, latent_size, latent_size]
    in_channels: int = 16
    latent_size: int = 64
    # Adapter: each frame becomes patch_grid x patch_grid patches of dim patch_dim
    patch_dim: int = 256
    patch_grid: int = 16
    # Transformers
    embed_dim: int = 512
    num_heads: int = 8
    encoder_depth: int = 3
    decoder_depth: int = 3
    mlp_ratio: float = 4.0
    # Quantizer: an action is num_codes vectors of codebook_dim, each one of num_embeddings entries
    codebook_dim: int = 128
    num_embeddings: int = 12
    num_codes: int = 3
    commitment_weight: float = 0.25
    # Finite scalar quantisation instead of VQ: each code is a point of a fixed grid of
    # num_embeddings points (levels factorised from num_embeddings, e.g. 12 -> 3 x 4; see
    # quantizer.fsq_levels_for), so codebook_dim and commitment_weight are unused.
    fsq: bool = False
    # Whiten each code's pre-quantisation vector (batch statistics in training, running ones in
    # evaluation; quantizer.RunningStandardize): removes the offset shared by all transitions,
    # which otherwise puts them all in one code, and decorrelates the code's dims
    standardize_z: bool = False
    # Motion stem on frame differences (patch at t minus patch at t-1), pooled by mean and max
    # over patches, instead of on the (patch at t, patch at t-1) pair pooled by mean
    diff_motion_stem: bool = False
    # Also add a linear map of the pooled motion features straight to the pre-quantisation
    # vectors (next to the transformer's action token), so codes see motion from the first step
    motion_to_code: bool = False
    # Add spatial moments of the patch differences (sum over patches of position x change) to
    # the pooled motion: for a moving object they are linear in its displacement
    motion_moments: bool = False
    # Codes from the motion stem alone (implies motion_to_code): no encoder transformer, so a
    # code cannot depend on what a frame looks like (its background), only on what changed
    motion_code_only: bool = False
    # Multi-step rollout loss (decoder fed its own predictions)
    use_rollout: bool = False
    rollout_horizon: int = 2
    rollout_weight: float = 1.0
    # Re-initialise a codebook entry unused for this many training steps (0 disables)
    dead_code_steps: int = 100
    # Length of the learned temporal position table: the longest window the model accepts
    max_frames: int = 64

    @property
    def num_patches(self) -> int:
        return self.patch_grid**2

    @property
    def patch_size(self) -> int:
        """Side of the square of latent pixels that one patch covers."""
        return self.latent_size // self.patch_grid

    @property
    def code_dim(self) -> int:
        """Dimension of one code vector: codebook_dim for VQ, the number of FSQ levels for FSQ."""
        if self.fsq:
            from lam.model.quantizer import fsq_levels_for

            return len(fsq_levels_for(self.num_embeddings))
        return self.codebook_dim

    @property
    def num_actions(self) -> int:
        return self.num_embeddings**self.num_codes

    def validate(self) -> "ModelConfig":
        """Raise ValueError naming the first impossible setting; return self so it chains."""
        positive = [
            "in_channels", "latent_size", "patch_dim", "patch_grid", "embed_dim", "num_heads",
            "encoder_depth", "decoder_depth", "codebook_dim", "num_embeddings", "num_codes",
            "rollout_horizon",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"model.embed_dim ({self.embed_dim}) must be divisible by model.num_heads ({self.num_heads})"
            )
        if self.latent_size % self.patch_grid:
            raise ValueError(
                f"model.latent_size ({self.latent_size}) must be divisible by model.patch_grid ({self.patch_grid})"
            )
        if self.fsq and self.num_embeddings < 2:
            raise ValueError(f"model.num_embeddings must be >= 2 with model.fsq, got {self.num_embeddings}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"model.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.commitment_weight < 0:
            raise ValueError(f"model.commitment_weight must be >= 0, got {self.commitment_weight!r}")
        if self.rollout_weight < 0:
            raise ValueError(f"model.rollout_weight must be >= 0, got {self.rollout_weight!r}")
        if not isinstance(self.dead_code_steps, int) or self.dead_code_steps < 0:
            raise ValueError(f"model.dead_code_steps must be an integer >= 0 (0 disables), got {self.dead_code_steps!r}")
        if not isinstance(self.max_frames, int) or self.max_frames < 2:
            raise ValueError(f"model.max_frames must be an integer >= 2, got {self.max_frames!r}")
        if self.use_rollout and self.rollout_horizon + 1 > self.max_frames:
            raise ValueError(
                f"model.rollout_horizon ({self.rollout_horizon}) needs windows of rollout_horizon + 1 frames, "
                f"more than model.max_frames ({self.max_frames})"
            )
        return self
