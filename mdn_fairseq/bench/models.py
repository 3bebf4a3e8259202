"""The models of a benchmark run: synthetic ones at the paper's dims, trained checkpoints, and their
opt-in variants (int8, bf16), each with its dictionaries and parameter count.

A variant gets rows of its own (named ``model · generator · variant``), because it changes the
arithmetic and therefore the translations: ``int8`` is a dynamic-quantized copy, ``bf16`` (``fp16`` on
CUDA) the same module run under ``torch.autocast``.  Another engine's converted copy of a model (e.g.
CTranslate2's, :mod:`.ct2`) is a :class:`Model` with an ``engine``.
"""

import contextlib
import copy
import os
import warnings
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
from fairseq.data import Dictionary
from torch import nn

from ..errors import MDNError
from .synthetic import build_synthetic, paper_vocab


@dataclass
class Model:
    """A model to benchmark: its row name, the eval-mode fairseq model, its dictionaries, its parameter
    count (of the fp32 original, also for variants), the variant (``None``, ``"int8"``, ``"bf16"``,
    ``"fp16"``) and, for a checkpoint, the text file of its source sentences.  ``autocast``: the dtype
    its rows run under ``torch.autocast`` (bf16/fp16 variants); ``engine``: another engine's copy that
    translates instead of ``model`` (which then only gives the shapes for the FLOP count)."""

    name: str
    model: nn.Module
    src_dict: Dictionary
    tgt_dict: Dictionary
    params: int
    variant: Optional[str] = None
    input: Optional[str] = None
    autocast: Optional[torch.dtype] = None
    engine: Any = None

    @property
    def int8(self) -> bool:
        return self.variant == "int8"

    def precision(self, fp16: bool = False) -> str:
        """The arithmetic the rows run in: ``int8``, ``bf16`` or ``fp16`` for those variants, else
        ``fp16`` in a ``--fp16`` run, ``fp32`` otherwise; an engine's own (the peak a row is measured
        against)."""
        if self.engine is not None:
            return self.engine.precision
        if self.variant in ("int8", "bf16", "fp16"):
            return self.variant
        return "fp16" if fp16 else "fp32"

    def context(self, device: str):
        """The context its translations run in: ``torch.autocast(device, self.autocast)`` for a
        reduced-precision variant, else nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=self.autocast)


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


def autocast_dtype(device: str) -> Optional[torch.dtype]:
    """The reduced precision of ``--bf16`` rows on ``device``: bf16 on a CPU with native bf16 (oneDNN's
    check: AVX512-BF16 or AMX), fp16 on CUDA; None when the CPU has no bf16 instructions (autocast
    would emulate it: slower, and measuring nothing worth a row)."""
    if device == "cuda":
        return torch.float16
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and supported and supported() else None


def autocast_variants(models: Sequence[Model], dtype: torch.dtype) -> List[Model]:
    """A ``bf16``/``fp16`` variant of each of ``models``: the same module (autocast changes no weight),
    run under ``torch.autocast`` with ``dtype``."""
    variant = "bf16" if dtype == torch.bfloat16 else "fp16"
    return [
        Model(m.name, m.model, m.src_dict, m.tgt_dict, m.params, variant=variant, input=m.input, autocast=dtype)
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
