"""The lean beam search: fairseq ``SequenceGenerator``'s beam search and results, less per-step work.

:class:`FastSequenceGenerator` runs ``search.BeamSearch`` with ``SequenceGenerator``'s masking and
finalisation rules over a model runner (:func:`build_steps`: :class:`~.steps.TransformerSteps` for
fairseq's Transformer, MDN, AAN and SAN, :class:`~.compressed.CANSteps` for CAN -- the model, one step at
a time on the search's own buffers -- or, for a peer that the packed route does not replicate,
:class:`~.incremental.IncrementalSteps`, the model's own incremental forward, with the reason logged);
the candidates come from fairseq's log-probabilities (one fused ``log_softmax`` pass into a reused
buffer, and a per-row maximum to catch NaN rows) ranked block-wise (:mod:`.topk`) instead of one ``topk`` over each sentence's beam x vocab.
Each hypothesis carries what fairseq's carries: tokens, score, positional scores, ``attention`` (src_len, tgt_len) and, with ``print_alignment``, ``alignment``.

Half precision (a model in float16/bfloat16: ``--fp16``, ``--bf16``; or a float32 model run under
``torch.autocast``, as ``mdn-bench --bf16`` runs it).  The model runs in its dtype and the search in
float32, as fairseq's: log-probabilities are ``log_softmax`` of the float32 logits, beam and positional
scores float32 sums.  In half precision, though, the packed encoder and the shared cross-attention keys
of the packed route feed other shapes and memory layouts to the matrix products than fairseq does, and
half-precision kernels round those differently in the last bit (under autocast the packed buffers would
also mix dtypes); and half-precision logits tie often, with ``torch.topk`` ordering ties by the tensor it
ranks.  So in half precision the lean search runs the model's own encoder and incremental decoder
(:class:`~.incremental.IncrementalSteps`) and ranks exactly what fairseq ranks (``log_softmax`` plus
score over each sentence's beam x vocab, one ``topk``); only its bookkeeping stays lean.  "Same
results" in half precision is then even stricter than in float32 (where the lean computation agrees
to float rounding, ~1e-6): the hypotheses, scores, attention and alignments of fairseq's generator,
bit for bit, on the same device and torch build (tested on CPU in float16 and bfloat16, and under CPU
autocast to bfloat16).  Half-precision results are not portable across devices or torch builds (for
either generator): there, hypotheses may differ where scores differ by less than that rounding; compare BLEU.
"""

import logging
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .alignment import add_alignments
from .beams import Beams
from .compressed import CANSteps
from .incremental import IncrementalSteps
from .linear import PackedWeights, onednn_linears, resolve_backend
from .ngram import ban_repeated_ngrams, install_ngram_blocker
from .options import NGRAM_SIZE_1, GenerationOptionError
from .steps import TransformerSteps
from .support import is_can, models_unsupported_reason, packed_unsupported_reason
from .topk import top_k_shifted

logger = logging.getLogger(__name__)

_HALF = (torch.float16, torch.bfloat16)


def build_steps(model) -> Tuple[nn.Module, Optional[str]]:
    """The lean search's model runner for ``model`` (one the search decodes, see
    :func:`.support.decoder_unsupported_reason`) and why it is not the packed route, or None: the packed
    route (:class:`~.compressed.CANSteps` for CAN, else :class:`~.steps.TransformerSteps`) where
    :func:`.support.packed_unsupported_reason` allows, else the model's own forward
    (:class:`~.incremental.IncrementalSteps`)."""
    reason = packed_unsupported_reason(model)
    if reason is None:
        return (CANSteps if is_can(model) else TransformerSteps)(model), None
    return IncrementalSteps(model), reason


