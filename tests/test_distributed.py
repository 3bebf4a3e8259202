"""Distributed training on CPU (two processes, gloo, legacy_ddp) resumes: fairseq broadcasts the loaded
checkpoint state from rank 0, and the other ranks unpickle it with the same allow-list and refusal."""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import USER_DIR, binarise, build_model
from mdn_fairseq.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

#: fairseq-train (fairseq_cli.train.cli_main, what the console script runs) that also saves this rank's
#: update count and model state right after loading the checkpoint ("start") and after each checkpoint
#: save ("saved"), as MDN_TEST_DUMP.{start,saved}.rank{R}.pt: ranks other than 0 write no checkpoints.
LAUNCHER = textwrap.dedent(
    """
    import os, sys
    import torch
    from fairseq import checkpoint_utils
    from fairseq_cli import train

    def dump(trainer, tag):
        model = {k: v.detach().clone() for k, v in trainer.get_model().state_dict().items()}
        path = f"{os.environ['MDN_TEST_DUMP']}.{tag}.rank{trainer.data_parallel_rank}.pt"
        torch.save({"num_updates": trainer.get_num_updates(), "model": model}, path)

    def hooked(original, tag):
        def call(cfg, trainer, *args, **kwargs):
            out = original(cfg, trainer, *args, **kwargs)
            dump(trainer, tag)
            return out
        return call

    checkpoint_utils.load_checkpoint = hooked(checkpoint_utils.load_checkpoint, "start")
    checkpoint_utils.save_checkpoint = hooked(checkpoint_utils.save_checkpoint, "saved")
    sys.exit(train.cli_main())
    """
)
DISTRIBUTED = ["--cpu", "--ddp-backend", "legacy_ddp", "--distributed-backend", "gloo",
               "--distributed-world-size", "2", "--distributed-no-spawn", "--device-id", "0"]  # fmt: skip
COMMON = ["--optimizer", "adam", "--lr", "0.001", "--max-tokens", "500", "--num-workers", "0", "--seed", "1",
          "--no-epoch-checkpoints", "--log-format", "simple"]  # fmt: skip
STUDENT = ["--arch", "mdn_tiny", "--task", "translation_wd", "--teacher-path", "teacher/checkpoint_last.pt",
           "--criterion", "kd_cross_entropy"]  # fmt: skip
FIRST, RESUMED = 6, 12  # updates: the student's first run (5 per epoch: it stops inside epoch 2), then resumed


