"""Distillation through fairseq's CLI: translation_wd + kd_cross_entropy, mdn-init, mdn-seqkd."""

import copy
import os
import random
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import USER_DIR, binarise, run_cli, train
from mdn_fairseq.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TRAIN = ["--lr", "0.002", "--max-tokens", "2000", "--no-epoch-checkpoints", "--log-format", "simple",
         "--log-interval", "1"]  # fmt: skip
TEACHER = "teacher/checkpoint_last.pt"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, multi30k):
    """Binarised slice of Multi30k and a 2+2-layer tiny Transformer teacher (4 heads of 16) trained for
    4 updates."""
    work = tmp_path_factory.mktemp("wd")
    sizes = {"train": ("train", 400), "valid": ("val", 60), "test": ("test_2016_flickr", 20)}
    binarise(work, multi30k, sizes, "--thresholdsrc", "2", "--thresholdtgt", "2")
    train(work, "mdn_transformer_tiny", "teacher", "--max-update", "4", *TRAIN)
    return work


def student_cmd(save_dir, updates, *extra, data="bin"):
    return ["fairseq-train", data, "--user-dir", USER_DIR, "--task", "translation_wd", "--teacher-path", TEACHER,
            "--arch", "mdn_tiny", "--encoder-layers", "3", "--criterion", "kd_cross_entropy", "--kd-alpha", "0.5",
            "--max-update", str(updates), "--save-dir", save_dir, "--optimizer", "adam", "--num-workers", "0",
            "--seed", "1", *TRAIN, *extra]  # fmt: skip


def test_student_trains_with_wd_and_kd_then_resumes_without_reinit(teacher):
    out = run_cli(student_cmd("student", 2, "--report-accuracy"), teacher).out
    assert f"initialised the student from {TEACHER}" in out
    assert "encoder layer 2 <- teacher encoder layer 0" in out and "rank-16 SVD" in out
    assert "kd_loss" in out and "nll_loss" in out and "ppl" in out and "accuracy" in out
    state = load_checkpoint(teacher / "student" / "checkpoint_last.pt")
    keys = set(state["model"])
    assert not any("teacher" in k for k in keys)
    assert not any(k.startswith("decoder.layers.1.") for k in keys)  # the student's, not the teacher's
    assert "decoder.output_projection.A.weight" in keys
    # resuming: weights come from checkpoint_last.pt, the teacher does not initialise again
    out = run_cli(student_cmd("student", 3), teacher).out
    assert "not initialising it from the teacher" in out and "initialised the student from" not in out
    assert "Loaded checkpoint student/checkpoint_last.pt (epoch 1 @ 2 updates)" in out


def test_student_generates_without_the_teacher(teacher, tmp_path):
    run_cli(student_cmd(str(tmp_path / "s"), 1), teacher)
    shutil.copy(teacher / TEACHER, tmp_path / "teacher.pt")
    out = run_cli(["fairseq-generate", "bin", "--user-dir", USER_DIR, "--task", "translation_wd",
                   "--teacher-path", tmp_path / "nonexistent.pt", "--path", tmp_path / "s" / "checkpoint_last.pt",
                   "--beam", "4", "--batch-size", "8", "--required-batch-size-multiple", "1", "--max-len-b", "10"],
                  teacher).out  # fmt: skip
    assert sum(line.startswith("H-") for line in out.splitlines()) == 20


def setup_wd_task(teacher, *flags):
    """The translation_wd task, student and criterion as fairseq-train builds them, in this process."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cwd = os.getcwd()
    os.chdir(teacher)
    try:
        args = options.parse_args_and_arch(options.get_training_parser(), [
            "bin", "--task", "translation_wd", "--teacher-path", TEACHER, "--arch", "mdn_tiny",
            "--criterion", "kd_cross_entropy", "--save-dir", "nowhere", "--max-tokens", "500", *flags])  # fmt: skip
        cfg = convert_namespace_to_omegaconf(args)
        task = tasks.setup_task(cfg.task)
        task.load_dataset("valid")
        return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    finally:
        os.chdir(cwd)


def test_one_step_changes_no_teacher_parameter(teacher):
    task, model, criterion = setup_wd_task(teacher)
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


def chosen_heads(out):
    """The teacher heads of every narrow attention, from mdn-init's printed mapping."""
    return {int(h) for h in re.findall(r"_attn heads \[(\d+)\]", out)}


def in_process(main, teacher_dir, capsys, argv):
    """A console script's ``main(argv)`` run in this process (fairseq is imported already), in
    ``teacher_dir``: returns (exit code, stdout + stderr)."""
    cwd = os.getcwd()
    os.chdir(teacher_dir)
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit:
        code = exit.code
    finally:
        os.chdir(cwd)
    out = capsys.readouterr()
    return code, out.out + out.err