def reduced_precision(model) -> bool:
    """Whether ``model`` computes in half precision: float16/bfloat16 parameters, or ``torch.autocast``
    enabled for the device of its parameters (decided per batch: autocast is a context)."""
    param = next(model.parameters())
    if param.dtype in _HALF:
        return True
    try:
        return torch.is_autocast_enabled(param.device.type)
    except TypeError:  # torch < 2.4: no device argument
        if param.device.type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def build_fallback(models, tgt_dict, print_alignment=None, left_pad_target=False, **kwargs):
    """fairseq's generator for these settings (``SequenceGeneratorWithAlignment`` with ``print_alignment``),
    with a working n-gram blocker (:func:`.ngram.install_ngram_blocker`); fairseq validates the settings."""
    from fairseq.sequence_generator import SequenceGenerator, SequenceGeneratorWithAlignment

    if print_alignment:
        gen = SequenceGeneratorWithAlignment(
            models, tgt_dict, left_pad_target=left_pad_target, print_alignment=print_alignment, **kwargs
        )
    else:
        gen = SequenceGenerator(models, tgt_dict, **kwargs)
    return install_ngram_blocker(gen)


def kwargs_unsupported_reason(search_strategy=None, **kwargs) -> Optional[str]:
    """Why ``SequenceGenerator`` keyword arguments beyond those :class:`FastSequenceGenerator` names need
    fairseq's generator, or None."""
    if search_strategy is not None and type(search_strategy).__name__ != "BeamSearch":
        return f"search strategy {type(search_strategy).__name__}"
    if kwargs.get("match_source_len"):
        return "--match-source-len"
    if kwargs.get("lm_model") is not None:
        return "lm_model (language-model fusion)"
    extra = sorted(
        k for k, v in kwargs.items() if v is not None and k not in ("match_source_len", "lm_model", "lm_weight")
    )
    return f"extra generator options {extra}" if extra else None


