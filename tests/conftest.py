import gzip
import os
import subprocess
from pathlib import Path

import pytest
import torch

import mdn_fairseq  # noqa: F401  (registers the plugin)
from mdn_fairseq.bench.synthetic import build_synthetic, synthetic_task

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MDN_DATA", REPO.parent / "shared" / "data" / "multi30k"))


# the benchmark's synthetic dictionaries and minimal task: FakeTask(src_vocab, tgt_vocab) has the two dictionaries
FakeTask = synthetic_task


def build_model(arch: str, src_vocab: int = 50, tgt_vocab: int = 60, seed: int = 0, **overrides):
    """Build ``arch`` as fairseq does from the command line: arch defaults (``overrides`` win), then the
    model, random-initialised after ``torch.manual_seed(seed)``, in eval mode."""
    return build_synthetic(arch, src_vocab, tgt_vocab, seed=seed, **overrides)


def random_batch(model, bsz=3, src_len=7, tgt_len=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    src_v = len(model.encoder.dictionary)
    tgt_v = len(model.decoder.dictionary)
    src = torch.randint(4, src_v, (bsz, src_len), generator=g)
    lengths = torch.full((bsz,), src_len, dtype=torch.long)
    src[0, :2] = model.encoder.dictionary.pad()  # left-padded source, as fairseq batches it
    lengths[0] = src_len - 2
    prev = torch.randint(4, tgt_v, (bsz, tgt_len), generator=g)
    prev[:, 0] = model.decoder.dictionary.eos()
    return src, lengths, prev


@pytest.fixture(scope="session")
def multi30k():
    if not (DATA / "train.en.gz").exists():
        pytest.fail(f"Multi30k not found at {DATA}: set MDN_DATA to a folder with train.en.gz etc.")
    return DATA


def read_slice(path: Path, n: int, start: int = 0):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines[start : start + n]


def write_slices(work: Path, data: Path, sizes, langs=("en", "de")):
    """Write the first lines of Multi30k splits as ``work/{split}.{lang}``; sizes maps our split name to
    ``(Multi30k split, number of lines)``."""
    for split, (src_split, n) in sizes.items():
        for lang in langs:
            lines = read_slice(data / f"{src_split}.{lang}.gz", n)
            (work / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")


USER_DIR = str(REPO / "mdn_fairseq")


def run_cli(cmd, cwd=None, stdin=None, env=None, ok=True, timeout=600):
    """Run a console script (``fairseq-train``, ``mdn-init`` ...); with ``ok`` assert it exits 0 and show
    the end of its output otherwise.  Returns the ``CompletedProcess`` (``.out``: stdout + stderr)."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, input=stdin, capture_output=True, text=True, env=env, timeout=timeout
    )
    proc.out = proc.stdout + proc.stderr
    if ok:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.out[-4000:]}"
    return proc


def binarise(work: Path, data: Path, sizes, *preprocess_flags, langs=("en", "de")):
    """Multi30k slices (see :func:`write_slices`) -> ``work/bin`` with fairseq-preprocess."""
    write_slices(work, data, sizes, langs)
    prefs = [x for split in sizes for x in (f"--{split}pref", split)]
    run_cli(
        [
            "fairseq-preprocess",
            "--source-lang",
            langs[0],
            "--target-lang",
            langs[1],
            *prefs,
            "--destdir",
            "bin",
            "--workers",
            "1",
            *preprocess_flags,
        ],
        work,
    )
    return work / "bin"


def train(work: Path, arch: str, save_dir: str, *flags):
    """``fairseq-train bin --user-dir mdn_fairseq --arch ARCH --save-dir SAVE_DIR`` with quiet, fast CPU
    defaults (adam, no workers, seed 1) and ``flags`` after them (later flags win).  Returns the output."""
    return run_cli(
        [
            "fairseq-train",
            "bin",
            "--user-dir",
            USER_DIR,
            "--arch",
            arch,
            "--save-dir",
            save_dir,
            "--optimizer",
            "adam",
            "--num-workers",
            "0",
            "--seed",
            "1",
            *flags,
        ],
        work,
    ).out


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, multi30k):
    """A folder with ``bin/`` (Multi30k slices: train 1000, valid 50, test 60 pairs, en-de, raw text beside it)
    and ``ck/checkpoint_last.pt``: ``mdn_tiny`` trained 60 updates with ``--task translation_mdn``, once per
    session (the generation tests: fast_generator, ngram_blocking)."""
    work = tmp_path_factory.mktemp("trained_tiny")
    binarise(work, multi30k, {"train": ("train", 1000), "valid": ("val", 50), "test": ("test_2016_flickr", 60)})
    train_tiny(work)
    return work


def train_tiny(work: Path, *flags):
    """``mdn_tiny`` trained 60 updates with ``--task translation_mdn`` on ``work/bin`` into ``work/ck``
    (``flags`` come first, e.g. ``--dataset-impl raw``)."""
    train(work, "mdn_tiny", "ck", "--task", "translation_mdn", *flags, "--lr", "0.005", "--max-tokens", "4000",
          "--max-update", "60", "--no-epoch-checkpoints", "--disable-validation")  # fmt: skip
