"""Weight distillation: initialise a student (the MDN or a peer) from a Transformer teacher (pure functions).

State dicts in, state dicts out; no fairseq state.  One small function per part of the module tree,
each over the sub-state-dict of that part (keys relative to it), composed by
:func:`distill_state_dict`:

* :func:`map_embeddings` — token embeddings, positions, embedding layer norm: copied (the two
  models must share dictionaries and width);
* :func:`map_layer` — one encoder or decoder layer: every parameter the student has and the teacher
  has too is copied, except the attentions, which go through :func:`map_attention`; encoder layers are
  taken round-robin, student layer ``i`` <- teacher layer ``i mod N_teacher``; decoder layer ``j`` <-
  teacher decoder layer ``j``; a decoder FFN the student lacks is dropped;
* :func:`map_attention` — an attention of the teacher's width is copied; a narrow one (the MDN's single
  head) takes the chosen teacher head(s) with :func:`extract_heads`: their rows of q/k/v and the
  matching columns of the output projection.  Only the projections the student has are mapped, so a
  SAN layer that reuses its block's attention weights (``v_proj``/``out_proj`` only) takes the teacher
  layer's values and output; an AAN average block (no projections) takes nothing;
* :func:`map_compressed_layer` — a CAN decoder layer (one merged sub-layer), see its docstring;
* :func:`map_output_projection` — a full-rank student copies the teacher's output matrix; a rank-E
  student gets its truncated SVD (:func:`svd_factors`): ``A = U_E S_E^½`` (V×E), ``B = V_E S_E^½`` (H×E).

Whatever else both have (the stacks' final layer norms) is copied by name.  Student parameters no
function filled keep their initialisation and are listed in :attr:`Mapping.fresh`, teacher parameters
nothing used in :attr:`Mapping.dropped` — so a student with parts of its own (the peers' decoder layers:
AAN's gates and average FFN, CAN's residual projection W_r) is initialised as far as the teacher allows
and says what it initialised fresh.  Parameter names are fairseq's, so pre-norm and post-norm teachers
map alike.  Every mismatch raises :class:`~mdn_fairseq.errors.DistillationError` naming both values.
"""

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor

from ..errors import DistillationError

Params = Dict[str, Tensor]
ATTENTIONS = ("self_attn", "encoder_attn")
PROJECTIONS = ("q_proj", "k_proj", "v_proj")
EMBEDDINGS = ("embed_tokens.", "embed_positions.", "layernorm_embedding.")
_BOOKKEEPING = ("version", "_float_tensor")  # buffers that are not weights: never mapped nor reported
_MAPPED_ABOVE = ("encoder.layers.", "decoder.layers.", "decoder.output_projection.")


