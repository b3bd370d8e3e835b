"""Action bottlenecks, one algorithm per file, one interface (`base.Quantizer`).

`QUANTIZERS` maps the config's `quantizer` names to classes. The names, and the settings
each one reads, are declared once in `lam.config.components.QUANTIZER` (torch-free, so a
config is checked without torch); each class names its settings class, and the registry
is built from that declaration.
"""

from __future__ import annotations

from lam.config import QUANTIZER, ModelConfig
from lam.model.quantize.base import Quantizer, QuantizerOutput, count_codes, usage_and_perplexity
from lam.model.quantize.fsq import FiniteScalarQuantizer, fsq_levels_for
from lam.model.quantize.gaussian import GaussianBottleneck
from lam.model.quantize.vq import VectorQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = QUANTIZER.registry(VectorQuantizer, FiniteScalarQuantizer, GaussianBottleneck)


def build_quantizer(cfg: ModelConfig) -> Quantizer:
    return QUANTIZERS[cfg.quantizer].from_config(cfg)


__all__ = ["QUANTIZERS", "build_quantizer", "Quantizer", "QuantizerOutput", "VectorQuantizer",
           "FiniteScalarQuantizer", "GaussianBottleneck", "fsq_levels_for", "count_codes", "usage_and_perplexity"]
