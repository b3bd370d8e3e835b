"""The VQ-VAE latent action model: plain PyTorch modules, unaware of Ray or DDP wrappers.

    from lam.model import ModelConfig, VVAELatentActionVQVAE
    model = VVAELatentActionVQVAE(ModelConfig())
    out = model(x)            # x: [B, T, 16, 64, 64] -> out.predictions [B, T-1, 16, 64, 64]
    out.loss.backward()       # out.indices [B, T-1, 3], out.metrics {"mse_loss": ..., ...}
    model.quantizer.revive_dead_codes()   # after optimizer.step(), on every rank

Files: config.py (ModelConfig), adapters.py (VVAE <-> patches), transformer.py
(factorised space-time attention), quantizer.py (multi-code VQ, dead-code revival,
the only torch.distributed calls), lam.py (encoder, decoder, the full model).
"""

from lam.model.adapters import LAMtoVVAEAdapter, VVAEtoLAMAdapter
from lam.model.config import ModelConfig
from lam.model.lam import LAMOutput, VVAELatentActionVQVAE
from lam.model.quantizer import MultiCodeQuantizer, QuantizerOutput

__all__ = [
    "ModelConfig",
    "VVAELatentActionVQVAE",
    "VVAEtoLAMAdapter",
    "LAMtoVVAEAdapter",
    "LAMOutput",
    "MultiCodeQuantizer",
    "QuantizerOutput",
]