def subtree(sd: Params, prefix: str) -> Params:
    """The entries of ``sd`` under ``prefix`` (e.g. ``"decoder.layers.0."``), keys relative to it."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def round_robin(n_student: int, n_teacher: int) -> List[int]:
    """Teacher layer for each of ``n_student`` student layers: ``i mod n_teacher``.
    Raises :class:`DistillationError` when the teacher has no layers."""
    if n_teacher <= 0:
        raise DistillationError(f"the teacher has no layers to map from (n_teacher={n_teacher})")
    return [i % n_teacher for i in range(n_student)]


def copy_matching(teacher: Params, student: Params, where: str = "") -> Params:
    """The student entries that the teacher has under the same name, copied (cloned, in the student's
    dtype).  ``where`` prefixes the names in errors; raises :class:`DistillationError` when a shape differs."""
    out = {}
    for key, value in student.items():
        if key in teacher and not key.endswith(_BOOKKEEPING):
            if teacher[key].shape != value.shape:
                raise DistillationError(
                    f"cannot map teacher {where}{key} {tuple(teacher[key].shape)} to student {where}{key} "
                    f"{tuple(value.shape)}"
                )
            out[key] = teacher[key].detach().clone().to(value.dtype)
    return out


def map_embeddings(teacher: Params, student: Params, side: str) -> Params:
    """One side's (``"encoder"``/``"decoder"``) embeddings: token embeddings (V×H), learned positions,
    embedding layer norm, copied.  Raises :class:`DistillationError` when the width or the dictionary
    size differs (the student's data must be binarised with the teacher's dictionaries)."""
    name = "embed_tokens.weight"
    if name in teacher and name in student:
        (tv, th), (sv, sh) = teacher[name].shape, student[name].shape
        if th != sh:
            raise DistillationError(f"embed dims differ: teacher {side}.{name} is {th}-wide, student's {sh}-wide")
        if tv != sv:
            which = "source" if side == "encoder" else "target"
            raise DistillationError(
                f"dictionaries differ: the teacher's {which} dictionary has {tv} entries, the student's {sv}: "
                "binarise the student's data with the teacher's dictionaries (fairseq-preprocess --srcdict/--tgtdict)"
            )
    return copy_matching(teacher, {k: v for k, v in student.items() if k.startswith(EMBEDDINGS)}, f"{side}.")


def extract_heads(attn: Params, heads: Sequence[int], head_dim: int) -> Params:
    """The sub-attention made of ``heads`` of a fairseq attention layer's parameters.

    ``attn`` maps ``q_proj.weight`` (heads·head_dim × in), ``q_proj.bias``, ... ``out_proj.weight``
    (out × heads·head_dim), ``out_proj.bias`` to the teacher's tensors.  Returns the same keys, narrowed
    to ``len(heads) * head_dim`` rows of q/k/v and columns of ``out_proj.weight`` (its bias unchanged).
    """
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])
    out = {}
    for key, value in attn.items():
        proj, kind = key.split(".")
        if proj in PROJECTIONS:
            out[key] = value.index_select(0, rows).clone()
        elif proj == "out_proj" and kind == "weight":
            out[key] = value.index_select(1, rows).clone()
        else:  # out_proj.bias is added once, whatever the heads
            out[key] = value.clone()
    return out


def map_attention(
    teacher: Params, student: Params, teacher_heads: int, head_index: int, where: str = ""
) -> Tuple[Params, Optional[List[int]]]:
    """One attention layer (keys ``q_proj.weight`` ... ``out_proj.bias``; the student may have only some of
    them).  Of the teacher's width: copied, heads None.  Narrower (the student's ``k`` heads of the
    teacher's ``head_dim``): teacher heads ``head_index, ..., head_index + k - 1`` (mod ``teacher_heads``),
    returned as the list of heads.  No q/k/v projection in the student (an AAN average block) or in the
    teacher: nothing mapped.  Raises :class:`DistillationError` when the student's width is not a whole
    number of teacher heads."""
    key = next((f"{p}.weight" for p in PROJECTIONS if f"{p}.weight" in student and f"{p}.weight" in teacher), None)
    if key is None:
        return {}, None
    if teacher[key].shape == student[key].shape:
        return copy_matching(teacher, student, where), None
    student_dim, teacher_dim = student[key].shape[0], teacher[key].shape[0]
    head_dim = teacher_dim // teacher_heads
    if student_dim % head_dim != 0:
        raise DistillationError(
            f"the student's decoder attention dim ({student_dim}) is not a whole number of the teacher's "
            f"{head_dim}-dim heads ({teacher_heads} heads of {head_dim})"
        )
    heads = [(head_index + n) % teacher_heads for n in range(student_dim // head_dim)]
    narrowed = extract_heads({k: teacher[k] for k in student if k in teacher}, heads, head_dim)
    return copy_matching(narrowed, student, where), heads


def rename(params: Params, names: Dict[str, str]) -> Params:
    """The entries of ``params`` under the modules named in ``names`` (e.g. ``{"r_proj": "fc1"}``), renamed
    to their counterparts (``r_proj.weight`` -> ``fc1.weight``); entries of other modules are left out."""
    return {names[m] + k[len(m) :]: v for k, v in params.items() for m in names if k.startswith(m + ".")}


def map_layer(
    teacher: Params, student: Params, teacher_heads: int, head_index: int = 0, where: str = "", prenorm: bool = False
) -> Tuple[Params, Dict[str, List[int]], List[str]]:
    """One encoder or decoder layer: its attentions through :func:`map_attention`, the rest (layer norms,
    FFN) copied where the student has it; a CAN layer through :func:`map_compressed_layer` (``prenorm``:
    the student's norm placement).  Returns the student's layer parameters, per narrowed attention
    (``"self_attn"``/``"encoder_attn"``) the teacher heads it took, and the teacher keys used."""
    if any(k.startswith(CAN) for k in student):
        return map_compressed_layer(teacher, student, teacher_heads, head_index, prenorm, where)
    out, heads = {}, {}
    for attn in ATTENTIONS:
        t, s = subtree(teacher, f"{attn}."), subtree(student, f"{attn}.")
        if t and s:
            mapped, took = map_attention(t, s, teacher_heads, head_index, f"{where}{attn}.")
            out.update({f"{attn}.{k}": v for k, v in mapped.items()})
            if took is not None:
                heads[attn] = took
    rest = {k: v for k, v in student.items() if not k.startswith(tuple(f"{a}." for a in ATTENTIONS))}
    out.update(copy_matching(teacher, rest, where))
    return out, heads, list(out)


CAN = "compressed_attn."  # the CAN decoder layer's merged sub-layer


def map_compressed_layer(
    teacher: Params, student: Params, teacher_heads: int, head_index: int = 0, prenorm: bool = True, where: str = ""
) -> Tuple[Params, Dict[str, List[int]], List[str]]:
    """A CAN decoder layer (``compressed_attn.*``, ``layer_norm.*``) from a Transformer decoder layer.

    CAN merges the teacher's three sub-layers into one; each of its projections takes the teacher
    projection that plays the same role, narrowed to the chosen heads as :func:`map_attention` does:

    * source side, from the cross-attention: ``q_proj`` (W_q), ``enc_k_proj`` (W_ek), ``enc_v_proj``
      (W_ev) <- ``encoder_attn.q_proj/k_proj/v_proj``: on the source keys the student scores exactly as
      the teacher's cross-attention does;
    * target side, from the self-attention: ``k_proj`` (W_k), ``v_proj`` (W_v) <- ``self_attn.k_proj/
      v_proj`` (same role: decoder states to keys and values).  CAN has one W_q for both sides; it takes
      the cross-attention's, because the source side is what a translation decoder cannot do without
      (AAN replaces target self-attention by a plain average), so target scores start approximate;
    * values only when ``--can-value-dim`` equals the attention width, so that value heads line up with
      the teacher's heads (``can_mdn``); wider values (``can``: 8 heads × 256) have no counterpart;
    * ``r_proj``/``out_proj`` (W_r: d -> d_v, W_o: d_v -> d) <- the FFN's ``fc1``/``fc2`` when ``d_v``
      is the teacher's FFN width (``can``, ``can_tiny``): CAN's ReLU hidden layer stands for the FFN's,
      with the attention added into it.  Otherwise, when the values are teacher heads, ``out_proj`` <-
      the cross-attention's output projection (those heads' columns), W_r stays fresh;
    * ``layer_norm`` <- the teacher's layer norm in the same place: pre-norm (``prenorm``), the one on
      the layer input (``self_attn_layer_norm``); post-norm, the one on the layer output
      (``final_layer_norm``, or ``encoder_attn_layer_norm`` for a teacher without decoder FFN).

    Returns the parameters, ``{"compressed_attn": heads}`` when narrowed, and the teacher keys used.
    Raises :class:`DistillationError` when the attention width is not a whole number of teacher heads."""
    s = subtree(student, CAN)
    values = s["v_proj.weight"].shape[0] == s["q_proj.weight"].shape[0]
    ffn = all(
        f"{t}.weight" in teacher and teacher[f"{t}.weight"].shape == s[f"{o}.weight"].shape
        for o, t in (("r_proj", "fc1"), ("out_proj", "fc2"))
    )
    cross, target = {"q_proj": "q_proj", "enc_k_proj": "k_proj"}, {"k_proj": "k_proj"}
    if values:
        cross["enc_v_proj"] = target["v_proj"] = "v_proj"
        if not ffn:
            cross["out_proj"] = "out_proj"
    out, heads, used = {}, {}, []
    for attn, names in (("encoder_attn", cross), ("self_attn", target)):
        t = subtree(teacher, f"{attn}.")
        mapped, took = map_attention(t, rename(s, names), teacher_heads, head_index, f"{where}{attn}.")
        out.update(rename(mapped, {theirs: CAN + ours for ours, theirs in names.items()}))
        used += [f"{attn}.{k}" for k in mapped]
        if took is not None:
            heads[CAN[:-1]] = took
    last = "final_layer_norm" if "final_layer_norm.weight" in teacher else "encoder_attn_layer_norm"
    plain = {"layer_norm": "self_attn_layer_norm" if prenorm else last}
    if ffn:
        plain.update({CAN + "r_proj": "fc1", CAN + "out_proj": "fc2"})
    copied = copy_matching(teacher, rename(student, plain), where)
    out.update(rename(copied, {theirs: ours for ours, theirs in plain.items()}))
    return out, heads, used + list(copied)


@dataclass
class SVDFactors:
    """Rank-E factors of a V×H matrix ``W ≈ A·Bᵀ``."""

    A: Tensor  # V×E
    B: Tensor  # H×E
    singular_values: Tensor  # all min(V, H) of them, descending
    rank: int

    @property
    def energy(self) -> float:
        """Share (0..1) of the squared Frobenius norm of ``W`` kept by the rank-E factors."""
        s2 = self.singular_values.double() ** 2
        return float(s2[: self.rank].sum() / s2.sum())


def svd_factors(W: Tensor, rank: int) -> SVDFactors:
    """Best rank-``rank`` factors of ``W`` (V×H), ``W ≈ A·Bᵀ`` (Eckart–Young), computed in float64 and
    returned in ``W``'s dtype.  Raises :class:`DistillationError` unless ``0 < rank <= min(V, H)``."""
    V, H = W.shape
    if not 0 < rank <= min(V, H):
        raise DistillationError(f"output rank {rank} must be between 1 and min(V={V}, H={H}) = {min(V, H)}")
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    root = S[:rank].sqrt()
    A = (U[:, :rank] * root).to(W.dtype)
    B = (Vh[:rank].t() * root).to(W.dtype)
    return SVDFactors(A=A, B=B, singular_values=S.to(W.dtype), rank=rank)