class FastSequenceGenerator(nn.Module):
    """Beam search with fairseq ``SequenceGenerator``'s results for one fairseq Transformer(-like) model.

    Takes ``SequenceGenerator``'s arguments (and ``SequenceGeneratorWithAlignment``'s ``print_alignment``,
    ``left_pad_target``); the model and arguments must be ones it implements, else ``ValueError`` (see
    :func:`.support.decoder_unsupported_reason`, :func:`kwargs_unsupported_reason`).  ``fallback``: fairseq's
    generator with the same settings (built here if None, which validates the settings as fairseq does);
    batches with prefix tokens or constraints, and a model in training mode, are generated by it.
    ``linear_backend``: ``auto`` (default), ``onednn`` or ``torch``: whether the model's float32 linear layers
    compute on oneDNN while it generates (:mod:`.linear`; raises :class:`~mdn_fairseq.errors.MDNError` for
    an unknown value, or ``onednn`` where torch has no oneDNN).
    """

    def __init__(
        self,
        models,
        tgt_dict,
        beam_size=1,
        max_len_a=0,
        max_len_b=200,
        max_len=0,
        min_len=1,
        normalize_scores=True,
        len_penalty=1.0,
        unk_penalty=0.0,
        temperature=1.0,
        no_repeat_ngram_size=0,
        eos=None,
        symbols_to_strip_from_output=None,
        tokens_to_suppress=(),
        print_alignment=None,
        left_pad_target=False,
        fallback=None,
        linear_backend="auto",
        **fallback_kwargs,
    ):
        super().__init__()
        reason = models_unsupported_reason(models) or kwargs_unsupported_reason(**fallback_kwargs)
        if reason is not None:
            raise ValueError(f"FastSequenceGenerator cannot decode this: {reason}; use fairseq's SequenceGenerator")
        if no_repeat_ngram_size == 1:
            raise GenerationOptionError(NGRAM_SIZE_1)
        settings = dict(
            beam_size=beam_size,
            max_len_a=max_len_a,
            max_len_b=max_len_b,
            max_len=max_len,
            min_len=min_len,
            normalize_scores=normalize_scores,
            len_penalty=len_penalty,
            unk_penalty=unk_penalty,
            temperature=temperature,
            no_repeat_ngram_size=no_repeat_ngram_size,
            eos=eos,
            symbols_to_strip_from_output=symbols_to_strip_from_output,
            tokens_to_suppress=tokens_to_suppress,
            **fallback_kwargs,
        )
        if fallback is None:
            fallback = build_fallback(models, tgt_dict, print_alignment, left_pad_target, **settings)
        self._fallback = install_ngram_blocker(fallback)
        self.model = models[0]
        # float32 linear layers on oneDNN (see .linear): "auto", "onednn" or "torch"
        self.linear_backend = resolve_backend(linear_backend)
        self.packed_weights = PackedWeights()  # oneDNN's packed copies of the weights, kept across batches
        self.steps, self.decoder_fallback_reason = build_steps(self.model)
        if self.decoder_fallback_reason is not None:
            logger.info(
                "lean beam search: %s runs its own incremental decoder (%s)",
                type(self.model).__name__,
                self.decoder_fallback_reason,
            )
        # for half precision: the model's own forward
        self.exact_steps = self.steps if isinstance(self.steps, IncrementalSteps) else IncrementalSteps(self.model)
        self.tgt_dict = tgt_dict
        self.pad, self.unk = tgt_dict.pad(), tgt_dict.unk()
        self.eos = tgt_dict.eos() if eos is None else eos
        self.symbols_to_strip_from_output = (
            symbols_to_strip_from_output.union({self.eos}) if symbols_to_strip_from_output is not None else {self.eos}
        )
        self.suppress = [tgt_dict.index(t) for t in tokens_to_suppress]
        self.vocab_size = len(tgt_dict)
        self.beam_size = min(beam_size, self.vocab_size - 1)  # pad is never chosen
        self.max_len_a, self.max_len_b, self.min_len = max_len_a, max_len_b, min_len
        self.max_len = max_len or self.model.max_decoder_positions()
        self.normalize_scores, self.len_penalty = normalize_scores, len_penalty
        self.unk_penalty, self.temperature = unk_penalty, temperature
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.print_alignment, self.left_pad_target = print_alignment, left_pad_target
        self._handed_over = set()
        self.model.eval()

    @classmethod
    def from_args(cls, models, tgt_dict, args, **kwargs):
        """Built from fairseq's generation config as ``FairseqTask.build_generator`` builds its generator;
        ``kwargs``: extra ``SequenceGenerator`` arguments (and ``fallback``)."""
        settings = dict(
            beam_size=getattr(args, "beam", 5),
            max_len_a=getattr(args, "max_len_a", 0),
            max_len_b=getattr(args, "max_len_b", 200),
            min_len=getattr(args, "min_len", 1),
            normalize_scores=not getattr(args, "unnormalized", False),
            len_penalty=getattr(args, "lenpen", 1),
            unk_penalty=getattr(args, "unkpen", 0),
            temperature=getattr(args, "temperature", 1.0),
            no_repeat_ngram_size=getattr(args, "no_repeat_ngram_size", 0),
            print_alignment=getattr(args, "print_alignment", None) or None,
        )
        settings.update(kwargs)
        return cls(models, tgt_dict, **settings)

    @property
    def fallback(self):
        """fairseq's generator with this generator's settings."""
        return self._fallback

    # the lean modules, for profilers (mdn_fairseq.bench) and tests
    @property
    def self_attns(self):
        return self.steps.self_attns

    @property
    def cross_attns(self):
        return self.steps.cross_attns

    @property
    def enc_attns(self):
        return self.steps.enc_attns

    @enc_attns.setter
    def enc_attns(self, value):
        self.steps.enc_attns = value

    @property
    def encoder_fallback_reason(self) -> Optional[str]:
        """Why the encoder runs its own forward instead of the lean packed pass, or None."""
        if self.decoder_fallback_reason is not None:
            return f"the decoder too: {self.decoder_fallback_reason}"
        return self.steps.encoder_fallback_reason

    def cuda(self):
        self.model.cuda()
        return self

    @torch.no_grad()
    def forward(self, sample, prefix_tokens=None, bos_token=None):
        return self.generate([self.model], sample, prefix_tokens=prefix_tokens, bos_token=bos_token)

    def generate(
        self, models, sample: Dict[str, Dict[str, Tensor]], prefix_tokens=None, constraints=None, bos_token=None
    ) -> List[List[Dict[str, Tensor]]]:
        """Translate a batch, as ``SequenceGenerator.generate``: per sentence, ``beam`` hypotheses best
        first, each ``{"tokens": (len,), "score": (), "positional_scores": (len,), "attention":
        (src_len, len), "alignment": ...}`` (scores in nats, float32; ``len`` counts the final EOS)."""
        reason = (
            "prefix tokens"
            if prefix_tokens is not None
            else "constraints"
            if constraints is not None
            else "input without src_tokens"
            if "src_tokens" not in sample["net_input"]
            else "a model in training mode (dropout)"
            if self.model.training
            else None
        )
        if reason is not None:
            if reason not in self._handed_over:
                self._handed_over.add(reason)
                logger.info("lean beam search: %s, generating with fairseq's %s", reason, type(self.fallback).__name__)
            return self.fallback.generate(
                models, sample, prefix_tokens=prefix_tokens, constraints=constraints, bos_token=bos_token
            )
        # no_grad as fairseq, not inference_mode: callers edit the results in place (fairseq-generate
        # divides positional scores), and modules may cache tensors made here (positional tables)
        onednn = self.linear_backend == "onednn"
        with torch.no_grad(), onednn_linears(self.model, onednn, self.packed_weights):
            return self._generate(sample, bos_token)

    # -----------------------------------------------------------------------------------------

    def _generate(self, sample, bos_token: Optional[int]):
        src_tokens = sample["net_input"]["src_tokens"]
        bsz, src_len = src_tokens.size()[:2]
        beam = self.beam_size
        max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
        if self.min_len > max_len:  # SequenceGenerator asserts it
            raise AssertionError(
                f"--min-len ({self.min_len}) cannot be larger than the maximum length ({max_len}): "
                "lower --min-len or raise --max-len-a/--max-len-b"
            )
        half = reduced_precision(self.model)  # see the module docstring
        steps = self.exact_steps if half else self.steps
        state = steps.start(sample["net_input"], beam, max_len, self.eos if self.eos != self.pad else self.pad + 1)
        start = self.eos if bos_token is None else bos_token
        beams = Beams.start(bsz, beam, max_len, state.src_len, start, self.pad, src_tokens.device)
        finalized: List[List[Dict[str, Tensor]]] = [[] for _ in range(bsz)]
        bbsz_offsets = (torch.arange(bsz, device=src_tokens.device) * beam).unsqueeze(1)
        cand_offsets = torch.arange(2 * beam, device=src_tokens.device)  # candidates per sentence, at most
        for step in range(max_len + 1):
            logits, attn = steps.step(beams.tokens[:, : step + 1], step, state)
            beams.record(step, attn)
            cand_scores, cand_indices, cand_beams = self._candidates(logits, beams, step, max_len, exact=half)
            cand_bbsz_idx = cand_beams + bbsz_offsets
            eos_mask = cand_indices.eq(self.eos) & cand_scores.ne(-math.inf)
            eos_top = eos_mask[:, :beam]
            done: List[int] = []
            if bool(eos_top.any()):
                bbsz_idx, eos_scores = cand_bbsz_idx[:, :beam][eos_top], cand_scores[:, :beam][eos_top]
                len_penalty = self.len_penalty if self.normalize_scores else None
                done = beams.finalize(step, bbsz_idx, eos_scores, finalized, beam, self.eos, len_penalty, max_len)
                if len(done) == len(beams.sent_ids):
                    break
            if step >= max_len:
                raise RuntimeError(f"beam search reached step {step} with {len(beams.sent_ids)} unfinished sentences")
            if done:
                keep = sorted(set(range(len(beams.sent_ids))) - set(done))
                batch_idxs = torch.tensor(keep, device=src_tokens.device)
                beams.drop_sentences(keep)
                eos_mask, cand_scores = eos_mask[batch_idxs], cand_scores[batch_idxs]
                cand_indices, cand_bbsz_idx = cand_indices[batch_idxs], cand_bbsz_idx[batch_idxs]
                bbsz_offsets = bbsz_offsets[: len(keep)]
                steps.drop_sentences(state, batch_idxs)
            # the first `beam` candidates that do not end in EOS continue (fairseq's active_mask)
            n_cand = eos_mask.size(1)
            _, active_hypos = torch.topk(eos_mask.long() * n_cand + cand_offsets[:n_cand], k=beam, largest=False)
            active_bbsz_idx = cand_bbsz_idx.gather(1, active_hypos).view(-1)  # rows before removal
            n_old = beams.tokens.size(0)
            next_tokens, next_scores = cand_indices.gather(1, active_hypos), cand_scores.gather(1, active_hypos)
            beams.advance(step, active_bbsz_idx, next_tokens.view(-1), next_scores.view(-1), self.pad)
            steps.reorder(state, active_bbsz_idx, n_old, step)
        for i, hypos in enumerate(finalized):  # best first, as fairseq sorts them
            order = torch.sort(torch.tensor([float(h["score"].item()) for h in hypos]), descending=True)[1]
            finalized[i] = [hypos[j] for j in order]
        if self.print_alignment:
            add_alignments(
                finalized, src_tokens, beam, self.pad, self.eos, str(self.print_alignment), self.left_pad_target
            )
        return finalized

    def _mask(self, lprobs: Tensor, tokens: Tensor, step: int, max_len: int) -> Tensor:
        """fairseq's per-step edits of the log-probabilities (n, V), in place."""
        lprobs[:, self.pad] = -math.inf
        if self.unk_penalty:
            lprobs[:, self.unk] -= self.unk_penalty
        if step >= max_len:
            eos_col = lprobs[:, self.eos].clone()
            lprobs.fill_(-math.inf)
            lprobs[:, self.eos] = eos_col
        elif step < self.min_len:
            lprobs[:, self.eos] = -math.inf
        if self.suppress:
            lprobs[:, self.suppress] = -math.inf
        if self.no_repeat_ngram_size > 0:
            ban_repeated_ngrams(tokens, lprobs, step, self.no_repeat_ngram_size)
        return lprobs

    def _candidates(self, logits: Tensor, beams: Beams, step: int, max_len: int, exact: bool):
        """``search.BeamSearch.step``: the top ``2*beam`` (score, token, beam) per sentence, each (bsz, 2*beam).
        The log-probabilities are fairseq's (``log_softmax`` of the float32 logits, NaN set to -inf), written
        into the beams' reusable scratch (one fused pass over the n x V logits, and a per-row maximum to find rows
        with NaN); in float32 the top of
        ``score + log-probability`` comes from :func:`.topk.top_k_shifted`, in half precision from one
        ``torch.topk`` over each sentence's beam x vocab, as fairseq ranks them."""
        if self.temperature != 1.0:
            logits = logits.div_(self.temperature)  # in the model's dtype, as fairseq divides
        logits = logits.float()
        n, vocab = logits.shape
        bsz, beam = n // self.beam_size, self.beam_size
        if beams.scratch is None:
            beams.scratch = torch.empty_like(logits)
        lprobs = torch.log_softmax(logits, dim=-1, out=beams.scratch[:n])
        if bool(torch.isnan(lprobs.amax(dim=1)).any()):  # a NaN in a row makes that row's maximum NaN
            lprobs[lprobs != lprobs] = -math.inf
        lprobs = self._mask(lprobs, beams.tokens, step, max_len).view(bsz, beam, vocab)
        if step == 0:  # all beams are alike: the first one only
            offset, lprobs = lprobs.new_zeros(bsz, 1), lprobs[:, :1]
        else:
            offset = beams.scores[:, step - 1].view(bsz, beam)
        k = min(2 * beam, lprobs.size(1) * vocab - 1)
        if exact:
            cand_scores, flat = torch.topk((lprobs + offset.unsqueeze(2)).view(bsz, -1), k)
        else:
            cand_scores, flat = top_k_shifted(lprobs, offset, k)
        return cand_scores, flat % vocab, torch.div(flat, vocab, rounding_mode="trunc")
