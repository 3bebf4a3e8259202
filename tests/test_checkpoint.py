"""Checkpoints on torch >= 2.6: weights_only stays on; fairseq's contents are allow-listed, nothing else."""

import argparse
import os
import pickle

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

from conftest import build_model, random_batch
from mdn_fairseq.checkpoint import UnsafeCheckpointError, load_checkpoint


class Foreign:
    """Stands for any object a checkpoint should not carry."""

    def __init__(self):
        self.payload = "anything"


def fairseq_like_state(model, **extra):
    args = argparse.Namespace(arch="mdn_tiny", _name="mdn")
    state = {
        "args": None,
        "cfg": {"model": args, "common": {"seed": 1}},
        "model": model.state_dict(),
        "optimizer_history": [
            {
                "criterion_name": "CrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": 4.5},
                "num_updates": 3,
            }
        ],
        "extra_state": {
            "metrics": {"train": [[0, "bleu_counts", "AverageMeter", {"val": np.array([1, 2, 3])}]]},
            "val_loss": np.float64(4.5),
            "train_iterator": {"epoch": 1},
        },
    }
    state.update(extra)
    return state


def test_weights_only_is_not_disabled_globally():
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert argparse.Namespace not in torch.serialization.get_safe_globals()


def test_round_trip_with_weights_only(tmp_path):
    model = build_model("mdn_tiny")
    path = tmp_path / "checkpoint.pt"
    torch.save(fairseq_like_state(model), path)
    # plain torch.load keeps refusing it (nothing opened up globally) ...
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    # ... while fairseq's loader (what fairseq-train/-generate call) and ours accept it
    for state in (checkpoint_utils.load_checkpoint_to_cpu(str(path)), load_checkpoint(path)):
        assert isinstance(state["cfg"]["model"], argparse.Namespace)
        assert state["extra_state"]["val_loss"] == 4.5
        copy = build_model("mdn_tiny", seed=7)
        copy.load_state_dict(state["model"])
        src, lengths, prev = random_batch(model)
        with torch.no_grad():
            assert torch.equal(copy(src, lengths, prev)[0], model(src, lengths, prev)[0])


@pytest.mark.parametrize("loader", ["fairseq", "mdn"])
def test_foreign_pickled_object_is_refused(tmp_path, loader):
    path = tmp_path / "evil.pt"
    torch.save(fairseq_like_state(build_model("mdn_tiny"), extra_state={"x": Foreign()}), path)
    load = checkpoint_utils.load_checkpoint_to_cpu if loader == "fairseq" else load_checkpoint
    with pytest.raises(UnsafeCheckpointError) as err:
        load(str(path))
    msg = str(err.value)
    assert str(path) in msg and "Foreign" in msg and "weights_only=True" in msg


def test_allow_list_is_not_opened_globally_by_install():
    from omegaconf import DictConfig

    assert DictConfig not in torch.serialization.get_safe_globals()


def test_install_is_idempotent_and_wraps_fairseqs_own_functions():
    from fairseq.distributed import utils as distributed_utils
    from fairseq.trainer import Trainer

    import mdn_fairseq.checkpoint

    def patched():
        return [checkpoint_utils.load_checkpoint_to_cpu, checkpoint_utils.load_ema_from_checkpoint,
                distributed_utils._broadcast_object_slow, Trainer.load_checkpoint]  # fmt: skip

    before = patched()
    mdn_fairseq.checkpoint.install()
    assert patched() == before
    for function in before:
        assert function._mdn_allow_list
        assert function.__wrapped__.__module__.startswith("fairseq.")  # one layer, over fairseq's own


def test_state_as_fairseq_loads_it_round_trips(tmp_path):
    """What Trainer.load_checkpoint broadcasts: the state with cfg turned into a DictConfig."""
    model = build_model("mdn_tiny")
    torch.save(fairseq_like_state(model), tmp_path / "checkpoint.pt")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint.pt"))
    assert type(state["cfg"]).__name__ == "DictConfig"
    torch.save(state, tmp_path / "loaded.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "loaded.pt", weights_only=True)
    again = load_checkpoint(tmp_path / "loaded.pt")
    assert again["cfg"] == state["cfg"] and again["cfg"]["model"].arch == "mdn_tiny"


def test_ema_loader_uses_the_allow_list(tmp_path):
    model = build_model("mdn_tiny")
    good, evil = tmp_path / "ema.pt", tmp_path / "evil.pt"
    torch.save(fairseq_like_state(model, extra_state={"ema": model.state_dict()}), good)
    torch.save(fairseq_like_state(model, extra_state={"ema": model.state_dict(), "x": Foreign()}), evil)
    state = checkpoint_utils.load_ema_from_checkpoint(str(good))  # --ema-seed-model
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    with pytest.raises(UnsafeCheckpointError, match="Foreign"):
        checkpoint_utils.load_ema_from_checkpoint(str(evil))


def test_a_file_that_is_no_checkpoint_is_named_so(tmp_path):
    text = tmp_path / "train.en"
    text.write_text("A man in an orange hat .\n", encoding="utf-8")
    with pytest.raises(UnsafeCheckpointError, match=r"it is not a torch checkpoint \(torch.load says: Unsupported"):
        load_checkpoint(str(text))
