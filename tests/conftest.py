import argparse
import gzip
import os
from pathlib import Path

import pytest
import torch

import mdn_fairseq  # noqa: F401  (registers the plugin)
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MDN_DATA", REPO.parent / "shared" / "data" / "multi30k"))


def make_dict(n: int) -> Dictionary:
    d = Dictionary()
    for i in range(n - len(d)):
        d.add_symbol(f"w{i}")
    return d


class FakeTask:
    """What fairseq's build_model needs from a task: the two dictionaries."""

    def __init__(self, src_vocab: int, tgt_vocab: int):
        self.source_dictionary = make_dict(src_vocab)
        self.target_dictionary = make_dict(tgt_vocab)


def build_model(arch: str, src_vocab: int = 50, tgt_vocab: int = 60, seed: int = 0, **overrides):
    """Build ``arch`` as fairseq does from the command line: arch defaults, then the model."""
    torch.manual_seed(seed)
    args = argparse.Namespace(arch=arch, **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    model = ARCH_MODEL_REGISTRY[arch].build_model(args, FakeTask(src_vocab, tgt_vocab))
    return model.eval()


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
