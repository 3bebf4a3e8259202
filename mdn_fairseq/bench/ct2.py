"""CTranslate2 side by side (``--ctranslate2``): the plain-Transformer rows converted with CTranslate2's
fairseq converter and timed in the same run, on the same sentences, beam and lengths.

CTranslate2 runs standard Transformers only, so it gets (:func:`ct2_models`) every plain Transformer
of the run (fairseq's encoder/decoder layers, full output layer: ``transformer``,
``mdn_transformer_*``, plain checkpoints) and, for every other synthetic model (``mdn``: narrow head, no
decoder FFN, low-rank output), the closest thing it can express: a plain Transformer of the same
depth and widths (22+1 for ``mdn``: the encoder's heads and FFN in the decoder too, a full output
layer), random-initialised.  Each is converted once (``ctranslate2.converters.FairseqConverter``) and
loaded per compute type: ``float32`` (``float16`` in a ``--fp16`` run) and ``int8``.

What our path fixes for the converter (ctranslate2 4.x, this fairseq): it accepts only fairseq's own
model names (``transformer``), so the checkpoint we write for it names the architecture
``transformer`` (a tricks-off plugin model has fairseq's parameter names); the plugin's models keep
their config as a ``TransformerConfig``, which is flattened back into the ``argparse.Namespace``
fairseq checkpoints hold; and the converter's ``torch.load(weights_only=True)`` runs with the
plugin's fairseq allow-list (:func:`mdn_fairseq.checkpoint.safe_globals`).

Sentences: token ids -> the source dictionary's symbols (EOS left out: the converted model appends
it); output symbols -> target ids, EOS appended, as fairseq's hypotheses.  Fixed output length:
``min_decoding_length = max_decoding_length = --out-len`` (CTranslate2 counts tokens without EOS).
"""

import argparse
import os
import tempfile
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Dict, List, Optional

import torch
from fairseq.data import Dictionary
from fairseq.modules import MultiheadAttention
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayer,
    TransformerDecoderLayerBase,
    TransformerEncoderLayer,
    TransformerEncoderLayerBase,
)
from torch import nn

from ..checkpoint import safe_globals
from ..errors import MDNError
from .models import Model, count_params
from .synthetic import build_synthetic

INSTALL = "pip install 'mdn-fairseq[bench]' (or: pip install ctranslate2)"
#: compute type -> the precision whose peak a row is measured against
COMPUTE_TYPES = {"float32": "fp32", "float16": "fp16", "int8": "int8"}


def require_ctranslate2():
    """The ``ctranslate2`` module; raises :class:`MDNError` with the install command when it is missing."""
    try:
        import ctranslate2
    except ImportError:
        raise MDNError(f"--ctranslate2 needs the ctranslate2 package, which is not installed: {INSTALL}") from None
    return ctranslate2


def plain_reason(model: nn.Module) -> Optional[str]:
    """Why ``model`` is not a plain fairseq Transformer (fairseq's layers and attention, a full
    ``nn.Linear`` output layer), or None when it is."""
    enc, dec = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if enc is None or dec is None or not hasattr(enc, "layers") or not hasattr(dec, "layers"):
        return "not an encoder-decoder Transformer"
    for side, layers, kinds in (
        ("encoder", enc.layers, (TransformerEncoderLayerBase, TransformerEncoderLayer)),
        ("decoder", dec.layers, (TransformerDecoderLayerBase, TransformerDecoderLayer)),
    ):
        for i, layer in enumerate(layers):
            if type(layer) not in kinds:
                return f"{side} layer {i} is a {type(layer).__name__}"
            attns = [getattr(layer, "self_attn", None), getattr(layer, "encoder_attn", None)]
            if any(a is not None and type(a) is not MultiheadAttention for a in attns):
                return f"{side} layer {i} has a {type(attns[0]).__name__} attention"
    if type(getattr(dec, "output_projection", None)) is not nn.Linear:
        return f"the output layer is a {type(getattr(dec, 'output_projection', None)).__name__}"
    return None


