"""The kernel floor of a row: its heavy kernels' time if each ran as fast as it runs alone.

``--floor`` records the operator calls of one pass of a row with ``torch.profiler`` (names, input shapes,
counts; the profiler's own times are not used) and re-times every call of the kinds in :data:`KERNELS` --
the matrix products (oneDNN's linear, ``addmm``/``mm``/``bmm``), fused attention and ``log_softmax`` --
alone, on random inputs of the recorded shapes, as the best of a few calls after a warm-up, with the run's
threads (calls inside another, e.g. the products of the math attention, count with the outer one;
attention masks are replayed as additive masks of the recorded shape).  Their sum is the *floor*: the time one pass would take if everything else (norms, adds,
indexing, top-k, beam bookkeeping, Python) cost nothing and every kernel ran at its best, warm-cache rate
at once.  A row's FLOPs over its floor, against the machine's peak, is the share of the peak that the
libraries' kernels allow at the row's shapes; the measured time over the floor is what the rest costs.
Linear weights are timed in oneDNN's packed layout (what the lean search runs); the ReLU a linear may
fuse is not replayed (it costs little next to the product).  fp32 CPU rows only: other precisions and
devices get no floor.
"""

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from ..fast_generator.linear import PackedWeights
from .measure import Row, best_seconds, translate

Shapes = Sequence[Sequence[int]]

LINEAR = "mkldnn::_linear_pointwise"
SDPA = "aten::_scaled_dot_product_flash_attention_for_cpu"
SDPA_MATH = "aten::_scaled_dot_product_attention_math"


def _linear(shapes: Shapes):
    rows, width, out = math.prod(shapes[0][:-1]), shapes[0][-1], shapes[1][0]
    x = torch.randn(rows, width)
    w = PackedWeights().get(torch.randn(out, width))
    b = torch.randn(out) if len(shapes) > 2 and len(shapes[2]) == 1 else None
    return lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def _addmm(shapes: Shapes):
    bias, a, b = (torch.randn(tuple(s)) for s in shapes[:3])
    return lambda: torch.addmm(bias, a, b)


def _mm(shapes: Shapes):
    a, b = (torch.randn(tuple(s)) for s in shapes[:2])
    return lambda: torch.mm(a, b)


def _bmm(shapes: Shapes):
    a, b = (torch.randn(tuple(s)) for s in shapes[:2])
    return lambda: torch.bmm(a, b)


def _mask(shapes: Shapes, position: int) -> Optional[Tensor]:
    """An additive (float, all-zero) attention mask of the shape recorded at ``position`` (None where none
    was); the fused kernels take masks in the query's dtype (``F.scaled_dot_product_attention`` converts a
    boolean one before calling them)."""
    shape = shapes[position] if len(shapes) > position else ()
    return torch.zeros(tuple(shape)) if shape else None


def _sdpa_flash(shapes: Shapes):
    q, k, v = (torch.randn(tuple(s)) for s in shapes[:3])
    mask = _mask(shapes, 5)  # (query, key, value, dropout_p, is_causal, attn_mask, scale)
    return lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask)


def _sdpa_math(shapes: Shapes):
    q, k, v = (torch.randn(tuple(s)) for s in shapes[:3])
    mask = _mask(shapes, 3)  # (query, key, value, attn_mask, ...)
    return lambda: torch.ops.aten._scaled_dot_product_attention_math(q, k, v, attn_mask=mask)


def _log_softmax(shapes: Shapes):
    x = torch.randn(tuple(shapes[0]))
    out = torch.empty_like(x)
    return lambda: torch.log_softmax(x, dim=-1, out=out)


#: the profiled operators the floor re-times, and how each is rebuilt from its input shapes
KERNELS: Dict[str, Callable[[Shapes], Callable[[], object]]] = {
    LINEAR: _linear,
    "aten::addmm": _addmm,
    "aten::mm": _mm,
    "aten::bmm": _bmm,
    SDPA: _sdpa_flash,
    SDPA_MATH: _sdpa_math,
    "aten::_log_softmax": _log_softmax,
}


def _freeze(shape) -> Tuple:
    """A profiler input shape as nested tuples (a non-tensor argument: ``()``)."""
    if not isinstance(shape, (list, tuple)):
        return ()
    return tuple(d if isinstance(d, int) else _freeze(d) for d in shape)


def _inside_kernel(event) -> bool:
    """Whether a profiler event runs inside a :data:`KERNELS` call (counted with it, not again)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in KERNELS:
            return True
        parent = parent.cpu_parent
    return False


def record_calls(run: Callable[[], object]) -> List[Tuple[str, Tuple, int]]:
    """``(operator, input shapes, count)`` of the outermost :data:`KERNELS` calls made by ``run()`` (a
    call inside another, e.g. the products of the math attention, belongs to the outer one)."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    counts: Dict[Tuple[str, Tuple], int] = {}
    for event in prof.events():
        if event.name in KERNELS and not _inside_kernel(event):
            key = (event.name, tuple(_freeze(s) for s in event.input_shapes))
            counts[key] = counts.get(key, 0) + 1
    return [(name, shapes, count) for (name, shapes), count in counts.items()]


def kernel_floor(row: Row, out_len: Optional[int], calls: int = 5) -> Dict:
    """The floor of one pass of ``row`` (see the module docstring): ``{"floor_s": seconds per pass,
    "floor_by_kernel_s": {operator: seconds}, "kernel_calls": {operator: calls per pass}}``."""
    by_kernel: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    timed: Dict[Tuple[str, Tuple], float] = {}
    for name, shapes, count in record_calls(lambda: translate(row, out_len)):
        key = (name, shapes)
        if key not in timed:
            timed[key] = best_seconds(KERNELS[name](shapes), calls)
        by_kernel[name] = by_kernel.get(name, 0.0) + count * timed[key]
        counts[name] = counts.get(name, 0) + count
    return {"floor_s": sum(by_kernel.values()), "floor_by_kernel_s": by_kernel, "kernel_calls": counts}


def floor_applies(row: Row) -> bool:
    """Whether ``row`` gets a floor: a float32 CPU row of a PyTorch model (no variant, no other engine)."""
    return row.device == "cpu" and row.model.engine is None and row.model.precision() == "fp32"
