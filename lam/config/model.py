"""The model's section of a run config: its parts, their sizes and the components chosen by name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lam.config.components import (ACTION_HEAD, COMPONENT_KINDS, FORWARD_TARGET, FRAME_CORRELATION, MOTION_MOMENTS, PREDICTION,
                                   QUANTIZER, ROLLOUT, STEM, FSQSettings, GaussianSettings,
                                   MultistepSettings, NoRolloutSettings, PixelsLatentSettings, PixelsSettings, VQSettings,
                                   is_positive_int)
from lam.config.options import option


STEMS = STEM.names
MOMENTS = MOTION_MOMENTS.names
CORRELATIONS = FRAME_CORRELATION.names
ACTION_HEADS = ACTION_HEAD.names
QUANTIZERS = QUANTIZER.names
PREDICTIONS = PREDICTION.names
FORWARD_TARGETS = FORWARD_TARGET.names


@dataclass
class ModelConfig:
    """The latent action model. Built with no arguments, it is the spec's model: 16-channel
    64x64 latents, 256 patches of dim 256, a 512-wide transformer with 3 encoder and 3
    decoder layers, 3 VQ codes of dim 128 from 12-entry codebooks (12^3 = 1,728 actions)."""

    in_channels: int = option(16, "channels of a latent frame")
    latent_size: int = option(64, "height and width of a latent frame")
    patch_dim: int = option(256, "dimension of a patch vector (the input adapter's output channels)")
    patch_grid: int = option(16, "patches per side: a frame becomes patch_grid^2 patches")
    embed_dim: int = option(512, "transformer width")
    num_heads: int = option(8, "attention heads (must divide embed_dim)")
    encoder_depth: int = option(3, "encoder transformer layers")
    decoder_depth: int = option(3, "decoder transformer layers")
    mlp_ratio: float = option(4.0, "transformer MLP width as a multiple of embed_dim")
    stem: str = option("pair", "what the encoder's motion stem sees: pair = (patch at t, patch at t-1), "
                       "diff = their difference (a static background cancels)", choices=STEMS)
    motion_moments: str = option("none", "add spatial moments of the frame difference to the stem's features (linear in how far "
                                 "and which way things moved): patches = over the patch grid, of the patch features; "
                                 "pixels = over the latent pixels, per channel, scaled by how much changed (a small "
                                 "object's move anywhere in the frame); patches+pixels = both; none = off (true/false "
                                 "in older configs: patches/none)", choices=MOMENTS, aliases={"true": "patches", "false": "none"})
    frame_correlation: str = option("none", "add where the whole picture moved to the stem's features: the correlation of "
                                    "frames t-1 and t under every shift (camera motion, scrolling, a pointer); "
                                    "phase = phase correlation (sharp peaks), cross = plain cross-correlation, change = phase "
                                    "correlation of frames t-1 and t seen only where they differ (where a small object such as a pointer moved "
                                    "on a static picture), phase+change = both, none = off",
                                    choices=CORRELATIONS)
    action_head: str = option("token", "where an action comes from: token = the encoder transformer's action token, "
                              "token+motion = that plus a linear map of the stem's features, "
                              "motion = the stem's features alone (no encoder transformer)", choices=ACTION_HEADS)
    action_offset: int = option(1, "the frame the encoder compares frame t with for the action of t-1 -> t: t - action_offset (the "
                                "window's first where that is before it); 1: the previous frame; more, for sets where one latent frame "
                                "moves little. The decoder still predicts t from t-1")
    quantizer: str = option("vq", "the action bottleneck: vq = learned codebooks (the spec), "
                            "fsq = finite scalar quantisation (a fixed grid; nothing to collapse), "
                            "gaussian = a continuous vector plus noise in training, ids from k-means", choices=QUANTIZERS)
    whiten: bool = option(False, "whiten each code's vector before quantising (batch statistics in training, "
                          "running ones in evaluation), so transitions spread over the codes from the first step")
    # The chosen quantizer's own settings (VQSettings, FSQSettings or GaussianSettings, declared in
    # lam/config/components.py), set with their flat keys; None: the chosen one's defaults.
    quantizer_settings: VQSettings | FSQSettings | GaussianSettings | None = field(default=None, metadata={"component": "quantizer"})
    num_embeddings: int = option(12, "ids each code takes (the spec's codebook vocabulary N): actions = num_embeddings^num_codes")
    num_codes: int = option(3, "codes per action")
    prediction: str = option("residual", "what the decoder's output is added to: residual = frame t-1, "
                             "shifted = frame t-1 moved by shifts that a linear map of the action picks (camera motion, scrolling), "
                             "shifted-local = that, only where a mask from the decoder says (a moving pointer or agent)",
                             choices=PREDICTIONS)
    change_weight: float = option(0.0, "weight the prediction loss towards latent pixels that changed: 1 + change_weight * |x_t - x_t-1| / its mean (0: plain MSE)")
    forward_target: str = option("pixels", "what the decoder predicts of frame t: pixels = its VVAE latents; pixels+latent = those and, "
                                 "from its hidden tokens, frame t's tokens as a moving average of a per-frame encoder sees them "
                                 "(a forward model in a learned latent space)", choices=FORWARD_TARGETS)
    # The chosen forward target's settings (PixelsSettings or PixelsLatentSettings); None: its defaults.
    forward_target_settings: PixelsSettings | PixelsLatentSettings | None = field(default=None, metadata={"component": "forward_target"})
    motion_weight: float = option(0.0, "weight of a second squared error, averaged over the latent pixels that moved between t-1 "
                                  "and t in each transition on its own (a pointer of a few pixels counts as much as a pan); "
                                  "added to the plain MSE, which it leaves as it is (0: off)")
    moments_weight: float = option(0.0, "weight of a second prediction from the action alone: the pixel moments of the change "
                                   "t-1 -> t that do not depend on where it is (see motion_moments: pixels), standardised over "
                                   "the batch, so a small object's move asks as much of the action as the whole view's (0: off)")
    rollout: str = option("none", "a multi-step loss: none = off, multistep = the decoder fed its own predictions for "
                          "rollout_horizon frames (use_rollout: true in older configs)", choices=ROLLOUT.names)
    # The chosen rollout's settings (NoRolloutSettings or MultistepSettings); None: its defaults.
    rollout_settings: NoRolloutSettings | MultistepSettings | None = field(default=None, metadata={"component": "rollout"})
    max_frames: int = option(64, "longest window the model accepts (length of its temporal position table)")
    label_classes: int = option(0, "true-action classes of the optional label head on the action vector (0: no head; --label_fraction sets it from the data)")
    label_weight: float = option(1.0, "weight of the label head's cross-entropy (only with label_classes > 0)")

    def __post_init__(self):
        for kind in COMPONENT_KINDS:
            if getattr(self, kind.settings_field) is None and getattr(self, kind.key) in kind.choices:
                setattr(self, kind.settings_field, kind.choices[getattr(self, kind.key)]())

    @property
    def num_patches(self) -> int:
        return self.patch_grid**2

    @property
    def patch_size(self) -> int:
        """Side of the square of latent pixels that one patch covers."""
        return self.latent_size // self.patch_grid

    @property
    def num_actions(self) -> int:
        return self.num_embeddings**self.num_codes

    def validate(self) -> "ModelConfig":
        """Raise ValueError naming the first impossible setting; return self so it chains."""
        positive = [
            "in_channels", "latent_size", "patch_dim", "patch_grid", "embed_dim", "num_heads",
            "encoder_depth", "decoder_depth", "num_embeddings", "num_codes",
            "action_offset",
        ]
        for name in positive:
            if not is_positive_int(getattr(self, name)):
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"model.{f.name} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim ({self.embed_dim}) must be divisible by model.num_heads ({self.num_heads})")
        if self.latent_size % self.patch_grid:
            raise ValueError(f"model.latent_size ({self.latent_size}) must be divisible by model.patch_grid ({self.patch_grid})")
        if not self.mlp_ratio > 0:
            raise ValueError(f"model.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not isinstance(self.label_classes, int) or self.label_classes < 0:
            raise ValueError(f"model.label_classes must be >= 0, got {self.label_classes!r}")
        for name in ("change_weight", "motion_weight", "moments_weight", "label_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.max_frames, int) or self.max_frames < 2:
            raise ValueError(f"model.max_frames must be an integer >= 2, got {self.max_frames!r}")
        for kind in COMPONENT_KINDS:
            settings, chosen = getattr(self, kind.settings_field), getattr(self, kind.key)
            if type(settings) is not kind.choices[chosen]:
                raise ValueError(f"model.{kind.settings_field} must be {kind.choices[chosen].__name__}, the settings of "
                                 f"{kind.key} {chosen}; got {type(settings).__name__}")
            settings.validate(self)
        return self
