"""No input sentence is dropped outside training (fairseq drops a last batch that is not a multiple of
--required-batch-size-multiple); training batches stay fairseq's; --tensorboard-logdir works."""

import re

import pytest
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from conftest import USER_DIR, binarise, run_cli, train

N_TEST = 101  # not a multiple of 8
SIZES = {"train": ("train", 203), "valid": ("val", N_TEST), "test": ("test_2016_flickr", N_TEST)}


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory, multi30k):
    return binarise(tmp_path_factory.mktemp("batching"), multi30k, SIZES)


def fairseq_batches(bin_dir, task_name, split, combine, **kwargs):
    """The batches (lists of sentence ids) that ``task_name``'s ``get_batch_iterator`` makes of ``split``
    as fairseq-train asks for them (train: loaded with combine=True; valid: combine=False)."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(bin_dir), "--user-dir", USER_DIR, "--task", task_name, "--arch", "mdn_tiny", "--max-tokens", "500"]
    )
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    task.load_dataset(split, combine=combine, epoch=1)
    itr = task.get_batch_iterator(
        dataset=task.dataset(split),
        max_tokens=500,
        max_positions=(1024, 1024),
        ignore_invalid_inputs=True,
        required_batch_size_multiple=8,
        seed=1,
        **kwargs,
    )
    return [[int(i) for i in batch] for batch in itr.frozen_batches]


@pytest.mark.slow
def test_training_batches_are_fairseqs_and_other_data_keeps_every_sentence(bin_dir):
    fairseq_train = fairseq_batches(bin_dir, "translation", "train", combine=True)
    fairseq_valid = fairseq_batches(bin_dir, "translation", "valid", combine=False)
    assert sum(map(len, fairseq_valid)) < N_TEST  # fairseq's drop, which these sizes trigger
    for task_name in ("translation_mdn", "translation_wd"):
        assert fairseq_batches(bin_dir, task_name, "train", combine=True) == fairseq_train
        valid = fairseq_batches(bin_dir, task_name, "valid", combine=False)
        assert sorted(i for batch in valid for i in batch) == list(range(N_TEST))
        # any other split, e.g. generating the training data for sequence-level KD (--gen-subset train)
        train_as_data = fairseq_batches(bin_dir, task_name, "train", combine=False)
        assert sorted(i for batch in train_as_data for i in batch) == list(range(SIZES["train"][1]))


TRAIN_FLAGS = ["--task", "translation_mdn", "--max-tokens", "500", "--max-epoch", "1", "--lr", "0.001",
               "--no-epoch-checkpoints"]  # fmt: skip
GENERATE = ["fairseq-generate", "bin", "--path", "ckpt/checkpoint_last.pt", "--gen-subset", "test", "--beam", "2",
            "--batch-size", "16", "--cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(bin_dir):
    """One epoch of mdn_tiny with --task translation_mdn and --tensorboard-logdir: (work, output)."""
    work = bin_dir.parent
    return work, train(work, "mdn_tiny", "ckpt", *TRAIN_FLAGS, "--tensorboard-logdir", "tb")


@pytest.mark.slow
def test_fairseq_train_logs_to_tensorboard_and_trains_on_fairseqs_batches(bin_dir, trained):
    work, out = trained
    assert "please install tensorboardx" not in out.lower()
    for split in ("train", "valid"):
        assert list((work / "tb" / split).glob("events.out.tfevents.*")), f"no tensorboard events for {split}"
    updates = int(re.findall(r"\| train \|.*?num_updates (\d+)", out)[-1])
    assert updates == len(fairseq_batches(bin_dir, "translation", "train", combine=True))


def generate(work, *flags):
    """fairseq-generate's hypothesis ids (sorted) and output."""
    out = run_cli([*GENERATE, "--user-dir", USER_DIR, *flags], work).out
    return sorted(int(m) for m in re.findall(r"^H-(\d+)\t", out, flags=re.M)), out


@pytest.mark.slow
def test_generate_outputs_every_sentence(trained):
    work, _ = trained
    # fairseq's own task drops the last batch (101 = 6 x 16 + 5) ...
    assert len(generate(work, "--task", "translation")[0]) < N_TEST
    # ... the plugin's do not, whatever --required-batch-size-multiple says
    for flags in (["--task", "translation_mdn"], ["--task", "translation_wd", "--required-batch-size-multiple", "8"]):
        assert generate(work, *flags)[0] == list(range(N_TEST)), flags


@pytest.mark.slow
def test_sentences_skipped_as_too_long_are_counted(trained):
    work, _ = trained
    ids, out = generate(
        work, "--task", "translation_mdn", "--max-source-positions", "14", "--skip-invalid-size-inputs-valid-test"
    )
    found = re.search(r"(\d+) of (\d+) sentences are in no batch and get no output", out)
    assert found, out[-2000:]
    skipped = int(found.group(1))
    assert int(found.group(2)) == N_TEST and 0 < skipped < N_TEST
    assert len(ids) == N_TEST - skipped
