"""Translation speed of fairseq models, side by side in one process (the library of ``mdn-bench``).

Every model (``--synthetic ARCH,...`` at the paper's dims, or ``--path CKPT`` trained checkpoints) is run
with every generator (``--generator fairseq,fast``: fairseq's ``SequenceGenerator`` and
:class:`~mdn_fairseq.fast_generator.FastSequenceGenerator`) on the same sentences; repeats alternate the
rows (each repeat starts one row later) so drift hits all alike.  Reported: sentences/s and target
tokens/s (median, min-max over repeats, after warm-up), parameters, peak memory and the speedup over the
first row (median and range of the per-repeat ratios), as a markdown table in the layout of the paper's
Table 4 and as JSON with the full setting.  Every row also gets its roofline figures: the arithmetic of
a pass (FLOPs counted from the module shapes and the actual lengths), the achieved GFLOP/s and its share
of the machine's peak, measured in the same run (a large matrix product per precision, same threads).
``--profile`` adds time per module (the paper's Table 1) and splits each row's gap to its arithmetic
limit into matrix products below peak and overhead; ``--int8``/``--bf16`` add reduced-precision rows,
``--ctranslate2`` CTranslate2's rows of the plain Transformers, ``--reference`` BLEU per row,
``--latency`` batch-1 p50/p95 ms per sentence; ``--sweep batch|beam|bpe|srclen`` repeats the
measurement over a range and writes CSV and a PNG.

Synthetic models are random-initialised and forced to a fixed output length (``--out-len``;
``min_len = max_len``, so EOS cannot come early; every hypothesis is checked).  Tokens counted per
sentence are those of the best hypothesis, EOS included (as ``fairseq-generate`` counts them).

Modules, in the order a run uses them:

- :mod:`.synthetic`: synthetic dictionaries, the minimal task with two of them, random-initialised
  models of any architecture (the tests build their models with it too);
- :mod:`.models`: the models of a run (synthetic, checkpoints) and their variants (int8, bf16/fp16);
- :mod:`.ct2`: CTranslate2's converted plain Transformers and their generator (``--ctranslate2``);
- :mod:`.inputs`: source sentences (random, or a text file) and fairseq batches;
- :mod:`.measure`: rows (a model with a generator) timed side by side, peak memory, the records;
- :mod:`.profile`: time per module group;
- :mod:`.flops`: the arithmetic of a pass per module group, from the model's modules;
- :mod:`.roofline`: the machine's peak per precision and each row's share of it, the gap split;
- :mod:`.quality`: BLEU per row (``--reference``);
- :mod:`.latency`: batch-1 latency (``--latency``);
- :mod:`.tables`: markdown tables, sweep CSV and plot;
- :mod:`.options`: the flags and their checks;
- :mod:`.runner`: :func:`run` (command line -> results dict), one table or a sweep.

Where new measurements go: another generator (an engine with fairseq's ``generate(models, sample)``) is an
entry of :data:`.measure.GENERATORS` (an engine with its own converted models: a :class:`.models.Model`
with an ``engine``, as :mod:`.ct2`); another precision a variant in :mod:`.models` (its peak in
:mod:`.roofline`); per-row figures fields of the records (:func:`.measure.row_records`,
:func:`.roofline.add_roofline`) that :mod:`.tables` prints; a new attention module an entry of
:data:`.flops.ATTENTION_PRODUCTS`; another sweep a key of :data:`.options.SWEEP_DEFAULTS` handled in
:func:`.runner.run_sweep`.
"""

from .runner import run, run_args

__all__ = ["run", "run_args"]