OUTPUT_MATRIX_KEYS = ("output_projection.weight", "embed_out", "embed_tokens.weight")  # teacher decoder, in order


def map_output_projection(teacher: Params, student: Params) -> Tuple[Params, Optional[SVDFactors], Optional[str]]:
    """The decoder's output layer (keys relative to ``decoder.``).  Full rank: the teacher's V×H output
    matrix copied; rank E (``output_projection.A.weight``, V×E): its SVD factors, ``A.weight = A``,
    ``B.weight = Bᵀ`` (E×H).  Returns the parameters, the factors (None at full rank) and the teacher key
    used (None when the student has no output matrix of its own, i.e. it is tied to its embeddings).
    Raises :class:`DistillationError` when the vocabularies differ."""
    own = [k for k in ("output_projection.weight", "output_projection.A.weight") if k in student]
    if not own:
        return {}, None, None
    source = next((k for k in OUTPUT_MATRIX_KEYS if k in teacher), None)
    if source is None:
        raise DistillationError("the teacher has no output projection (decoder.output_projection.weight)")
    W = teacher[source]
    if W.shape[0] != student[own[0]].shape[0]:
        raise DistillationError(
            f"dictionaries differ: the teacher's output layer has {W.shape[0]} rows, the student's "
            f"{student[own[0]].shape[0]}"
        )
    if own[0] == "output_projection.weight":
        return copy_matching({own[0]: W}, {own[0]: student[own[0]]}, "decoder."), None, source
    factors = svd_factors(W.float(), student[own[0]].shape[1])
    dtype = student[own[0]].dtype
    params = {
        "output_projection.A.weight": factors.A.to(dtype),
        "output_projection.B.weight": factors.B.t().contiguous().to(dtype),
    }
    return params, factors, source


