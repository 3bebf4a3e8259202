"""Weight distillation: initialise an MDN student from a Transformer teacher (pure functions).

Tensors and state dicts in, tensors and state dicts out; no fairseq state.  The mapping:

* encoder layers round-robin: student layer ``i`` <- teacher layer ``i mod N_teacher``;
* decoder layer ``j`` <- teacher decoder layer ``j`` (the student may not have more);
* a narrow decoder attention (self and cross) <- the chosen teacher head(s): their rows of
  q/k/v (weights and biases) and the matching columns of the output projection;
* the decoder FFN is dropped when the student has none;
* a rank-E output projection <- the truncated SVD of the teacher's output matrix,
  ``A = U_E S_E^½`` (V×E), ``B = V_E S_E^½`` (H×E);
* everything else (embeddings, positions, layer norms) is copied by name.

Parameter names are fairseq's, so pre-norm and post-norm teachers map alike.
"""

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

ATTENTIONS = ("self_attn", "encoder_attn")
PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def round_robin(n_student: int, n_teacher: int) -> List[int]:
    """Teacher layer for each student layer: ``i mod n_teacher``."""
    if n_teacher <= 0:
        raise ValueError(f"the teacher has no layers to map from (n_teacher={n_teacher})")
    return [i % n_teacher for i in range(n_student)]


