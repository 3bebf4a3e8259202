"""Low-rank output projection W = A·Bᵀ (the MDN output layer)."""

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """``y = x·B·Aᵀ`` with ``A: out×rank`` and ``B: in×rank``, no bias.

    Stored as two bias-free linears so that the factors are plain parameters:
    ``down.weight`` is ``Bᵀ`` (rank × in) and ``up.weight`` is ``A`` (out × rank).
    Initialised so that the product has the variance of fairseq's full output matrix
    (``N(0, in**-0.5)`` per entry).
    """

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        if not 0 < rank <= min(in_features, out_features):
            raise ValueError(
                f"--output-rank must be 0 (full rank) or between 1 and min(V={out_features}, "
                f"H={in_features}) = {min(in_features, out_features)}; got {rank}"
            )
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.down.weight, mean=0.0, std=in_features**-0.5)
        nn.init.normal_(self.up.weight, mean=0.0, std=rank**-0.5)

    def forward(self, x):
        return self.up(self.down(x))

    def full_weight(self) -> torch.Tensor:
        """The V×H matrix ``A·Bᵀ`` this layer applies."""
        return self.up.weight @ self.down.weight

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"
