"""Action bottlenecks, one algorithm per file, one interface (`base.Quantizer`).

`QUANTIZERS` maps the config's `quantizer` names to classes; the valid names are
also listed in `lam.config.QUANTIZERS`, so a config is checked without torch.
"""

from __future__ import annotations

from lam.config import ModelConfig
from lam.model.quantize.base import Quantizer, QuantizerOutput, count_codes, usage_and_perplexity
from lam.model.quantize.fsq import FiniteScalarQuantizer, fsq_levels_for
from lam.model.quantize.gaussian import GaussianBottleneck
from lam.model.quantize.vq import VectorQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {"vq": VectorQuantizer, "fsq": FiniteScalarQuantizer,
                                          "gaussian": GaussianBottleneck}


def build_quantizer(cfg: ModelConfig) -> Quantizer:
    return QUANTIZERS[cfg.quantizer].from_config(cfg)


__all__ = ["QUANTIZERS", "build_quantizer", "Quantizer", "QuantizerOutput", "VectorQuantizer",
           "FiniteScalarQuantizer", "GaussianBottleneck", "fsq_levels_for", "count_codes", "usage_and_perplexity"]
