"""Low-rank output projection W = A·Bᵀ (the MDN output layer)."""

import torch
from torch import Tensor, nn

from ..errors import ArchitectureError


class LowRankLinear(nn.Module):
    """The output layer ``logits = x·B·Aᵀ`` with the paper's factors ``A`` (V×E) and ``B`` (H×E), no bias.

    The two factors are bias-free ``nn.Linear`` layers named after them (so that int8 dynamic
    quantization and fairseq's module hooks see ordinary linears): ``B`` applies ``x ↦ x·B`` and, as
    every ``nn.Linear`` stores the matrix it applies transposed, ``B.weight`` is ``Bᵀ`` (E×H);
    ``A`` applies ``z ↦ z·Aᵀ`` and ``A.weight`` is ``A`` (V×E).  Initialised so that the product has
    the variance of fairseq's full output matrix (``N(0, H**-0.5)`` per entry).

    The buffer ``version`` records the layout of these names (see :data:`VERSION`); state dicts of
    older layouts are renamed on load by :meth:`mdn_fairseq.models.MDNModel.upgrade_state_dict_named`.

    Raises :class:`~mdn_fairseq.errors.ArchitectureError` unless ``0 < rank <= min(V, H)``.
    """

    #: 1 (plugin 0.1.0): ``down.weight`` (Bᵀ) and ``up.weight`` (A); 2: ``B.weight`` and ``A.weight``.
    VERSION = 2

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        if not 0 < rank <= min(in_features, out_features):
            raise ArchitectureError(
                f"--output-rank must be 0 (full rank) or between 1 and min(V={out_features}, "
                f"H={in_features}) = {min(in_features, out_features)}; got {rank}"
            )
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.B = nn.Linear(in_features, rank, bias=False)
        self.A = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.B.weight, mean=0.0, std=in_features**-0.5)
        nn.init.normal_(self.A.weight, mean=0.0, std=rank**-0.5)
        self.register_buffer("version", torch.Tensor([self.VERSION]))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., H) decoder states -> (..., V) logits (unnormalised), ``x·B·Aᵀ``."""
        return self.A(self.B(x))

    def full_weight(self) -> Tensor:
        """The V×H matrix ``W = A·Bᵀ`` this layer applies (``logits = x·Wᵀ``)."""
        return self.A.weight @ self.B.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"
