"""Propose SAN blocks from a trained model, the SAN paper's way (Xiao et al., IJCAI 2019).

On a held-out batch, each decoder layer's self-attention (and cross-attention) distribution is taken
per target position, averaged over heads; two layers' similarity is 1 − the mean Jensen–Shannon
divergence (base 2, so in [0, 1]) of their distributions over the real target positions. Blocks are
then grown greedily from the first layer: a layer joins the current block when its similarity to every
layer already in it is at least the threshold, else it starts a new block. The result is the value of
``--san-self-attn-blocks`` / ``--san-cross-attn-blocks`` for a SAN student of that model.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from .errors import MDNError


def layer_attention(model, net_input: Dict[str, Tensor]) -> Tuple[List[Tensor], List[Tensor], Tensor]:
    """Run ``model`` (eval, no grad) on a batch and return, per decoder layer, its self-attention
    (B × T × T) and cross-attention (B × T × S) distributions averaged over heads, and the mask of the
    real target positions (B × T).

    Raises:
        MDNError: a decoder layer without fairseq self- and cross-attention (AAN, CAN, a SAN student).
    """
    from fairseq.modules import MultiheadAttention

    found: Dict[Tuple[str, int], Tensor] = {}

    def keep(kind: str, idx: int):
        def hook(module, args, kwargs, output):
            again = dict(kwargs, need_weights=True, need_head_weights=False)
            found[kind, idx] = module.forward(*args, **again)[1].float()  # forward: no hooks, same inputs

        return hook

    handles = []
    try:
        for idx, layer in enumerate(model.decoder.layers):
            for kind in ("self_attn", "encoder_attn"):
                attn = getattr(layer, kind, None)
                if not isinstance(attn, MultiheadAttention):
                    raise MDNError(
                        f"decoder layer {idx} has no fairseq {kind} ({type(attn).__name__}): mdn-san-blocks "
                        "reads the attention of a Transformer or MDN model (e.g. the SAN student's teacher)"
                    )
                handles.append(attn.register_forward_hook(keep(kind, idx), with_kwargs=True))
        with torch.no_grad():
            model.eval()(**net_input)
    finally:
        for h in handles:
            h.remove()
    n = len(model.decoder.layers)
    real = net_input["prev_output_tokens"].ne(model.decoder.padding_idx)
    return [found["self_attn", i] for i in range(n)], [found["encoder_attn", i] for i in range(n)], real


def js_similarity(p: Tensor, q: Tensor, mask: Tensor) -> float:
    """1 − the mean Jensen–Shannon divergence (base 2) of the distributions ``p``, ``q`` (B × T × K, rows
    summing to 1) over the rows where ``mask`` (B × T) is True: 1 = identical, 0 = disjoint supports."""
    m = (p + q) / 2

    def kl(a: Tensor) -> Tensor:
        return torch.where(a > 0, a * (torch.log2(a.clamp_min(1e-30)) - torch.log2(m.clamp_min(1e-30))), 0.0).sum(-1)

    js = (kl(p) + kl(q)) / 2
    return float(1.0 - js[mask].mean())


def similarity_matrix(distributions: Sequence[Tensor], mask: Tensor) -> Tensor:
    """The L × L matrix of :func:`js_similarity` between the layers' distributions (symmetric, diagonal 1)."""
    n = len(distributions)
    sim = torch.ones(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            sim[i, j] = sim[j, i] = js_similarity(distributions[i], distributions[j], mask)
    return sim


def greedy_blocks(sim: Tensor, threshold: float) -> List[int]:
    """Block sizes for consecutive layers: layer j joins the current block when ``sim[i, j] >= threshold``
    for every layer i of the block, else starts a new one. Raises :class:`MDNError` for a threshold
    outside [0, 1]."""
    if not 0.0 <= threshold <= 1.0:
        raise MDNError(f"--threshold {threshold}: a similarity, must be in [0, 1]")
    blocks: List[List[int]] = []
    for j in range(sim.size(0)):
        if blocks and all(sim[i, j] >= threshold for i in blocks[-1]):
            blocks[-1].append(j)
        else:
            blocks.append([j])
    return [len(b) for b in blocks]


def propose_blocks(model, net_input: Dict[str, Tensor], threshold: float) -> Dict[str, object]:
    """The similarity matrices (as lists) and the proposed block sizes of self- and cross-attention:
    ``{"self": {"matrix", "blocks"}, "cross": {...}}``; see :func:`layer_attention` for what raises."""
    self_dists, cross_dists, mask = layer_attention(model, net_input)
    out: Dict[str, object] = {}
    for kind, dists in (("self", self_dists), ("cross", cross_dists)):
        sim = similarity_matrix(dists, mask)
        out[kind] = {"matrix": sim.tolist(), "blocks": greedy_blocks(sim, threshold)}
    return out


def held_out_batch(
    path: str, data: str, subset: str = "valid", sentences: int = 64, source_lang=None, target_lang=None
):
    """Load the checkpoint ``path`` (weights-only, see :mod:`mdn_fairseq.checkpoint`) with its task on the
    binarised ``data`` and collate the first ``sentences`` pairs of ``subset``. Returns
    ``(model, net_input)``.

    Raises:
        MDNError: no such checkpoint, data folder or subset, or ``sentences`` < 1.
    """
    import os

    from fairseq import checkpoint_utils

    if sentences < 1:
        raise MDNError(f"--sentences {sentences}: must be >= 1")
    for flag, value in (("--path", path), ("--data", data)):
        if not os.path.exists(value):
            raise MDNError(f"{flag} {value}: no such file or folder")
    langs = {k: v for k, v in (("source_lang", source_lang), ("target_lang", target_lang)) if v}
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data, **langs})
    try:
        task.load_dataset(subset)
    except FileNotFoundError as err:
        raise MDNError(f"--subset {subset}: not in --data {data} ({err})") from None
    dataset = task.dataset(subset)
    batch = dataset.collater([dataset[i] for i in range(min(sentences, len(dataset)))])
    return models[0], batch["net_input"]


def format_matrix(matrix: Sequence[Sequence[float]]) -> str:
    """The similarity matrix as aligned text, layers numbered from 1."""
    head = "layer " + "".join(f"{j + 1:>7d}" for j in range(len(matrix)))
    return "\n".join([head] + [f"{i + 1:>5d} " + "".join(f"{v:7.3f}" for v in row) for i, row in enumerate(matrix)])