def legacy_namespace(cfg: Any) -> argparse.Namespace:
    """The flat ``argparse.Namespace`` of a model config (a ``TransformerConfig``, whose ``encoder``,
    ``decoder`` and ``quant_noise`` sub-configs become ``encoder_*`` etc., or a Namespace, copied)."""
    if isinstance(cfg, argparse.Namespace):
        return argparse.Namespace(**vars(cfg))
    if not is_dataclass(cfg):
        raise MDNError(f"--ctranslate2: cannot read the model config ({type(cfg).__name__})")
    ns = argparse.Namespace()
    for key, value in vars(cfg).items():
        if is_dataclass(value):
            for f in fields(value):
                setattr(ns, f"{key}_{f.name}", getattr(value, f.name))
        else:
            setattr(ns, key, value)
    return ns


def plain_equivalent(model: nn.Module, src_dict: Dictionary, tgt_dict: Dictionary, seed: int) -> nn.Module:
    """A random-initialised plain Transformer (``mdn_transformer_base``, tricks off) with ``model``'s
    depth, widths, norm placement and vocabularies; its decoder gets the encoder's heads and FFN width
    and a full output layer (what CTranslate2 can run in place of an MDN-like decoder)."""
    a = model.args
    heads, ffn = a.encoder_attention_heads, a.encoder_ffn_embed_dim
    overrides = dict(
        encoder_layers=a.encoder_layers,
        decoder_layers=a.decoder_layers,
        encoder_embed_dim=a.encoder_embed_dim,
        decoder_embed_dim=a.decoder_embed_dim,
        encoder_ffn_embed_dim=ffn,
        decoder_ffn_embed_dim=ffn,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_normalize_before=a.encoder_normalize_before,
        decoder_normalize_before=a.decoder_normalize_before,
        activation_fn=a.activation_fn,
    )
    return build_synthetic("mdn_transformer_base", len(src_dict), len(tgt_dict), seed=seed, **overrides)


def convert(model: nn.Module, src_dict: Dictionary, tgt_dict: Dictionary, folder: str) -> str:
    """Convert the plain Transformer ``model`` with CTranslate2's fairseq converter into ``folder``/ct2
    (via a checkpoint and dictionaries written to ``folder``); returns the converted model's folder.
    Raises :class:`MDNError` with the converter's message when it refuses the model."""
    ctranslate2 = require_ctranslate2()
    args = legacy_namespace(model.args)
    args.arch = args._name = "transformer"  # the converter knows fairseq's model names only
    args.task, args.source_lang, args.target_lang, args.data = "translation", "src", "tgt", folder
    src_dict.save(os.path.join(folder, "dict.src.txt"))
    tgt_dict.save(os.path.join(folder, "dict.tgt.txt"))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = os.path.join(folder, "checkpoint.pt")
    torch.save({"args": args, "model": state}, ckpt)
    try:
        with safe_globals():
            return ctranslate2.converters.FairseqConverter(ckpt, folder).convert(
                os.path.join(folder, "ct2"), force=True
            )
    except (ValueError, NotImplementedError, KeyError, RuntimeError) as err:
        raise MDNError(f"--ctranslate2: CTranslate2's fairseq converter refused the model: {err}") from err


@dataclass
class CT2Engine:
    """A converted model loaded for one compute type: the ``ctranslate2.Translator``, the compute type
    and the precision (:data:`COMPUTE_TYPES`)."""

    translator: Any
    compute_type: str
    precision: str


