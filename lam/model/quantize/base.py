"""The interface every action bottleneck implements, and the code statistics they share.

A quantizer maps K pre-quantisation vectors of dimension D per transition,
z (..., K, D), to K discrete codes of M choices each:

    out = quantizer(z)             # QuantizerOutput: quantized (..., K, D), indices (..., K), ...
    quantizer.nearest(z)           # indices only; pure
    quantizer.lookup(indices)      # the vectors of given codes (..., K, D)
    quantizer.after_optimizer_step()   # training-step upkeep, on every rank (default: none)
    quantizer.after_epoch()            # epoch-end upkeep, on every rank (default: none)

An action is the tuple of its K codes; its id is their mixed-radix number (see
`LatentActionModel.action_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lam.config import ModelConfig
from lam.model.distributed import all_reduce_sum_


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (..., K, D) float32: the codes' vectors, gradient straight through to z
    indices: torch.Tensor  # (..., K) long
    usage: torch.Tensor  # fraction of the K*M choices used by the (all-rank) batch
    perplexity: torch.Tensor  # exp(entropy) of code use, mean over the K positions
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # named auxiliary terms, for metrics
    loss: torch.Tensor | None = None  # what they add to the training loss (weighted); None: nothing


class Quantizer(nn.Module):
    """Base class: K codes of M choices for vectors of dimension D.

    `loss_names` lists the keys of `QuantizerOutput.losses` (the metrics it reports);
    `continuous` says whether the vectors before discretisation are the action itself
    (exported next to the ids).
    `sync_stats`: usage and perplexity count codes over all ranks (an all-reduce in every
    forward, so every rank must call forward); set False for evaluation that only some
    ranks run.
    """

    settings: type  # its settings dataclass, declared with its name in lam/config/components.py
    loss_names: tuple[str, ...] = ()
    continuous = False  # True: the decoder is trained on continuous vectors, and ids are a discretisation of them

    def __init__(self, num_codes: int, num_embeddings: int, code_dim: int):
        super().__init__()
        self.num_codes, self.num_embeddings, self.code_dim = num_codes, num_embeddings, code_dim
        self.sync_stats = True

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "Quantizer":
        raise NotImplementedError

    def forward(self, z: torch.Tensor, z_ids: torch.Tensor | None = None) -> QuantizerOutput:
        """z (..., K, D): the encoder's vectors. `z_ids`: for a continuous bottleneck, the vectors
        its ids are read from (and its k-means fitted on) where they differ from z: in training,
        z whitened with the running statistics, as evaluation whitens it, so that training and
        evaluation give a window the same ids. A discrete bottleneck ignores it: its ids are the
        codes the decoder gets."""
        raise NotImplementedError

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_optimizer_step(self, applied: torch.Tensor | None = None) -> None:
        """Upkeep after each training step's `optimizer.step()`, called on every rank; `applied`
        (a device bool) is false for a step that was skipped, whose upkeep must change nothing.
        Default: none."""

    def after_epoch(self) -> None:
        """Upkeep at the end of each training epoch, before validation and the checkpoint, called
        on every rank. Default: none."""

    @torch.no_grad()
    def code_statistics(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(counts (K, M) long, usage, perplexity) of `indices` (..., K); over all ranks with `sync_stats`."""
        counts = count_codes(indices, self.num_codes, self.num_embeddings)
        if self.sync_stats:
            all_reduce_sum_(counts)  # global counts: identical on every rank from here on
        return (counts, *usage_and_perplexity(counts))


def action_radix(num_codes: int, num_embeddings: int, device=None) -> torch.Tensor:
    """(K,) long: the place value of each code position in an action id, M**(K-1-k)."""
    return num_embeddings ** torch.arange(num_codes - 1, -1, -1, device=device, dtype=torch.long)


def count_codes(indices: torch.Tensor, num_codes: int, num_embeddings: int) -> torch.Tensor:
    """How often each choice is used in `indices` (..., K): (K, M) long, local to this rank."""
    flat = indices.reshape(-1, num_codes).t()  # (K, n)
    counts = torch.zeros(num_codes, num_embeddings, dtype=torch.long, device=indices.device)
    return counts.scatter_add_(1, flat, torch.ones_like(flat))


def usage_and_perplexity(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From code counts (K, M): fraction of choices used, and mean over k of exp(entropy of p_k)."""
    counts = counts.float()
    usage = (counts > 0).float().mean()
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1)  # (K, M)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)  # (K,), 0 * log(eps) = 0 for unused entries
    return usage, entropy.exp().mean()
