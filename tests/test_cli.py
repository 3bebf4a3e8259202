"""End to end through fairseq's own console scripts, in subprocesses, on a slice of Multi30k."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_slices

USER_DIR = str(REPO / "mdn_fairseq")


def run(cmd, cwd, stdin=None, env=None):
    proc = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def hypotheses(output):
    return [line for line in output.splitlines() if line.startswith("H-")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, multi30k):
    """preprocess -> train 6 updates of mdn_tiny, saving every 3 updates."""
    work = tmp_path_factory.mktemp("e2e")
    write_slices(work, multi30k, {"train": ("train", 600), "valid": ("val", 100), "test": ("test_2016_flickr", 20)})
    run(
        [
            "fairseq-preprocess",
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--trainpref",
            "train",
            "--validpref",
            "valid",
            "--testpref",
            "test",
            "--destdir",
            "bin",
            "--workers",
            "1",
        ],
        work,
    )
    run(
        [
            "fairseq-train",
            "bin",
            "--user-dir",
            USER_DIR,
            "--arch",
            "mdn_tiny",
            "--optimizer",
            "adam",
            "--lr",
            "0.002",
            "--max-tokens",
            "2000",
            "--max-update",
            "6",
            "--save-dir",
            "ck",
            "--save-interval-updates",
            "3",
            "--no-epoch-checkpoints",
            "--num-workers",
            "0",
            "--seed",
            "1",
        ],
        work,
    )
    assert (work / "ck" / "checkpoint_1_3.pt").exists() and (work / "ck" / "checkpoint_last.pt").exists()
    return work


def test_generate_beam4(trained):
    out = run(
        [
            "fairseq-generate",
            "bin",
            "--user-dir",
            USER_DIR,
            "--path",
            "ck/checkpoint_last.pt",
            "--beam",
            "4",
            "--batch-size",
            "8",
            "--max-len-b",
            "20",
            "--required-batch-size-multiple",
            "1",
        ],
        trained,
    )
    assert len(hypotheses(out)) == 20
    assert "Generate test with beam=4: BLEU4" in out


def test_generate_ensemble_of_checkpoints(trained):
    out = run(
        [
            "fairseq-generate",
            "bin",
            "--user-dir",
            USER_DIR,
            "--path",
            "ck/checkpoint_1_3.pt:ck/checkpoint_last.pt",
            "--beam",
            "4",
            "--max-len-b",
            "20",
            "--batch-size",
            "8",
            "--required-batch-size-multiple",
            "1",
        ],
        trained,
    )
    assert len(hypotheses(out)) == 20


def test_interactive(trained):
    out = run(
        [
            "fairseq-interactive",
            "bin",
            "--user-dir",
            USER_DIR,
            "--path",
            "ck/checkpoint_last.pt",
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--beam",
            "4",
            "--max-len-b",
            "20",
        ],
        trained,
        stdin="A man in an orange hat .\nTwo dogs play in the snow .\n",
    )
    assert len(hypotheses(out)) == 2


def test_hub_interface(trained):
    from mdn_fairseq.models import MDNModel

    hub = MDNModel.from_pretrained(
        str(trained / "ck"), checkpoint_file="checkpoint_last.pt", data_name_or_path=str(trained / "bin")
    )
    out = hub.translate(["A man in an orange hat .", "Two dogs ."], beam=4, max_len_b=20)
    assert len(out) == 2 and all(isinstance(s, str) and s for s in out)


def test_user_dir_pointing_at_installed_package(trained, tmp_path):
    """A non-editable install of the package works as --user-dir from any folder."""
    target = tmp_path / "site"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--target",
            str(target),
            str(REPO),
        ],
        tmp_path,
    )
    installed = target / "mdn_fairseq"
    where = run(
        [
            sys.executable,
            "-c",
            "import argparse, sys; from fairseq import utils; "
            f"utils.import_user_module(argparse.Namespace(user_dir={str(installed)!r})); "
            "print(sys.modules['mdn_fairseq'].__file__)",
        ],
        tmp_path,
    )
    assert Path(where.strip().splitlines()[-1]).parent == installed
    out = run(
        [
            "fairseq-generate",
            str(trained / "bin"),
            "--user-dir",
            str(installed),
            "--path",
            str(trained / "ck" / "checkpoint_last.pt"),
            "--beam",
            "4",
            "--max-len-b",
            "20",
            "--batch-size",
            "8",
            "--required-batch-size-multiple",
            "1",
        ],
        tmp_path,
    )
    assert len(hypotheses(out)) == 20


def test_demo_script_quick(multi30k, tmp_path):
    """The README's demo, at --quick size: every stage runs and a few sentences get translated."""
    env = dict(os.environ, TRAIN_LINES="300", MAX_UPDATE="3")
    out = run(
        [
            "bash",
            str(REPO / "scripts" / "demo.sh"),
            "--quick",
            "--data",
            str(multi30k),
            "--work",
            str(tmp_path / "demo"),
        ],
        REPO,
        env=env,
    )
    assert "Generate test with beam=4: BLEU4" in out
    translations = [line for line in out.splitlines() if line.startswith("  de: ")]
    assert len(translations) == 3 and all(line[6:].strip() for line in translations), out[-2000:]


def test_demo_script_rejects_missing_data(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), "--data", str(tmp_path / "nope"), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "missing" in proc.stderr and "nope/train.en.gz" in proc.stderr and "--data" in proc.stderr