class Foreign:
    """Stands for any object a checkpoint should not carry."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(work, name, command, timeout=300):
    """Run ``command(rank, port)`` for ranks 0 and 1 at once in ``work``, with one thread each; returns their
    (returncode, output) in rank order (the output also in work/NAME.rankR.log)."""
    port, procs, logs = free_port(), [], []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MDN_TEST_DUMP=str(work / name))
    for rank in (0, 1):
        logs.append(work / f"{name}.rank{rank}.log")
        with open(logs[-1], "w") as log:
            cmd = [str(c) for c in command(rank, port)]
            procs.append(subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(code, log.read_text()) for code, log in zip(codes, logs)]


def fairseq_train(save_dir, *flags):
    """``command`` for :func:`two_ranks`: fairseq-train with the dump hooks, rank R of 2, into SAVE_DIR."""

    def command(rank, port):
        return [sys.executable, "launcher.py", "bin", "--user-dir", USER_DIR, "--save-dir", save_dir, *DISTRIBUTED,
                "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-rank", rank, *COMMON,
                *flags]  # fmt: skip

    return command


def train_two_ranks(work, name, *flags):
    """fairseq-train (with the dump hooks) on two ranks into save dir NAME; both must finish."""
    runs = two_ranks(work, name, fairseq_train(name, *flags))
    for rank, (code, out) in enumerate(runs):
        assert code == 0, f"rank {rank} of {name} failed ({code}):\n{out[-3000:]}"
    return [out for _, out in runs]


def dumped(work, name, tag):
    return [torch.load(work / f"{name}.{tag}.rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same_model(a, b, what):
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {different[:5]} differ"


@pytest.fixture(scope="module")
def student(tmp_path_factory, multi30k):
    """Binarised data, a teacher and a student (translation_wd + kd_cross_entropy) trained on two ranks;
    the student stopped after FIRST updates.  Returns (work, outputs of the student's ranks)."""
    work = tmp_path_factory.mktemp("distributed")
    binarise(work, multi30k, {"train": ("train", 200), "valid": ("val", 20)})
    (work / "launcher.py").write_text(LAUNCHER)
    train_two_ranks(work, "teacher", "--arch", "mdn_transformer_tiny", "--task", "translation_mdn", "--max-update", "4")
    outs = train_two_ranks(work, "student", *STUDENT, "--max-update", FIRST)
    shutil.copy(work / "student" / "checkpoint_last.pt", work / "student_first.pt")
    return work, outs


def test_student_resumes_on_two_ranks(student):
    work, first = student
    assert "initialised the student from teacher/checkpoint_last.pt" in first[0]
    saved = load_checkpoint(work / "student_first.pt")
    assert saved["optimizer_history"][-1]["num_updates"] == FIRST

    for stale in work.glob("student.*.rank*.pt"):
        stale.unlink()
    resumed = train_two_ranks(work, "student", *STUDENT, "--max-update", RESUMED)
    assert "not initialising it from the teacher" in resumed[0]
    assert "initialised the student from" not in resumed[0]
    assert re.search(rf"Loaded checkpoint student/checkpoint_last\.pt \(epoch \d+ @ {FIRST} updates\)", resumed[0])
    # both ranks start from the checkpoint (rank 1: through the broadcast), at its update count ...
    for rank, start in enumerate(dumped(work, "student", "start")):
        assert start["num_updates"] == FIRST, rank
        assert_same_model(start["model"], saved["model"], f"rank {rank} after loading vs the checkpoint")
    # ... and end with the same parameters, those of the last checkpoint
    end = dumped(work, "student", "saved")
    assert [e["num_updates"] for e in end] == [RESUMED, RESUMED]
    assert_same_model(end[0]["model"], end[1]["model"], "rank 0 vs rank 1 at the end")
    last = load_checkpoint(work / "student" / "checkpoint_last.pt")
    assert last["optimizer_history"][-1]["num_updates"] == RESUMED
    assert_same_model(end[0]["model"], last["model"], "the ranks vs checkpoint_last.pt")


def test_foreign_object_in_checkpoint_is_refused_on_every_rank(student):
    work, _ = student
    state = load_checkpoint(work / "student_first.pt")
    state["extra_state"]["foreign"] = Foreign()
    (work / "evil").mkdir()
    torch.save(state, work / "evil" / "checkpoint_last.pt")
    messages = []
    for rank, (code, out) in enumerate(
        two_ranks(work, "evil", fairseq_train("evil", *STUDENT, "--max-update", RESUMED))
    ):
        assert code != 0, f"rank {rank} did not fail:\n{out[-2000:]}"
        found = re.findall(r"UnsafeCheckpointError: (refused to load checkpoint .*)", out)
        assert found, f"rank {rank} failed otherwise:\n{out[-3000:]}"
        messages.append(found[-1])
    assert messages[0] == messages[1]
    assert "evil/checkpoint_last.pt" in messages[0] and "test_distributed.Foreign" in messages[0]


#: two processes calling fairseq's broadcast_object directly: a checkpoint state as fairseq loads it
#: (cfg as a DictConfig) arrives; a state with an object outside the allow-list is refused by both.
BROADCAST = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    import mdn_fairseq
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils
    from mdn_fairseq.checkpoint import UnsafeCheckpointError

    class Foreign:
        pass

    rank, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    state = checkpoint_utils.load_checkpoint_to_cpu(path) if rank == 0 else None
    state = utils.broadcast_object(state, src_rank=0, group=dist.group.WORLD)
    report = {"cfg": type(state["cfg"]).__name__, "arch": state["cfg"]["model"].arch,
              "sum": sum(float(t.double().sum()) for t in state["model"].values())}
    state = {"model": state["model"], "extra_state": {"foreign": Foreign()}} if rank == 0 else None
    try:
        utils.broadcast_object(state, src_rank=0, group=dist.group.WORLD)
    except UnsafeCheckpointError as err:
        report["refused"] = str(err)
    print("REPORT", json.dumps(report), flush=True)
    dist.barrier()  # both ranks are done with the group before either tears it down (gloo aborts otherwise)
    dist.destroy_process_group()
    """
)


def test_broadcast_object_uses_the_allow_list_on_every_rank(tmp_path):
    state = {
        "args": None,
        "cfg": {"model": argparse.Namespace(arch="mdn_tiny", _name="mdn_tiny"), "common": {"seed": 1}},
        "model": build_model("mdn_tiny").state_dict(),
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 4.5}, "num_updates": 3}],
        "extra_state": {"train_iterator": {"epoch": 1}},
    }  # fmt: skip
    torch.save(state, tmp_path / "checkpoint.pt")
    (tmp_path / "broadcast.py").write_text(BROADCAST)
    runs = two_ranks(
        tmp_path, "broadcast", lambda rank, port: [sys.executable, "broadcast.py", rank, port, "checkpoint.pt"]
    )
    reports = []
    for rank, (code, out) in enumerate(runs):
        assert code == 0, f"rank {rank} failed:\n{out[-3000:]}"
        reports.append(json.loads(re.findall(r"^REPORT (.*)$", out, flags=re.M)[-1]))
    assert reports[0] == reports[1]
    assert reports[0]["cfg"] == "DictConfig" and reports[0]["arch"] == "mdn_tiny"
    assert reports[0]["refused"].startswith("refused to load checkpoint state broadcast by rank 0")
    assert "__main__.Foreign" in reports[0]["refused"]