def mdn_init(teacher_dir, capsys, *flags):
    """``mdn-init --teacher TEACHER --arch mdn_tiny FLAGS``, in this process."""
    from mdn_fairseq.cli import init

    return in_process(init.main, teacher_dir, capsys, ["--teacher", TEACHER, "--arch", "mdn_tiny", *flags])


def test_head_random_picks_the_seeded_draw(teacher, tmp_path, capsys):
    code, out = mdn_init(teacher, capsys, "--wd-head", "random", "--wd-head-seed", "3", "--out", tmp_path / "s.pt")
    assert code == 0, out
    head = random.Random(3).randrange(4)
    assert chosen_heads(out) == {head} and f"--wd-head random --wd-head-seed 3 -> head {head}" in out


def test_student_checkpoint_of_plugin_0_1_loads(teacher, tmp_path, capsys):
    """A student saved by plugin 0.1 (low-rank factors as ``up``/``down``, ``wd_head: index:0`` in its task
    config) loads through fairseq with its task (as mdn-bench --path does) and computes what it did."""
    from fairseq import checkpoint_utils

    assert mdn_init(teacher, capsys, "--out", tmp_path / "new.pt")[0] == 0
    state = load_checkpoint(tmp_path / "new.pt")
    sd = state["model"]
    sd["decoder.output_projection.down.weight"] = sd.pop("decoder.output_projection.B.weight")
    sd["decoder.output_projection.up.weight"] = sd.pop("decoder.output_projection.A.weight")
    del sd["decoder.output_projection.version"]
    state["cfg"]["task"]["wd_head"] = "index:0"
    del state["cfg"]["task"]["wd_head_index"], state["cfg"]["task"]["wd_head_seed"]
    torch.save(state, tmp_path / "old.pt")
    overrides = {"data": str(teacher / "bin"), "teacher_path": None}
    (new,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "new.pt")], arg_overrides=overrides)
    (old,), cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(tmp_path / "old.pt")], arg_overrides=overrides
    )
    assert cfg.task.wd_head == "index" and cfg.task.wd_head_index == 0
    task.load_dataset("valid")
    sample = task.dataset("valid").collater([task.dataset("valid")[i] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(old.eval()(**sample["net_input"])[0], new.eval()(**sample["net_input"])[0])


def independent_head_losses(teacher_dir, n_sentences=64):
    """Per head: the teacher's NLL (nats/token) on the first validation sentences with every attention of
    its first decoder layer keeping only that head (other heads' output columns zeroed here, by hand)."""
    task, model, _ = setup_wd_task(teacher_dir, "--no-wd-init")
    ds = task.dataset("valid")
    sample = ds.collater([ds[i] for i in range(min(n_sentences, len(ds)))])
    losses = []
    for h in range(4):
        single = copy.deepcopy(task.teacher)
        layer = single.decoder.layers[0]
        with torch.no_grad():
            for attn in (layer.self_attn, layer.encoder_attn):
                others = torch.ones(attn.out_proj.weight.shape[1], dtype=torch.bool)
                others[h * 16 : (h + 1) * 16] = False
                attn.out_proj.weight[:, others] = 0
            logits = single(**sample["net_input"])[0]
        pad = task.target_dictionary.pad()
        losses.append(F.cross_entropy(logits.transpose(1, 2), sample["target"], ignore_index=pad).item())
    return losses


def test_head_best_picks_the_lowest_measured_loss(teacher, tmp_path, capsys):
    code, out = mdn_init(teacher, capsys, "--wd-head", "best", "--out", tmp_path / "s.pt")
    assert code == 0, out
    expected = independent_head_losses(teacher)
    reported = re.search(r"teacher head losses \(nats/token\): (.*) -> head (\d+)", out)
    assert reported, out
    assert [float(x.split(": ")[1]) for x in reported.group(1).split(", ")] == pytest.approx(expected, abs=2e-4)
    best = min(range(4), key=expected.__getitem__)
    assert sorted(expected)[1] - sorted(expected)[0] > 1e-3  # a clear winner, not a tie
    assert int(reported.group(2)) == best and chosen_heads(out) == {best}


def test_mdn_init_then_finetune_and_generate(teacher, tmp_path):
    out_path = tmp_path / "student.pt"
    out = run_cli(["mdn-init", "--teacher", TEACHER, "--arch", "mdn_tiny", "--encoder-layers", "3",
                   "--out", out_path], teacher).out  # fmt: skip
    assert "encoder layer 2 <- teacher encoder layer 0" in out
    assert "decoder layer 0 <- teacher decoder layer 0 (0.self_attn heads [0], 0.encoder_attn heads [0])" in out
    assert "energy kept" in out and f"wrote {out_path}" in out
    out = run_cli(
        [
            "fairseq-generate",
            "bin",
            "--user-dir",
            USER_DIR,
            "--path",
            out_path,
            "--beam",
            "4",
            "--batch-size",
            "8",
            "--required-batch-size-multiple",
            "1",
            "--max-len-b",
            "10",
        ],
        teacher,
    ).out
    assert sum(line.startswith("H-") for line in out.splitlines()) == 20
    out = train(teacher, "mdn_tiny", tmp_path / "ft", "--encoder-layers", "3", "--finetune-from-model", out_path,
                "--max-update", "1", *TRAIN)  # fmt: skip
    assert f"loading pretrained model from {out_path}" in out


def test_mdn_init_refuses_bad_input_and_writes_nothing(teacher, tmp_path, capsys):
    out_path = tmp_path / "student.pt"

    def refused(*flags):
        code, out = mdn_init(teacher, capsys, "--out", out_path, *flags)
        assert code == 2 and "Traceback" not in out, out
        return out

    assert f"mdn-init: --teacher {tmp_path / 'missing.pt'}: no such file" in refused(
        "--teacher", tmp_path / "missing.pt"
    )
    out = refused("--encoder-embed-dim", "32", "--decoder-embed-dim", "32")
    assert "mdn-init: embed dims differ" in out and "64" in out and "32" in out
    assert "3 decoder layers, more than the teacher's 2" in refused("--decoder-layers", "3")
    assert "--wd-head-index 4: the teacher's decoder has 4 heads" in refused("--wd-head-index", "4")
    assert "invalid choice: 'index:0'" in refused("--wd-head", "index:0")  # the spelling before 0.2
    assert "mdn-init: --output-rank" in refused("--output-rank", "100")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert "garbage.pt" in refused("--teacher", garbage)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pt"]  # no student, no temporary file


def test_teacher_with_other_dictionary_is_refused(teacher, tmp_path):
    other = tmp_path / "other"
    run_cli(["fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--trainpref", "train",
             "--validpref", "valid", "--destdir", other, "--workers", "1"], teacher)  # fmt: skip
    proc = run_cli(student_cmd(str(tmp_path / "s"), 1, data=str(other)), teacher, ok=False)
    assert proc.returncode != 0 and "dictionaries differ" in proc.out and "--srcdict/--tgtdict" in proc.out


def generated(out):
    """fairseq-generate's best hypotheses by sentence id."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", out, re.M)}


def test_sequence_kd_corpus_is_the_teachers_beam_search(teacher, tmp_path, capsys):
    out_dir = tmp_path / "kd"
    cmd = ["mdn-seqkd", "--teacher", TEACHER, "--data", "bin", "--out", out_dir, "--batch-size", "64",
           "--chunk-batches", "2", "--max-len-b", "5", "--with-original"]  # fmt: skip
    out = run_cli(cmd, teacher).out
    assert "800 pairs" in out and "original + distilled" in out
    src = (out_dir / "text" / "train.en").read_text().splitlines()
    tgt = (out_dir / "text" / "train.de").read_text().splitlines()
    assert len(src) == len(tgt) == 800
    # the distilled half is what fairseq-generate makes of the teacher, beam 4, sentence by sentence
    gen = run_cli(["fairseq-generate", "bin", "--user-dir", USER_DIR, "--path", TEACHER, "--gen-subset", "train",
                   "--beam", "4", "--batch-size", "64", "--required-batch-size-multiple", "1", "--max-len-a", "1.2",
                   "--max-len-b", "5"], teacher).out  # fmt: skip
    hyps = generated(gen)
    assert len(hyps) == 400 and tgt[:400] == [hyps[i] for i in range(400)]
    assert src[:400] == src[400:] and tgt[:400] != tgt[400:]  # then the original pairs, same order
    assert (out_dir / "bin" / "train.en-de.de.bin").exists() and (out_dir / "bin" / "valid.en-de.en.idx").exists()
    assert (out_dir / "bin" / "dict.de.txt").read_text() == (teacher / "bin" / "dict.de.txt").read_text()
    # resumable: a re-run translates nothing again
    from mdn_fairseq.cli import seqkd

    code, out = in_process(seqkd.main, teacher, capsys, cmd[1:])
    assert code == 0, out
    assert "chunk" not in out.split("pairs")[0]
    # a student trains on it
    run_cli(["fairseq-train", out_dir / "bin", "--user-dir", USER_DIR, "--arch", "mdn_tiny", "--max-update", "1",
             "--save-dir", tmp_path / "s", "--optimizer", "adam", "--num-workers", "0", *TRAIN], teacher)  # fmt: skip
