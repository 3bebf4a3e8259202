"""What the peers' decoder sub-layers share: xavier-initialised projections and one incremental-decoding
buffer of batch-first tensors, reordered along the beam like fairseq's ``MultiheadAttention`` does."""

from typing import Dict, Optional, Sequence

from torch import Tensor, nn

#: fairseq's incremental state: module id + key -> a buffer of named tensors.
State = Dict[str, Dict[str, Optional[Tensor]]]


def xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear(in_features, out_features)`` with xavier-uniform weight and zero bias, as fairseq initialises
    its attention projections."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class BatchFirstBuffer:
    """Mixin for a ``@with_incremental_state`` module that keeps its decoding cache in one buffer
    (``buffer_key``); the tensors named in ``batch_keys`` (all of them when None) have the batch (times beam)
    first and follow the beam on :meth:`reorder_incremental_state`; the others (e.g. a shared step count)
    are left alone."""

    buffer_key: str = "state"
    batch_keys: Optional[Sequence[str]] = None

    def reorder_incremental_state(self, incremental_state: State, new_order: Tensor) -> State:
        """Beam search reordering: ``index_select(0, new_order)`` on the batch-first cached tensors."""
        saved = self._get_input_buffer(incremental_state)
        keys = [k for k in (saved if self.batch_keys is None else self.batch_keys) if saved.get(k) is not None]
        if keys:
            for key in keys:
                saved[key] = saved[key].index_select(0, new_order)
            self._set_input_buffer(incremental_state, saved)
        return incremental_state

    def _get_input_buffer(self, incremental_state: Optional[State]) -> Dict[str, Optional[Tensor]]:
        return self.get_incremental_state(incremental_state, self.buffer_key) or {}

    def _set_input_buffer(self, incremental_state: Optional[State], buffer: Dict[str, Optional[Tensor]]):
        return self.set_incremental_state(incremental_state, self.buffer_key, buffer)
