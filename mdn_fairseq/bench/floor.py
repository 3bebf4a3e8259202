"""The kernel floor of a row: its heavy kernels' time if each ran as fast as it runs alone.

``--floor`` records the operator calls of one pass of a row with ``torch.profiler`` (names, input shapes,
counts; the profiler's own times are not used) and re-times every call of the kinds in :data:`KERNELS` --
the matrix products (oneDNN's linear, ``addmm``/``mm``/``bmm``), fused attention and ``log_softmax`` --
alone, on random inputs of the recorded shapes, as the best of a few calls after a warm-up, with the run's
threads.  Their sum is the *floor*: the time one pass would take if everything else (norms, adds,
indexing, top-k, beam bookkeeping, Python) cost nothing and every kernel ran at its best, warm-cache rate
at once.  A row's FLOPs over its floor, against the machine's peak, is the share of the peak that the
libraries' kernels allow at the row's shapes; the measured time over the floor is what the rest costs.
Linear weights are timed in oneDNN's packed layout (what the lean search runs); the ReLU a linear may
fuse is not replayed (it costs little next to the product).  fp32 CPU rows only: other precisions and
devices get no floor.
"""

import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..fast_generator.linear import PackedWeights
from .measure import Row, translate

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
    bias, a, b = (torch.randn(*s) for s in shapes[:3])
    return lambda: torch.addmm(bias, a, b)


def _mm(shapes: Shapes):
    a, b = (torch.randn(*s) for s in shapes[:2])
    return lambda: torch.mm(a, b)


def _bmm(shapes: Shapes):
    a, b = (torch.randn(*s) for s in shapes[:2])
    return lambda: torch.bmm(a, b)


def _sdpa(shapes: Shapes):
    q, k, v = (torch.randn(*s) for s in shapes[:3])
    masks = [s for s in shapes[3:] if len(s) == 4]
    mask = torch.ones(*masks[0], dtype=torch.bool) if masks else None
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _log_softmax(shapes: Shapes):
    x = torch.randn(*shapes[0])
    out = torch.empty_like(x)
    return lambda: torch.log_softmax(x, dim=-1, out=out)


#: the profiled operators the floor re-times, and how each is rebuilt from its input shapes
KERNELS: Dict[str, Callable[[Shapes], Callable[[], object]]] = {
    LINEAR: _linear,
    "aten::addmm": _addmm,
    "aten::mm": _mm,
    "aten::bmm": _bmm,
    SDPA: _sdpa,
    SDPA_MATH: _sdpa,
    "aten::_log_softmax": _log_softmax,
}


def record_calls(row: Row, out_len: Optional[int]) -> List[Tuple[str, Tuple, int]]:
    """``(operator, input shapes, count)`` of the :data:`KERNELS` operators over one pass of ``row``."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        translate(row, out_len)
    calls = []
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in KERNELS and event.count:
            shapes = tuple(tuple(s) for s in event.input_shapes if isinstance(s, (list, tuple)))
            calls.append((event.key, shapes, event.count))
    return calls


def best_seconds(kernel: Callable[[], object], calls: int = 5) -> float:
    """The fastest of ``calls`` runs of ``kernel`` (seconds), after one warm-up run."""
    with torch.no_grad():
        kernel()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            kernel()
            times.append(time.perf_counter() - start)
    return min(times)


def kernel_floor(row: Row, out_len: Optional[int], calls: int = 5) -> Dict:
    """The floor of one pass of ``row`` (see the module docstring): ``{"floor_s": seconds per pass,
    "floor_by_kernel_s": {operator: seconds}, "kernel_calls": {operator: calls per pass}}``."""
    by_kernel: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    timed: Dict[Tuple[str, Tuple], float] = {}
    for name, shapes, count in record_calls(row, out_len):
        key = (name, shapes)
        if key not in timed:
            timed[key] = best_seconds(KERNELS[name](shapes), calls)
        by_kernel[name] = by_kernel.get(name, 0.0) + count * timed[key]
        counts[name] = counts.get(name, 0) + count
    return {"floor_s": sum(by_kernel.values()), "floor_by_kernel_s": by_kernel, "kernel_calls": counts}


def floor_applies(row: Row) -> bool:
    """Whether ``row`` gets a floor: a float32 CPU row of a PyTorch model (no variant, no other engine)."""
    return row.device == "cpu" and row.model.engine is None and row.model.precision() == "fp32"