def extract_heads(attn: Dict[str, Tensor], heads: Sequence[int], head_dim: int) -> Dict[str, Tensor]:
    """The sub-attention made of ``heads`` of a fairseq attention layer's parameters.

    ``attn`` maps ``q_proj.weight``, ``q_proj.bias``, ... ``out_proj.weight``, ``out_proj.bias``
    to the teacher's tensors.  Returns the same keys, narrowed to ``len(heads) * head_dim``.
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


@dataclass
class SVDFactors:
    A: Tensor  # V×E
    B: Tensor  # H×E
    singular_values: Tensor  # all of them, descending
    rank: int

    @property
    def energy(self) -> float:
        """Share of the squared Frobenius norm kept by the rank-E factors."""
        s2 = self.singular_values.double() ** 2
        return float(s2[: self.rank].sum() / s2.sum())


def svd_factors(W: Tensor, rank: int) -> SVDFactors:
    """Best rank-``rank`` factors of ``W`` (V×H): ``W ≈ A·Bᵀ`` (Eckart–Young)."""
    V, H = W.shape
    if not 0 < rank <= min(V, H):
        raise ValueError(f"output rank {rank} must be between 1 and min(V={V}, H={H}) = {min(V, H)}")
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    root = S[:rank].sqrt()
    A = (U[:, :rank] * root).to(W.dtype)
    B = (Vh[:rank].t() * root).to(W.dtype)
    return SVDFactors(A=A, B=B, singular_values=S.to(W.dtype), rank=rank)


@dataclass
class Mapping:
    """What :func:`distill_state_dict` did, for printing."""

    encoder_layers: List[int] = field(default_factory=list)
    decoder_layers: List[int] = field(default_factory=list)
    heads: Dict[str, List[int]] = field(default_factory=dict)
    svd: Optional[SVDFactors] = None
    dropped: List[str] = field(default_factory=list)  # teacher keys with no place in the student
    kept: List[str] = field(default_factory=list)  # student keys left as initialised

    def lines(self) -> List[str]:
        out = [f"encoder layer {i} <- teacher encoder layer {t}" for i, t in enumerate(self.encoder_layers)]
        for j, t in enumerate(self.decoder_layers):
            heads = ", ".join(f"{a} heads {h}" for a, h in self.heads.items() if a.startswith(f"{j}."))
            out.append(f"decoder layer {j} <- teacher decoder layer {t}" + (f" ({heads})" if heads else ""))
        if self.svd is not None:
            out.append(
                f"output projection <- rank-{self.svd.rank} SVD of the teacher's "
                f"{self.svd.A.shape[0]}x{self.svd.B.shape[0]} output matrix "
                f"(energy kept {100 * self.energy:.2f}%)"
            )
        if self.dropped:
            out.append(f"teacher parameters not used: {len(self.dropped)} ({_summarise(self.dropped)})")
        if self.kept:
            out.append(f"student parameters kept as initialised: {', '.join(self.kept)}")
        return out

    @property
    def energy(self) -> float:
        return self.svd.energy if self.svd is not None else 1.0


def _summarise(keys: List[str]) -> str:
    kinds = sorted({re.sub(r"\.\d+\.", ".N.", k) for k in keys})
    return ", ".join(kinds[:6]) + (", ..." if len(kinds) > 6 else "")


_LAYER = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.*)$")


def _count_layers(sd: Dict[str, Tensor], side: str) -> int:
    ids = {int(m.group(2)) for k in sd for m in [_LAYER.match(k)] if m and m.group(1) == side}
    return max(ids) + 1 if ids else 0


def _output_matrix(teacher: Dict[str, Tensor]) -> Tensor:
    for key in ("decoder.output_projection.weight", "decoder.embed_out", "decoder.embed_tokens.weight"):
        if key in teacher:
            return teacher[key]
    raise ValueError("the teacher has no output projection (decoder.output_projection.weight)")


def distill_state_dict(
    teacher: Dict[str, Tensor],
    student: Dict[str, Tensor],
    teacher_heads: int,
    head_index: int = 0,
) -> Tuple[Dict[str, Tensor], Mapping]:
    """The student's state dict, initialised from the teacher's.

    ``student`` gives the student's keys and shapes (e.g. a freshly built model's ``state_dict()``);
    ``teacher_heads`` is the teacher decoder's head count; a narrow student attention of ``k`` heads
    takes teacher heads ``head_index, ..., head_index + k - 1``.
    Raises ``ValueError`` naming both values when the two cannot be mapped.
    """
    mapping = Mapping()
    enc_t, dec_t = _count_layers(teacher, "encoder"), _count_layers(teacher, "decoder")
    enc_s, dec_s = _count_layers(student, "encoder"), _count_layers(student, "decoder")
    if dec_s > dec_t:
        raise ValueError(f"the student has {dec_s} decoder layers, more than the teacher's {dec_t}")
    mapping.encoder_layers = round_robin(enc_s, enc_t)
    mapping.decoder_layers = list(range(dec_s))
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if name in teacher and name in student and teacher[name].shape[1] != student[name].shape[1]:
            raise ValueError(
                f"embed dims differ: teacher {name} is {teacher[name].shape[1]}-wide, student's "
                f"{student[name].shape[1]}-wide"
            )
        if name in teacher and name in student and teacher[name].shape[0] != student[name].shape[0]:
            side = "source" if name.startswith("encoder") else "target"
            raise ValueError(
                f"dictionaries differ: the teacher's {side} dictionary has {teacher[name].shape[0]} entries, "
                f"the student's {student[name].shape[0]}: binarise the student's data with the teacher's "
                "dictionaries (fairseq-preprocess --srcdict/--tgtdict)"
            )

    out: Dict[str, Tensor] = {}
    used = set()

    def take(key: str, source: str, value: Optional[Tensor] = None):
        value = teacher[source] if value is None else value
        if value.shape != student[key].shape:
            raise ValueError(
                f"cannot map teacher {source} {tuple(teacher[source].shape)} to student {key} "
                f"{tuple(student[key].shape)}"
            )
        out[key] = value.detach().clone().to(student[key].dtype)
        used.add(source)

    attn_groups: Dict[str, Dict[str, str]] = {}
    for key in student:
        m = _LAYER.match(key)
        if m:
            side, i, rest = m.group(1), int(m.group(2)), m.group(3)
            t = mapping.encoder_layers[i] if side == "encoder" else mapping.decoder_layers[i]
            source = f"{side}.layers.{t}.{rest}"
            attn = rest.split(".")[0]
            if side == "decoder" and attn in ATTENTIONS and source in teacher and teacher[source].shape != student[key].shape:
                attn_groups.setdefault(f"{i}.{attn}", {})[rest[len(attn) + 1 :]] = key
                continue
            if source in teacher:
                take(key, source)
            elif key.endswith("version"):
                out[key] = student[key].clone()
            else:
                out[key] = student[key].clone()
                mapping.kept.append(key)
        elif key.startswith("decoder.output_projection.") and key not in teacher:
            continue  # low-rank factors, below
        elif key in teacher:
            take(key, key)
        else:
            out[key] = student[key].clone()
            if not (key.endswith("version") or key.endswith("_float_tensor")):
                mapping.kept.append(key)

    for group, keys in attn_groups.items():
        i, attn = group.split(".")
        t = mapping.decoder_layers[int(i)]
        prefix = f"decoder.layers.{t}.{attn}."
        student_dim = student[keys["q_proj.weight"]].shape[0]
        teacher_dim = teacher[prefix + "q_proj.weight"].shape[0]
        head_dim = teacher_dim // teacher_heads
        if student_dim % head_dim != 0:
            raise ValueError(
                f"the student's decoder attention dim ({student_dim}) is not a whole number of the teacher's "
                f"{head_dim}-dim heads ({teacher_heads} heads of {head_dim})"
            )
        k = student_dim // head_dim
        heads = [(head_index + n) % teacher_heads for n in range(k)]
        narrowed = extract_heads({p: teacher[prefix + p] for p in keys}, heads, head_dim)
        for p, key in keys.items():
            out[key] = narrowed[p].to(student[key].dtype)
            used.add(prefix + p)
        mapping.heads[group] = heads

    if "decoder.output_projection.up.weight" in student:
        W = _output_matrix(teacher)
        rank = student["decoder.output_projection.up.weight"].shape[1]
        if W.shape[0] != student["decoder.output_projection.up.weight"].shape[0]:
            raise ValueError(
                f"dictionaries differ: the teacher's output layer has {W.shape[0]} rows, the student's "
                f"{student['decoder.output_projection.up.weight'].shape[0]}"
            )
        mapping.svd = svd_factors(W.float(), rank)
        out["decoder.output_projection.up.weight"] = mapping.svd.A
        out["decoder.output_projection.down.weight"] = mapping.svd.B.t().contiguous()
        used.update(k for k in ("decoder.output_projection.weight", "decoder.embed_out") if k in teacher)

    mapping.dropped = sorted(k for k in teacher if k not in used and not k.endswith(("version", "_float_tensor")))
    return out, mapping


def mask_heads_except(attn: Dict[str, Tensor], head: int, num_heads: int) -> Dict[str, Tensor]:
    """A copy of an attention layer's parameters whose output only carries ``head``
    (the other heads' columns of ``out_proj.weight`` zeroed): for scoring heads one at a time."""
    out = {k: v.clone() for k, v in attn.items()}
    w = out["out_proj.weight"]
    head_dim = w.shape[1] // num_heads
    keep = torch.zeros(w.shape[1], dtype=torch.bool)
    keep[head * head_dim : (head + 1) * head_dim] = True
    w[:, ~keep] = 0
    return out