@dataclass
class Mapping:
    """What :func:`distill_state_dict` did, for printing (:meth:`lines`)."""

    encoder_layers: List[int] = field(default_factory=list)  # teacher layer of each student encoder layer
    decoder_layers: List[int] = field(default_factory=list)
    heads: Dict[str, List[int]] = field(default_factory=dict)  # "0.self_attn" -> teacher heads
    head_choice: str = ""  # how the heads were chosen (--wd-head), when known
    svd: Optional[SVDFactors] = None
    dropped: List[str] = field(default_factory=list)  # teacher keys with no place in the student
    fresh: List[str] = field(default_factory=list)  # student keys left as initialised

    def lines(self) -> List[str]:
        """The mapping in words, one line per student part."""
        out = [f"encoder layer {i} <- teacher encoder layer {t}" for i, t in enumerate(self.encoder_layers)]
        for j, t in enumerate(self.decoder_layers):
            heads = ", ".join(f"{a} heads {h}" for a, h in self.heads.items() if a.startswith(f"{j}."))
            out.append(f"decoder layer {j} <- teacher decoder layer {t}" + (f" ({heads})" if heads else ""))
        if self.head_choice:
            out.append(f"teacher heads chosen by {self.head_choice}")
        if self.svd is not None:
            out.append(
                f"output projection <- rank-{self.svd.rank} SVD of the teacher's "
                f"{self.svd.A.shape[0]}x{self.svd.B.shape[0]} output matrix "
                f"(energy kept {100 * self.energy:.2f}%)"
            )
        if self.dropped:
            out.append(f"teacher parameters not used: {len(self.dropped)} ({_summarise(self.dropped)})")
        if self.fresh:
            out.append(f"student parameters kept as initialised: {', '.join(self.fresh)}")
        return out

    @property
    def energy(self) -> float:
        """Share of the output matrix's squared norm the student keeps (1.0 at full rank)."""
        return self.svd.energy if self.svd is not None else 1.0


