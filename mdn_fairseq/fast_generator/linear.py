"""The lean search's float32 linear layers on oneDNN's matrix product instead of torch's default BLAS.

On x86, ``torch.nn.functional.linear`` in float32 calls MKL's ``sgemm``.  On AMD CPUs MKL does not use
the fastest code path the hardware has: on a 2-core AMD EPYC with AVX-512 (torch 2.13, 2 threads) it
reaches 185-215 GFLOP/s at the shapes of a Transformer-base encoder and its output layer, where the
oneDNN (MKL-DNN) library that torch also ships reaches 330-495 GFLOP/s on the same products, in float32
(oneDNN's default strict math: no reduced-precision accumulation; ``torch.backends.mkldnn.matmul.
fp32_precision`` left at its default).  Its entry point is ``torch.ops.mkldnn._linear_pointwise``, the
operator torch's own CPU compiler (``torch.compile`` with freezing) emits for linear layers.

:func:`onednn_linears` makes a model's float32 CPU ``nn.Linear`` layers compute with it for the duration
of a ``with`` block (the lean search's ``generate``): each layer gets an instance ``forward`` that calls
the operator (module hooks still run; the class and the parameters are untouched) and gets its own back
on exit.  Inputs it cannot take (another dtype, autocast, autograd through the weights) and products too
small to gain (:data:`MIN_ONEDNN_MACS`) go to the layer's own ``F.linear``.  :func:`linear` and :func:`linear_relu` are the same choice for a bare
weight (the encoder's stacked q/k/v projection) and for a layer followed by ReLU (fused in oneDNN).

Given a :class:`PackedWeights` cache (the lean search keeps one per generator), the layers compute with
oneDNN's blocked copy of their weight (``torch.ops.mkldnn._reorder_linear_weight``, what ``torch.compile``
with freezing makes), made once and kept across calls, instead of having oneDNN reorder the plain weight
on every call: on the machine above 5-10% faster on the encoder's products (e.g. 1776x512x2048: 463 ->
491 GFLOP/s with 22 distinct layers' weights) and 30% on a 10K-wide rank-64 output layer (256x64x10000:
0.82 -> 0.63 ms), at the memory of one more copy of the weights that reach oneDNN.

Results equal ``F.linear``'s to float32 rounding (the products sum in another order; tested); the
backend is a generator option, ``linear_backend``: ``auto`` (oneDNN where this torch build has it),
``onednn`` (an error where it has not) or ``torch`` (``F.linear``, e.g. to compare).
"""

import types
import weakref
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import MDNError

LINEAR_BACKENDS = ("auto", "onednn", "torch")


def onednn_unavailable_reason() -> Optional[str]:
    """Why this torch build cannot run :func:`linear` on oneDNN, or None when it can."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)"
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this torch build has no torch.ops.mkldnn._linear_pointwise"
    return None


def resolve_backend(backend: str) -> str:
    """``onednn`` or ``torch`` for the option value ``backend`` (one of :data:`LINEAR_BACKENDS`).
    Raises :class:`MDNError` for an unknown value, or ``onednn`` where the build cannot run it."""
    if backend not in LINEAR_BACKENDS:
        raise MDNError(f"linear backend {backend!r}: unknown; choose from {', '.join(LINEAR_BACKENDS)}")
    reason = onednn_unavailable_reason()
    if backend == "onednn" and reason is not None:
        raise MDNError(f"linear backend 'onednn': {reason}; use 'auto' or 'torch'")
    return "torch" if backend == "torch" or reason is not None else "onednn"


# products below this many multiply-adds (rows x in x out) stay on F.linear: oneDNN's fixed cost per call
# (about 15-20 us on the machine above) outweighs its faster arithmetic there (measured: 256x64x64 0.9x,
# 256x64x16 0.5x, 1300x64x64 1.4x, 256x512x64 1.7x, 1300x512x512 1.8x, 4x512x10000 2.7x F.linear's speed)
MIN_ONEDNN_MACS = 4_000_000


def onednn_takes(x: Tensor, weight: Tensor, out_features: Optional[int] = None) -> bool:
    """Whether :func:`linear` computes ``x`` (..., in) times ``weight`` (out, in; plain or packed) on oneDNN:
    float32 CPU tensors, no autocast, no autograd through them, at least :data:`MIN_ONEDNN_MACS`
    multiply-adds (``out_features`` outputs per row when given, e.g. for weights to be stacked, else out)."""
    return (
        x.numel() * (weight.size(0) if out_features is None else out_features) >= MIN_ONEDNN_MACS
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
    )


# the row count oneDNN is told to expect when it packs a weight: the packed layout it picks for 256 rows
# runs as fast as one picked for the exact row count from 256 to 1800 rows (the decoder's 64 x 4
# hypotheses per step, the encoder's packed tokens of a batch of 64) on the machine above
PACK_ROWS_HINT = 256


def _version(w: Tensor) -> Optional[int]:
    """``w``'s version counter (bumped by in-place writes), or None for an inference-mode tensor (which has none)."""
    try:
        return w._version
    except RuntimeError:
        return None


