"""Count the model's FLOPs per sample with torch.utils.flop_counter.FlopCounterMode.

    python -m lam.model.flops            # default config, T=8

Counts matmuls, convolutions and attention (2 FLOPs per multiply-add);
elementwise ops (norms, GELU, residual adds) are not counted.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from lam.config import ModelConfig
from lam.model.lam import LatentActionModel


def count_flops(cfg: ModelConfig, frames: int = 8, backward: bool = False) -> dict[str, float]:
    """GFLOPs per sample (batch of 1): total and per top-level submodule; plus parameters (millions)."""
    torch.manual_seed(0)
    model = LatentActionModel(cfg)
    x = torch.randn(1, frames, cfg.in_channels, cfg.latent_size, cfg.latent_size)
    counter = FlopCounterMode(display=False)
    with torch.set_grad_enabled(backward), counter:
        out = model(x)
        if backward:
            out.loss.backward()
    per_module = counter.get_flop_counts()
    result = {"total": counter.get_total_flops() / 1e9}
    for name in ("encoder", "decoder", "in_adapter", "out_adapter", "quantizer"):
        key = next((k for k in per_module if k.endswith(f".{name}")), None)
        result[name] = sum(per_module[key].values()) / 1e9 if key else 0.0
    result["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    return result


if __name__ == "__main__":
    for rollout in (False, True):
        for backward in (False, True):
            res = count_flops(ModelConfig(rollout="multistep" if rollout else "none"), backward=backward)
            print(f"rollout={'multistep' if rollout else 'none'} {'fwd+bwd' if backward else 'fwd'}:", {k: round(v, 2) for k, v in res.items()})
