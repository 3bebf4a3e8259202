"""Time per module group (the paper's Table 1): encoder attention, encoder FFN, decoder attention,
decoder FFN, output projection, and the rest (beam search, softmax, embeddings, Python).

:class:`ModuleTimer` hooks the groups of one model (and of the fast generator's own modules) and sums
the wall time spent inside them; :func:`profile_row` runs one extra pass of a row with the hooks on.
The hooks cost time themselves, so the profile's total is a little above the timed passes'.
"""

import time
from typing import Dict, Optional

import torch
from torch import nn

from ..fast_generator import FastSequenceGenerator
from .measure import Row, sync, translate

REGIONS = ("enc attn", "enc FFN", "dec attn", "dec FFN", "output proj")


class ModuleTimer:
    """Wall time (``time.perf_counter``, seconds) inside the :data:`REGIONS` of ``model`` run by ``generator``,
    from forward pre/post hooks; ``totals[region]`` after the run, :meth:`remove` takes the hooks off.

    A module region counts the time while any of its modules runs (nested calls once); a span region
    runs from one module's start to another's end (the FFN: ``fc1`` .. ``fc2``).  On CUDA each hook
    synchronises, so the times are the kernels'.
    """

    def __init__(self, model: nn.Module, generator: nn.Module, device: str):
        self.device = device
        self.totals = {name: 0.0 for name in REGIONS}
        self._depth = {name: 0 for name in REGIONS}
        self._start = {name: 0.0 for name in REGIONS}
        self._handles = []
        self._hook_encoder(model.encoder)
        self._hook_decoder(model.decoder)
        if isinstance(generator, FastSequenceGenerator):
            self._module("dec attn", *generator.self_attns, *generator.cross_attns)
            if generator.enc_attns is not None:
                self._module("enc attn", *generator.enc_attns)

    def _hook_encoder(self, enc: nn.Module):
        for layer in getattr(enc, "layers", []):
            self._module("enc attn", layer.self_attn)
            self._span("enc FFN", layer.fc1, layer.fc2)

    def _hook_decoder(self, dec: nn.Module):
        for layer in getattr(dec, "layers", []):
            cross = getattr(layer, "encoder_attn", None)
            own = getattr(layer, "self_attn", getattr(layer, "compressed_attn", None))  # CAN: its one sub-layer
            self._module("dec attn", *[a for a in (own, cross) if a is not None])
            if cross is not None:  # the fast path projects keys/values itself
                self._module("dec attn", cross.k_proj, cross.v_proj)
            if hasattr(own, "enc_k_proj"):  # CAN's encoder keys/values, which the fast path projects itself
                self._module("dec attn", own.enc_k_proj, own.enc_v_proj)
            if getattr(layer, "fc1", None) is not None:
                self._span("dec FFN", layer.fc1, layer.fc2)
        if getattr(dec, "output_projection", None) is not None:
            self._module("output proj", dec.output_projection)

    def now(self) -> float:
        """``time.perf_counter()`` after the device has finished its queued work."""
        sync(self.device)
        return time.perf_counter()

    def _enter(self, name: str):
        if self._depth[name] == 0:
            self._start[name] = self.now()
        self._depth[name] += 1

    def _leave(self, name: str):
        self._depth[name] -= 1
        if self._depth[name] == 0:
            self.totals[name] += self.now() - self._start[name]

    def _module(self, name: str, *modules: nn.Module):
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(lambda *_: self._enter(name)))
            self._handles.append(m.register_forward_hook(lambda *_: self._leave(name)))

    def _span(self, name: str, first: nn.Module, last: nn.Module):
        self._handles.append(first.register_forward_pre_hook(lambda *_: self._enter(name)))
        self._handles.append(last.register_forward_hook(lambda *_: self._leave(name)))

    def remove(self):
        """Take all hooks off the model and generator."""
        for h in self._handles:
            h.remove()


def profile_row(row: Row, out_len: Optional[int], device: str) -> Dict[str, float]:
    """Seconds per region (:data:`REGIONS`) over one pass of ``row``'s batches, plus ``other`` (the
    rest) and ``total``; the regions and ``other`` add up to ``total``."""
    timer = ModuleTimer(row.model.model, row.generator, device)
    try:
        with torch.no_grad():
            start = timer.now()
            translate(row, out_len)
            total = timer.now() - start
    finally:
        timer.remove()
    result = dict(timer.totals)
    result["other"] = total - sum(timer.totals.values())
    result["total"] = total
    return result
