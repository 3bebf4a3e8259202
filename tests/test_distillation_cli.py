"""Distillation through fairseq's CLI: translation_wd + kd_cross_entropy, mdn-init, mdn-seqkd."""

import os
import shutil
import subprocess

import pytest
import torch

from conftest import REPO, write_slices
from mdn_fairseq.checkpoint import load_checkpoint

USER_DIR = str(REPO / "mdn_fairseq")
TRAIN = ["--optimizer", "adam", "--lr", "0.002", "--max-tokens", "2000", "--no-epoch-checkpoints",
         "--num-workers", "0", "--seed", "1", "--log-format", "simple", "--log-interval", "1"]


def run(cmd, cwd, ok=True):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if ok:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out[-4000:]}"
    return proc.returncode, out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, multi30k):
    """Binarised slice of Multi30k and a 2+2-layer tiny Transformer teacher trained for 4 updates."""
    work = tmp_path_factory.mktemp("wd")
    write_slices(work, multi30k, {"train": ("train", 400), "valid": ("val", 60), "test": ("test_2016_flickr", 20)})
    run(["fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--trainpref", "train",
         "--validpref", "valid", "--testpref", "test", "--destdir", "bin", "--workers", "1",
         "--thresholdsrc", "2", "--thresholdtgt", "2"], work)
    run(["fairseq-train", "bin", "--user-dir", USER_DIR, "--arch", "mdn_transformer_tiny", "--max-update", "4",
         "--save-dir", "teacher", *TRAIN], work)
    return work


def student_cmd(save_dir, updates, *extra):
    return ["fairseq-train", "bin", "--user-dir", USER_DIR, "--task", "translation_wd",
            "--teacher-path", "teacher/checkpoint_last.pt", "--arch", "mdn_tiny", "--encoder-layers", "3",
            "--criterion", "kd_cross_entropy", "--kd-alpha", "0.5", "--max-update", str(updates),
            "--save-dir", save_dir, *TRAIN, *extra]


def test_student_trains_with_wd_and_kd_then_resumes_without_reinit(teacher):
    _, out = run(student_cmd("student", 2), teacher)
    assert "initialised the student from teacher/checkpoint_last.pt" in out
    assert "encoder layer 2 <- teacher encoder layer 0" in out and "rank-16 SVD" in out
    assert "kd_loss" in out and "nll_loss" in out and "ppl" in out
    state = load_checkpoint(teacher / "student" / "checkpoint_last.pt")
    keys = set(state["model"])
    assert not any("teacher" in k for k in keys)
    assert not any(k.startswith("decoder.layers.1.") for k in keys)  # the student's, not the teacher's
    assert "decoder.output_projection.up.weight" in keys
    # resuming: weights come from checkpoint_last.pt, the teacher does not initialise again
    _, out = run(student_cmd("student", 3), teacher)
    assert "not initialising it from the teacher" in out and "initialised the student from" not in out
    assert "Loaded checkpoint student/checkpoint_last.pt (epoch 1 @ 2 updates)" in out


def test_student_generates_without_the_teacher(teacher, tmp_path):
    run(student_cmd(str(tmp_path / "s"), 1), teacher)
    moved = tmp_path / "teacher.pt"
    shutil.copy(teacher / "teacher" / "checkpoint_last.pt", moved)
    _, out = run(["fairseq-generate", "bin", "--user-dir", USER_DIR, "--task", "translation_wd",
                  "--teacher-path", str(tmp_path / "nonexistent.pt"), "--path", str(tmp_path / "s" / "checkpoint_last.pt"),
                  "--beam", "4", "--batch-size", "8", "--required-batch-size-multiple", "1", "--max-len-b", "10"], teacher)
    assert sum(line.startswith("H-") for line in out.splitlines()) == 20


def test_one_step_changes_no_teacher_parameter(teacher):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cwd = os.getcwd()
    os.chdir(teacher)
    try:
        args = options.parse_args_and_arch(options.get_training_parser(), [
            "bin", "--task", "translation_wd", "--teacher-path", "teacher/checkpoint_last.pt",
            "--arch", "mdn_tiny", "--criterion", "kd_cross_entropy", "--save-dir", "nowhere", "--max-tokens", "500"])
        cfg = convert_namespace_to_omegaconf(args)
        task = tasks.setup_task(cfg.task)
        task.load_dataset("valid")
        model = task.build_model(cfg.model)
        criterion = task.build_criterion(cfg.criterion)
    finally:
        os.chdir(cwd)
    before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    teacher_params = {id(p) for p in task.teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    assert all(not p.requires_grad for p in task.teacher.parameters()) and not task.teacher.training
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    ds = task.dataset("valid")
    sample = ds.collater([ds[i] for i in range(8)])
    model.train()
    loss, _, log = criterion(model, sample)
    loss.backward()
    optimizer.step()
    assert log["kd_loss"].item() > 0
    after = task.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in task.teacher.parameters())


