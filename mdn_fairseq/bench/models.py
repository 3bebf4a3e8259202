"""The models of a benchmark run: synthetic ones at the paper's dims, trained checkpoints, and their
opt-in variants (int8), each with its dictionaries and parameter count.

A variant is a transformed copy that gets rows of its own (named ``model · generator · variant``), because
it changes the arithmetic and therefore the translations; reduced-precision variants belong here.
"""

import copy
import os
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from fairseq.data import Dictionary
from torch import nn

from ..errors import MDNError
from .synthetic import build_synthetic, paper_vocab


@dataclass
class Model:
    """A model to benchmark: its row name, the eval-mode fairseq model, its dictionaries, its parameter
    count (of the fp32 original, also for variants), the variant (``None`` or ``"int8"``) and, for a
    checkpoint, the text file of its source sentences."""

    name: str
    model: nn.Module
    src_dict: Dictionary
    tgt_dict: Dictionary
    params: int
    variant: Optional[str] = None
    input: Optional[str] = None

    @property
    def int8(self) -> bool:
        return self.variant == "int8"


def count_params(model: nn.Module) -> int:
    """Number of parameters (elements, not bytes)."""
    return sum(p.numel() for p in model.parameters())


def synthetic_models(
    archs: Sequence[str], src_vocab: Optional[int], tgt_vocab: Optional[int], seed: int
) -> List[Model]:
    """Random-initialised ``archs`` (:func:`~.synthetic.build_synthetic`); vocabularies default to
    :func:`~.synthetic.paper_vocab`.  Raises :class:`MDNError` for an unknown architecture."""
    models = []
    for arch in archs:
        src_v, tgt_v = paper_vocab(arch)
        model = build_synthetic(arch, src_vocab or src_v, tgt_vocab or tgt_v, seed=seed)
        models.append(Model(arch, model, model.encoder.dictionary, model.decoder.dictionary, count_params(model)))
    return models


def checkpoint_name(path: str) -> str:
    """The default row name of a checkpoint: its folder and file name (``mdn/checkpoint_avg.pt``)."""
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def checkpoint_models(
    paths: Sequence[str], data: Sequence[str], inputs: Sequence[str], names: Optional[Sequence[str]] = None
) -> List[Model]:
    """Trained checkpoints, loaded as ``fairseq-generate`` loads them (``data[i]``: the data-bin folder with
    the dictionaries of ``paths[i]``); ``inputs[i]`` is the text file of its source sentences.  Raises
    :class:`MDNError` for a checkpoint file that does not exist."""
    from fairseq import checkpoint_utils

    models = []
    for i, path in enumerate(paths):
        if not os.path.isfile(path):
            raise MDNError(f"--path {path}: no such checkpoint file")
        ensemble, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data[i]})
        model = ensemble[0].eval()
        name = names[i] if names else checkpoint_name(path)
        models.append(
            Model(name, model, task.source_dictionary, task.target_dictionary, count_params(model), input=inputs[i])
        )
    return models


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8 (weights int8, activations
    quantized per batch; CPU only; approximate: translations may differ from the fp32 model's)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "skip_embed_dim_check"):
            module.skip_embed_dim_check = True  # fairseq attention then calls its (quantized) projections
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def int8_variants(models: Sequence[Model]) -> List[Model]:
    """An int8 copy (:func:`quantize_int8`) of each of ``models``, same name, dictionaries and input."""
    return [
        Model(m.name, quantize_int8(m.model), m.src_dict, m.tgt_dict, m.params, variant="int8", input=m.input)
        for m in models
    ]


def to_device(models: Sequence[Model], device: str, fp16: bool = False) -> None:
    """Move ``models`` to ``device`` (``"cpu"`` or ``"cuda"``) in place; ``fp16`` halves them on CUDA."""
    if device != "cuda":
        return
    for m in models:
        m.model.cuda()
        if fp16:
            m.model.half()