def _summarise(keys: List[str]) -> str:
    kinds = sorted({re.sub(r"\.\d+\.", ".N.", k) for k in keys})
    return ", ".join(kinds[:6]) + (", ..." if len(kinds) > 6 else "")


def count_layers(sd: Params, side: str) -> int:
    """Number of ``{side}.layers.N.`` blocks in a state dict."""
    ids = {int(m.group(1)) for k in sd for m in [re.match(rf"^{side}\.layers\.(\d+)\.", k)] if m}
    return max(ids) + 1 if ids else 0


def distill_state_dict(
    teacher: Params, student: Params, teacher_heads: int, head_index: int = 0, prenorm: Optional[bool] = None
) -> Tuple[Params, Mapping]:
    """The student's state dict, initialised from the teacher's (the driver over the module tree).

    ``student`` gives the student's keys, shapes and dtypes (e.g. a freshly built model's
    ``state_dict()``); ``teacher_heads`` is the teacher decoder's head count; a narrow student attention
    of ``k`` heads takes teacher heads ``head_index, ..., head_index + k - 1``.  ``prenorm``: whether the
    student's decoder is pre-norm (only CAN layers need it); by default, whether it has a final layer
    norm (``decoder.layer_norm``), which fairseq builds for pre-norm decoders.  Returns a state dict with
    every student key (the unmapped ones as the student had them) and the :class:`Mapping`.
    Raises :class:`DistillationError` naming both values when the two cannot be mapped.
    """
    mapping = Mapping()
    dec_t, dec_s = count_layers(teacher, "decoder"), count_layers(student, "decoder")
    if dec_s > dec_t:
        raise DistillationError(f"the student has {dec_s} decoder layers, more than the teacher's {dec_t}")
    mapping.encoder_layers = round_robin(count_layers(student, "encoder"), count_layers(teacher, "encoder"))
    mapping.decoder_layers = list(range(dec_s))
    prenorm = "decoder.layer_norm.weight" in student if prenorm is None else prenorm
    out: Params = {}
    used: Set[str] = set()

    def put(prefix: str, params: Params, source_prefix: str, sources=None):
        out.update({prefix + k: v for k, v in params.items()})
        used.update(source_prefix + k for k in (params if sources is None else sources))

    for side, layers in (("encoder", mapping.encoder_layers), ("decoder", mapping.decoder_layers)):
        t_side, s_side = subtree(teacher, f"{side}."), subtree(student, f"{side}.")
        put(f"{side}.", map_embeddings(t_side, s_side, side), f"{side}.")
        for i, t in enumerate(layers):
            s_prefix, t_prefix = f"{side}.layers.{i}.", f"{side}.layers.{t}."
            params, heads, sources = map_layer(
                subtree(teacher, t_prefix), subtree(student, s_prefix), teacher_heads, head_index, s_prefix, prenorm
            )
            put(s_prefix, params, t_prefix, sources)
            mapping.heads.update({f"{i}.{a}": h for a, h in heads.items()})
    params, mapping.svd, source = map_output_projection(subtree(teacher, "decoder."), subtree(student, "decoder."))
    put("decoder.", params, "decoder.", [source] if source else [])
    # whatever else both have by name (the stacks' final layer norms); parts mapped above stay as mapped
    rest = {k: v for k, v in student.items() if k not in out and not k.startswith(_MAPPED_ABOVE)}
    put("", copy_matching(teacher, rest), "")

    for key, value in student.items():
        if key not in out:
            out[key] = value.clone()
            if not key.endswith(_BOOKKEEPING):
                mapping.fresh.append(key)
    mapping.dropped = sorted(k for k in teacher if k not in used and not k.endswith(_BOOKKEEPING))
    return {k: out[k] for k in student}, mapping


def mask_heads_except(attn: Params, head: int, num_heads: int) -> Params:
    """A copy of an attention layer's parameters whose output only carries ``head``: the other heads'
    columns of ``out_proj.weight`` (out × num_heads·head_dim) zeroed.  For scoring heads one at a time."""
    out = {k: v.clone() for k, v in attn.items()}
    w = out["out_proj.weight"]
    head_dim = w.shape[1] // num_heads
    keep = torch.zeros(w.shape[1], dtype=torch.bool)
    keep[head * head_dim : (head + 1) * head_dim] = True
    w[:, ~keep] = 0
    return out