@pytest.mark.parametrize("choice", ["random:3", "best"])
def test_head_choices(teacher, choice, tmp_path):
    _, out = run(["mdn-init", "--teacher", "teacher/checkpoint_last.pt", "--arch", "mdn_tiny", "--wd-head", choice,
                  "--out", str(tmp_path / "s.pt")], teacher)
    assert "heads [" in out
    if choice == "best":
        assert "teacher head losses" in out


def test_mdn_init_then_finetune_and_generate(teacher, tmp_path):
    out_path = tmp_path / "student.pt"
    _, out = run(["mdn-init", "--teacher", "teacher/checkpoint_last.pt", "--arch", "mdn_tiny",
                  "--encoder-layers", "3", "--out", out_path], teacher)
    assert "encoder layer 2 <- teacher encoder layer 0" in out
    assert "decoder layer 0 <- teacher decoder layer 0 (0.self_attn heads [0], 0.encoder_attn heads [0])" in out
    assert "energy kept" in out and f"wrote {out_path}" in out
    _, out = run(["fairseq-generate", "bin", "--user-dir", USER_DIR, "--path", out_path, "--beam", "4",
                  "--batch-size", "8", "--required-batch-size-multiple", "1", "--max-len-b", "10"], teacher)
    assert sum(line.startswith("H-") for line in out.splitlines()) == 20
    _, out = run(["fairseq-train", "bin", "--user-dir", USER_DIR, "--arch", "mdn_tiny", "--encoder-layers", "3",
                  "--finetune-from-model", out_path, "--max-update", "1", "--save-dir", tmp_path / "ft", *TRAIN], teacher)
    assert f"loading pretrained model from {out_path}" in out


def test_mdn_init_refuses_bad_input_and_writes_nothing(teacher, tmp_path):
    out_path = tmp_path / "student.pt"
    code, out = run(["mdn-init", "--teacher", tmp_path / "missing.pt", "--arch", "mdn_tiny", "--out", out_path],
                    teacher, ok=False)
    assert code != 0 and "missing.pt: no such file" in out
    code, out = run(["mdn-init", "--teacher", "teacher/checkpoint_last.pt", "--arch", "mdn_tiny",
                     "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--out", out_path], teacher, ok=False)
    assert code != 0 and "embed dims differ" in out and "64" in out and "32" in out
    code, out = run(["mdn-init", "--teacher", "teacher/checkpoint_last.pt", "--arch", "mdn_tiny",
                     "--decoder-layers", "3", "--out", out_path], teacher, ok=False)
    assert code != 0 and "3 decoder layers, more than the teacher's 2" in out
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    code, out = run(["mdn-init", "--teacher", garbage, "--arch", "mdn_tiny", "--out", out_path], teacher, ok=False)
    assert code != 0 and "garbage.pt" in out
    assert not out_path.exists() and not list(tmp_path.glob(".mdn-init-*"))


def test_teacher_with_other_dictionary_is_refused(teacher, tmp_path):
    other = tmp_path / "other"
    run(["fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--trainpref", "train",
         "--validpref", "valid", "--destdir", other, "--workers", "1"], teacher)
    code, out = run(student_cmd(str(tmp_path / "s"), 1)[:1] + [str(other)] + student_cmd(str(tmp_path / "s"), 1)[2:],
                    teacher, ok=False)
    assert code != 0 and "dictionaries differ" in out and "--srcdict/--tgtdict" in out


def test_sequence_kd_corpus(teacher, tmp_path):
    out_dir = tmp_path / "kd"
    cmd = ["mdn-seqkd", "--teacher", "teacher/checkpoint_last.pt", "--data", "bin", "--out", out_dir,
           "--batch-size", "64", "--chunk-batches", "2", "--max-len-b", "5", "--with-original"]
    _, out = run(cmd, teacher)
    assert "800 pairs" in out and "original + distilled" in out
    src = (out_dir / "text" / "train.en").read_text().splitlines()
    tgt = (out_dir / "text" / "train.de").read_text().splitlines()
    assert len(src) == len(tgt) == 800
    assert (out_dir / "bin" / "train.en-de.de.bin").exists() and (out_dir / "bin" / "valid.en-de.en.idx").exists()
    assert (out_dir / "bin" / "dict.de.txt").read_text() == (teacher / "bin" / "dict.de.txt").read_text()
    # resumable: a re-run translates nothing again
    _, out = run(cmd, teacher)
    assert "chunk" not in out.split("pairs")[0]
    # a student trains on it
    run(["fairseq-train", out_dir / "bin", "--user-dir", USER_DIR, "--arch", "mdn_tiny", "--max-update", "1",
         "--save-dir", tmp_path / "s", *TRAIN], teacher)
