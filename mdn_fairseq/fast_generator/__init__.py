"""A lean beam search for MDN-like models and their peers: fairseq's ``SequenceGenerator``, same output, less work.

With a one-layer, one-head decoder the decoder itself costs little; what is left is the deep
encoder and the per-step bookkeeping.  :class:`FastSequenceGenerator` runs fairseq's beam search
(``search.BeamSearch`` with ``SequenceGenerator``'s finalisation rules) on the model's own
modules, but

* runs the encoder on the non-pad tokens only (attention on the padded batch, masked as fairseq
  masks it), with in-place activations;
* projects the encoder output to cross-attention keys/values once per sentence and shares them
  across the beam (fairseq repeats the encoder output ``beam`` times and projects every copy);
* keeps self-attention keys/values in preallocated buffers, reordered in one ``index_select``
  per step (no per-step ``torch.cat``, no incremental-state dictionaries, no encoder-out reorder);
* computes the float32 linear layers on oneDNN with packed weights kept across batches (:mod:`.linear`);
* writes the log-probabilities into one reused buffer in a single fused ``log_softmax`` pass and
  ranks the beam candidates block-wise (:func:`top_k_shifted`) instead of by a full top-k.

Hypotheses, scores, positional scores, attention and alignments equal ``SequenceGenerator``'s with
the same settings (float32: scores to float rounding, ~1e-6; half precision and ``torch.autocast``: bit
for bit, see :mod:`.search`).  Besides fairseq's Transformer and MDN it decodes the paper's peers: AAN
(the average block over a running sum), SAN (attention weights and outputs shared within blocks of
layers) and CAN (the compressed sub-layer, encoder keys shared across the beam), and Table 7's
``aan_mdn``/``can_mdn`` (see :mod:`.support`).

Modules: :mod:`.options` (every ``GenerationConfig`` option: implemented, handed to fairseq's
generator, or refused), :mod:`.support` (which models, by which route), :mod:`.steps`, :mod:`.attention`
and :mod:`.compressed` (the model, one step at a time; :mod:`.incremental`: the same through the model's
own forward), :mod:`.search`
(the beam search), :mod:`.beams` (its hypotheses), :mod:`.topk` (candidate ranking), :mod:`.ngram`
(``--no-repeat-ngram-size``, also fixed in fairseq's generator), :mod:`.alignment` (``--print-alignment``).
"""

from .ngram import NGramBlocker, ban_repeated_ngrams, install_ngram_blocker
from .options import GenerationOptionError, check_refused, plan
from .search import FastSequenceGenerator, build_fallback
from .support import (
    decoder_unsupported_reason,
    encoder_unsupported_reason,
    incremental_unsupported_reason,
    packed_unsupported_reason,
)
from .topk import top_k_shifted


def unsupported_reason(models, args=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None):
    """Why ``task.build_generator(models, args, ...)`` must be fairseq's generator, or None; raises
    :class:`GenerationOptionError` for an option neither generator honours (see :func:`.options.plan`)."""
    return plan(models, args, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)


__all__ = [
    "FastSequenceGenerator",
    "GenerationOptionError",
    "NGramBlocker",
    "ban_repeated_ngrams",
    "build_fallback",
    "check_refused",
    "decoder_unsupported_reason",
    "encoder_unsupported_reason",
    "incremental_unsupported_reason",
    "install_ngram_blocker",
    "packed_unsupported_reason",
    "plan",
    "top_k_shifted",
    "unsupported_reason",
]
