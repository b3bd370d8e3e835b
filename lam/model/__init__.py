"""The latent action model: plain PyTorch modules, unaware of Ray or DDP wrappers.

    from lam.model import LatentActionModel, ModelConfig
    model = LatentActionModel()               # the spec's model; or LatentActionModel(ModelConfig(...))
    out = model(x)            # x: [B, T, 16, 64, 64] -> out.predictions [B, T-1, 16, 64, 64]
    out.loss.backward()       # out.indices [B, T-1, 3], out.metrics {"mse_loss": ..., ...}
    optimizer.step()
    model.after_optimizer_step()              # e.g. VQ's dead-code revival, on every rank

Files: adapters.py (VVAE frames <-> patches), transformer.py (factorised space-time
attention), stems.py and heads.py (the encoder's parts, by name), encoder.py,
decoder.py, latent_target.py (a forward model in a learned latent space), moved.py (the
moved-pixels loss), quantize/ (one bottleneck a file, one interface), whiten.py,
distributed.py (the only torch.distributed calls), lam.py (the model), flops.py.
"""

from lam.config import ModelConfig
from lam.model.adapters import LAMtoVVAEAdapter, VVAEtoLAMAdapter
from lam.model.decoder import PREDICTIONS
from lam.model.heads import HEADS
from lam.model.latent_target import FORWARD_TARGETS
from lam.model.lam import LAMOutput, LatentActionModel, VVAELatentActionVQVAE
from lam.model.quantize import QUANTIZERS, QuantizerOutput
from lam.model.stems import CORRELATIONS, MOMENTS, STEMS

__all__ = [
    "ModelConfig",
    "LatentActionModel",
    "VVAELatentActionVQVAE",
    "VVAEtoLAMAdapter",
    "LAMtoVVAEAdapter",
    "LAMOutput",
    "QuantizerOutput",
    "STEMS",
    "MOMENTS",
    "CORRELATIONS",
    "PREDICTIONS",
    "FORWARD_TARGETS",
    "HEADS",
    "QUANTIZERS",
]
