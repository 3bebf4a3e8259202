"""Batching that never drops an input sentence outside training, for the plugin's tasks.

fairseq's ``data_utils.batch_by_size`` discards the last batch when its size is not a multiple of
``--required-batch-size-multiple`` (default 8): ``fairseq-generate`` on 1014 sentences prints 1008
hypotheses, and ``--eval-bleu``/validation losses leave the same sentences out.  :class:`KeepEverySentence`
keeps fairseq's batching for the training data of ``fairseq-train`` (the split it loads with
``combine=True``: batches, updates and results are unchanged) and batches every other dataset
(validation, ``fairseq-generate``/``-interactive``/``-validate`` on any ``--gen-subset``, the hub) with a
multiple of 1, whatever the flags.  A sentence that still gets no batch (too long, skipped by
``--skip-invalid-size-inputs-valid-test``) is reported in a warning that counts them.
"""

import inspect
import logging

from fairseq.tasks import FairseqTask

logger = logging.getLogger(__name__)

_GET_BATCH_ITERATOR = inspect.signature(FairseqTask.get_batch_iterator)


def training_split(task) -> str:
    """The split ``fairseq-train`` trains on: ``--train-subset`` through the task config when it
    resolves there, else fairseq's default ``train``."""
    try:
        return str(task.cfg.train_subset)
    except Exception:  # a task config outside fairseq's full config: the interpolation does not resolve
        return "train"


class KeepEverySentence:
    """Mixin for a ``FairseqTask`` (put it before the fairseq task class): ``get_batch_iterator`` over
    anything but the training data uses ``required_batch_size_multiple=1``, so that no sentence is
    dropped, and warns with the count when sentences are filtered out."""

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        """fairseq's ``load_dataset``; remembers the split ``fairseq-train`` loads for training."""
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if combine and split == training_split(self):
            self._training_data = self.datasets[split]

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """fairseq's ``get_batch_iterator`` (same arguments and result, an ``EpochBatchIterator``); for
        a dataset other than the training data, with a batch-size multiple of 1."""
        call = _GET_BATCH_ITERATOR.bind(self, dataset, *args, **kwargs)
        if dataset is getattr(self, "_training_data", None):
            return super().get_batch_iterator(*call.args[1:], **call.kwargs)
        call.arguments["required_batch_size_multiple"] = 1
        cached = self.dataset_to_epoch_iter.get(dataset)
        epoch_iter = super().get_batch_iterator(*call.args[1:], **call.kwargs)
        if epoch_iter is not cached:
            warn_unbatched(dataset, epoch_iter.frozen_batches)
        return epoch_iter


def warn_unbatched(dataset, batches) -> int:
    """Log a warning when ``batches`` (lists of indices) leave sentences of ``dataset`` out; returns
    how many they leave out."""
    total, batched = len(dataset), sum(len(b) for b in batches)
    if batched < total:
        logger.warning(
            "%d of %d sentences are in no batch and get no output: longer than the model's or the "
            "--max-source-positions/--max-target-positions limits, and skipped by "
            "--skip-invalid-size-inputs-valid-test (raise the limits to keep them, or drop that flag "
            "to stop with an error naming the first one)",
            total - batched,
            total,
        )
    return total - batched