class CT2Generator:
    """fairseq's generator interface on a :class:`CT2Engine`: ``generate(models, sample)`` translates the
    batch with ``translate_batch`` (``models`` is ignored) and returns, per sentence, a one-element list
    with the best hypothesis ``{"tokens": LongTensor (ids, EOS appended), "score": float}``.  With
    ``out_len`` every output has exactly ``out_len`` tokens before EOS; otherwise at most
    ``max_len_a * src_len + max_len_b`` (``src_len``: the padded batch's, as fairseq)."""

    def __init__(self, model: Model, beam: int, out_len: Optional[int], max_len_a: float = 0, max_len_b: int = 200):
        self.engine, self.src_dict, self.tgt_dict = model.engine, model.src_dict, model.tgt_dict
        self.beam, self.out_len, self.max_len_a, self.max_len_b = beam, out_len, max_len_a, max_len_b

    def _source(self, row: torch.Tensor) -> List[str]:
        ids = [i for i in row.tolist() if i != self.src_dict.pad()]
        if ids and ids[-1] == self.src_dict.eos():
            ids = ids[:-1]
        return [self.src_dict[i] for i in ids]

    def generate(self, models, sample: Dict, **unused) -> List[List[Dict]]:
        src = sample["net_input"]["src_tokens"]
        if self.out_len is not None:
            lengths = dict(min_decoding_length=self.out_len, max_decoding_length=self.out_len)
        else:
            lengths = dict(max_decoding_length=int(self.max_len_a * src.size(1) + self.max_len_b))
        results = self.engine.translator.translate_batch(
            [self._source(row) for row in src], beam_size=self.beam, num_hypotheses=1, return_scores=True, **lengths
        )
        eos = self.tgt_dict.eos()
        return [
            [
                {
                    "tokens": torch.tensor([self.tgt_dict.index(t) for t in r.hypotheses[0]] + [eos]),
                    "score": r.scores[0] if r.scores else None,
                }
            ]
            for r in results
        ]


def load_engines(folder: str, device: str, threads: int, fp16: bool) -> List[CT2Engine]:
    """The converted model in ``folder`` loaded as ``float32`` (``float16`` with ``fp16``) and ``int8``
    on ``device`` with ``threads`` intra-op threads (one translation at a time)."""
    ctranslate2 = require_ctranslate2()
    engines = []
    for compute_type in ("float16" if fp16 else "float32", "int8"):
        translator = ctranslate2.Translator(
            folder, device=device, compute_type=compute_type, intra_threads=threads, inter_threads=1
        )
        engines.append(CT2Engine(translator, compute_type, COMPUTE_TYPES[compute_type]))
    return engines


def _plain_models(models: List[Model], synthetic: bool, seed: int, notes: List[str]) -> List[Model]:
    """The plain Transformers to convert: each plain model of the run, and for each other synthetic model
    its plain equivalent (:func:`plain_equivalent`; once per shape); a note for every other model."""
    plain, seen = [], set()
    for m in models:
        reason = plain_reason(m.model)
        if reason is None:
            plain.append(m)
            continue
        if not synthetic:
            notes.append(f"{m.name}: no CTranslate2 row ({reason}; CTranslate2 runs plain Transformers only)")
            continue
        eq = plain_equivalent(m.model, m.src_dict, m.tgt_dict, seed)
        a = eq.args
        name = f"plain {a.encoder_layers}+{a.decoder_layers} ({m.name}'s dims)"
        if name not in seen:
            seen.add(name)
            plain.append(Model(name, eq, m.src_dict, m.tgt_dict, count_params(eq), input=m.input))
    return plain


def ct2_models(
    models: List[Model], synthetic: bool, seed: int, device: str, threads: int, fp16: bool, notes: List[str]
) -> List[Model]:
    """The CTranslate2 models of a run, two per plain Transformer (:func:`_plain_models` of the run's
    fp32 ``models``): a :class:`Model` per compute type with its :class:`CT2Engine`, variant ``int8``
    for the int8 one.  Raises :class:`MDNError` when ctranslate2 is missing or sees no GPU for
    ``device`` ``cuda``."""
    ctranslate2 = require_ctranslate2()
    if device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise MDNError("--ctranslate2 --device cuda: this ctranslate2 build sees no CUDA device; use --device cpu")
    out = []
    for m in _plain_models([m for m in models if m.variant is None], synthetic, seed, notes):
        with tempfile.TemporaryDirectory(prefix="mdn-bench-ct2-") as folder:
            engines = load_engines(convert(m.model, m.src_dict, m.tgt_dict, folder), device, threads, fp16)
        for engine in engines:
            variant = "int8" if engine.precision == "int8" else None
            out.append(Model(m.name, m.model, m.src_dict, m.tgt_dict, m.params, variant, m.input, engine=engine))
    return out