class PackedWeights:
    """oneDNN's packed (blocked-layout) copies of float32 CPU weights, made on first use and kept across
    calls.  A copy is remade when its weights change: another tensor, or the same one written in place
    through the parameter (``weight.mul_(...)``, ``load_state_dict``: its version counter); writes through
    ``weight.data`` bypass that counter, so after them call :meth:`clear`.  Copies whose weights were freed,
    moved or rewritten are dropped at the next :meth:`drop_stale` (each :func:`onednn_linears` block
    starts with one).  The lean search keeps one per generator.  Source: torch's own CPU compiler packs
    linear weights this way (``torch/_inductor/fx_passes/mkldnn_fusion.py``)."""

    def __init__(self):
        self._copies: Dict[Tuple[int, ...], Tuple[Tuple, Tensor]] = {}

    def __len__(self) -> int:
        return len(self._copies)

    @staticmethod
    def _current(stamp: Tuple, weights: Sequence[Optional[Tensor]]) -> bool:
        """Whether ``weights`` are the live tensors ``stamp`` was made from, at the same memory and version."""
        return all(
            w is not None and r() is w and p == w.data_ptr() and v == _version(w)
            for (r, p, v), w in zip(stamp, weights)
        )

    def get(self, *weights: Tensor) -> Tensor:
        """The packed copy of ``weights`` (each (out_i, in), float32, CPU) stacked along the output
        dimension (``torch.cat(weights)``): (sum out_i, in), for :func:`linear`'s ``weight``."""
        key = tuple(id(w) for w in weights)
        kept = self._copies.get(key)
        if kept is not None and self._current(kept[0], weights):
            return kept[1]
        plain = weights[0].detach() if len(weights) == 1 else torch.cat([w.detach() for w in weights])
        packed = torch.ops.mkldnn._reorder_linear_weight(plain.contiguous(), PACK_ROWS_HINT)
        self._copies[key] = (tuple((weakref.ref(w), w.data_ptr(), _version(w)) for w in weights), packed)
        return packed

    def drop_stale(self) -> None:
        """Drop the copies whose weights were freed, moved to other memory or written in place."""
        self._copies = {k: c for k, c in self._copies.items() if self._current(c[0], [r() for r, _, _ in c[0]])}

    def clear(self) -> None:
        """Drop every copy (e.g. after writing weights through ``.data``)."""
        self._copies = {}


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    onednn: bool = True,
    packed: Optional[Tensor] = None,
) -> Tensor:
    """``F.linear(x, weight, bias)``: ``x`` (..., in), ``weight`` (out, in), ``bias`` (out,) or None ->
    (..., out); on oneDNN when ``onednn`` and the tensors suit it (float32, CPU, no autocast or autograd, at
    least :data:`MIN_ONEDNN_MACS` multiply-adds), there with ``packed`` (``weight``'s copy from
    :meth:`PackedWeights.get`) in place of ``weight`` when given."""
    if onednn and onednn_takes(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight if packed is None else packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _onednn_forward(self: nn.Linear, x: Tensor, activation: str = "none") -> Tensor:
    """The instance ``forward`` :func:`onednn_linears` gives a layer: ``activation`` ``none`` or ``relu``;
    with the weight's packed copy from the cache :func:`onednn_linears` attached, if any (made at the
    layer's first product on oneDNN: layers whose products stay on ``F.linear`` get no copy)."""
    if onednn_takes(x, self.weight):
        cache = self.__dict__.get("onednn_packed")
        weight = self.weight if cache is None else cache.get(self.weight)
        return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, activation, [], "")
    y = F.linear(x, self.weight, self.bias)
    return torch.relu_(y) if activation == "relu" else y


def on_onednn(layer: nn.Module) -> bool:
    """Whether ``layer`` currently computes with oneDNN (inside :func:`onednn_linears`)."""
    return getattr(layer.__dict__.get("forward"), "__func__", None) is _onednn_forward


def packed_weights(layer: nn.Module) -> Optional[PackedWeights]:
    """The :class:`PackedWeights` cache ``layer`` computes with inside :func:`onednn_linears`, or None."""
    return layer.__dict__.get("onednn_packed") if on_onednn(layer) else None


def linear_relu(layer: nn.Module, x: Tensor) -> Tensor:
    """``relu(layer(x))``, fused in oneDNN's product where ``layer`` is on it (:func:`on_onednn`)."""
    return layer(x, activation="relu") if on_onednn(layer) else torch.relu_(layer(x))


@contextmanager
def onednn_linears(
    model: nn.Module, enabled: bool = True, packed: Optional[PackedWeights] = None
) -> Iterator[List[nn.Linear]]:
    """Within the block, every ``nn.Linear`` of ``model`` (exactly that class: quantized and other
    subclasses keep their own forward) with float32 CPU weights computes on oneDNN; yields those layers.
    With ``packed``, each computes with its weight's packed copy from that cache (:class:`PackedWeights`,
    whose stale copies are dropped first; :func:`packed_weights` gives the cache to code that stacks
    several layers' weights).  Nothing changes with ``enabled`` False.  Layers that already have an
    instance ``forward`` (e.g. inside another generator's block over the same model) are left alone; on
    exit (also on an error) each layer gets its class's ``forward`` back and loses the cache."""
    patched = []
    try:
        if enabled:
            if packed is not None:
                packed.drop_stale()
            for m in model.modules():
                plain = type(m) is nn.Linear and "forward" not in m.__dict__
                if plain and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu":
                    m.forward = types.MethodType(_onednn_forward, m)
                    patched.append(m)
                    if packed is not None:
                        m.__dict__["onednn_packed"] = packed
        yield patched
    finally:
        for m in patched:
            m.__dict__.pop("onednn_packed", None)
            if on_onednn(m):
                del m.forward
