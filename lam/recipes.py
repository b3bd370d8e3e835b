"""Named starting configs: `lam train --recipe NAME`, then --config YAML and flags on top.

    spec   the specification's model and training defaults
    demo   a small model for 2 CPU cores with one FSQ code: minutes a run; the base of `real`
    real   what `lam demo` trains: the demo's model with a continuous action, the frame
           correlation and the shifted-local prediction, the best measured on real play
    tiny   seconds on 2 CPU cores: the tests' and benchmarks' model

Each recipe is a flat mapping of config keys over the defaults, so it reads like a
YAML config and goes through the same checks. Measured results of the recipes are in
docs/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lam.config import RunConfig
from lam.errors import UserError


@dataclass(frozen=True)
class Recipe:
    summary: str
    overrides: dict
    # What `lam tune --recipe NAME` ranks trials by unless --metric/--mode say otherwise
    # (SweepConfig's metric and mode; empty: their defaults).
    sweep: dict = field(default_factory=dict)


# The `demo` recipe, and the base of `real` (what `lam demo` trains).
DEMO = {
    # A small model on 3-frame windows at stride 1: what 2 CPU cores train in minutes.
    "sequence_length": 3, "stride": 1,
    "patch_grid": 8, "patch_dim": 256, "embed_dim": 96, "num_heads": 4, "encoder_depth": 2, "decoder_depth": 2,
    # The stem sees frame differences, so a static background cancels, and their spatial
    # moments, which are linear in how far and which way something moved; its features also
    # feed the codes directly, so codes follow motion from the first step.
    "stem": "diff", "motion_moments": "patches", "action_head": "token+motion",
    # FSQ on whitened vectors cannot collapse to one code; one code of 9 entries, because
    # every extra id that a true action is split over lowers NMI.
    "quantizer": "fsq", "whiten": True, "num_codes": 1, "num_embeddings": 9,
    "batch_size": 16, "num_epochs": 10, "learning_rate": 5e-4, "warmup_steps": 50,
    "num_workers": 2, "save_every": 2, "log_every": 20, "eval_every": 2,
}

RECIPES = {
    "spec": Recipe(
        "the specification's defaults: 27M parameters, 8-frame windows, 3 VQ codes of 12 entries (for GPUs)",
        {},
    ),
    "demo": Recipe(
        "a small model for 2 CPU cores: difference stem with moments, one FSQ code of 9 entries on whitened vectors "
        "(the base of `real`)",
        DEMO,
    ),
    "real": Recipe(
        "what `lam demo` trains: the demo's model with a noisy continuous action (4 dims, 9 k-means ids), the phase "
        "correlation of consecutive frames (whole and where they changed) and the shifted-local prediction, the best "
        "measured on real play so far",
        {
            **DEMO,
            # The decoder gets the action vector plus noise instead of a code; ids for export and
            # evaluation come from k-means (docs/RESULTS.md has the measurements behind each choice).
            "quantizer": "gaussian", "codebook_dim": 4, "num_embeddings": 9, "noise_std": 0.5,
            # The encoder sees where the picture moved (phase correlation of the whole frames) and
            # where what changed went (the same, weighted by the change: a pointer on a static
            # page), and the decoder can move the last frame by what the action says, where its
            # mask says: camera motion and a moving pointer or agent become a direct use of the
            # action, which rewards the encoder for carrying it.
            "frame_correlation": "phase+change", "prediction": "shifted-local",
        },
        # Of the scores a sweep can see without labels, delta-t PSNR (how much the decoder's
        # prediction gains from the inferred actions over random ones) ranks runs like the test
        # probe does as well as the validation loss or better on most sets, MiniWoB++ among them
        # (docs/RESULTS.md, `python -m bench.quality.score_ranking`).
        sweep={"metric": "val/delta_psnr", "mode": "max"},
    ),
    "tiny": Recipe(
        "a model that trains in seconds on 4-frame windows (tests, benchmarks, smoke runs)",
        {
            "sequence_length": 4,
            "patch_grid": 4, "patch_dim": 32, "embed_dim": 32, "num_heads": 2, "encoder_depth": 1, "decoder_depth": 1,
            "codebook_dim": 8, "num_embeddings": 4,
            "batch_size": 4, "num_epochs": 2, "learning_rate": 3e-3, "warmup_steps": 2,
            "save_every": 1, "log_every": 0, "wandb_mode": "disabled",
        },
    ),
}


def recipe_sweep(name: str = "spec") -> dict:
    """The sweep settings the named recipe sets (metric, mode), over SweepConfig's defaults."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}'; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name].sweep)


def recipe_config(name: str = "spec") -> RunConfig:
    """A fresh config from the named recipe."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}'; choose one of {', '.join(RECIPES)}")
    return RunConfig.from_dict(RECIPES[name].overrides, source=f"recipe '{name}'")
