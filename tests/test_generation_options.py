"""Every field of fairseq's GenerationConfig is implemented by the lean search, handed to fairseq's
generator (with the reason logged), or refused with an error naming it; never ignored."""

import argparse
import dataclasses

import pytest
import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.configs import GenerationConfig
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from test_fast_generator import assert_same, batch, eos_friendly

from conftest import build_model
from mdn_fairseq.fast_generator import FastSequenceGenerator, GenerationOptionError, options, plan
from mdn_fairseq.tasks.translation_mdn import TranslationMDNConfig, TranslationMDNTask

FIELDS = {f.name for f in dataclasses.fields(GenerationConfig)} - {f.name for f in dataclasses.fields(FairseqDataclass)}

# per field: a value that is not the default, the options it needs to mean anything (or {}), and what
# translation_mdn does with it: "lean" (the lean search), "fairseq" (handed over) or "refused"
WALK = {
    "beam": (3, {}, "lean"),
    "beam_mt": (2, {}, "refused"),
    "nbest": (2, {}, "lean"),
    "max_len_a": (1.5, {}, "lean"),
    "max_len_b": (7, {}, "lean"),
    "max_len_a_mt": (1.0, {}, "refused"),
    "max_len_b_mt": (100, {}, "refused"),
    "min_len": (3, {}, "lean"),
    "match_source_len": (True, {}, "fairseq"),
    "unnormalized": (True, {}, "lean"),
    "no_early_stop": (True, {}, "refused"),
    "no_beamable_mm": (True, {}, "fairseq"),
    "lenpen": (0.6, {}, "lean"),
    "lenpen_mt": (0.6, {}, "refused"),
    "unkpen": (0.5, {}, "lean"),
    "replace_unk": ("@@ ", {}, "lean"),
    "sacrebleu": (True, {}, "lean"),
    "score_reference": (True, {}, "fairseq"),
    "prefix_size": (1, {}, "fairseq"),
    "no_repeat_ngram_size": (2, {}, "lean"),
    "sampling": (True, {}, "fairseq"),
    "sampling_topk": (5, {"sampling": True}, "fairseq"),
    "sampling_topp": (0.9, {"sampling": True}, "fairseq"),
    "constraints": ("ordered", {}, "fairseq"),
    "temperature": (0.7, {}, "lean"),
    "diverse_beam_groups": (2, {}, "fairseq"),
    "diverse_beam_strength": (0.3, {"diverse_beam_groups": 2}, "fairseq"),
    "diversity_rate": (0.5, {}, "fairseq"),
    "print_alignment": ("hard", {}, "lean"),
    "print_step": (True, {}, "refused"),
    "lm_path": ("lm.pt", {}, "fairseq"),
    "lm_weight": (0.5, {"lm_path": "lm.pt"}, "fairseq"),
    "iter_decode_eos_penalty": (0.1, {}, "refused"),
    "iter_decode_max_iter": (5, {}, "refused"),
    "iter_decode_force_max_iter": (True, {}, "refused"),
    "iter_decode_with_beam": (2, {}, "refused"),
    "iter_decode_with_external_reranker": (True, {}, "refused"),
    "retain_iter_history": (True, {}, "refused"),
    "retain_dropout": (True, {}, "fairseq"),
    "retain_dropout_modules": (["TransformerDecoderLayer"], {"retain_dropout": True}, "fairseq"),
    "decoding_format": ("unigram", {}, "refused"),
    "no_seed_provided": (True, {}, "lean"),
    "eos_token": ("</s>", {}, "refused"),
}


def flag(name):
    return "--" + name.replace("_", "-")


@pytest.fixture(scope="module")
def model():
    return eos_friendly(build_model("mdn_tiny"))


@pytest.fixture(scope="module")
def tasks(model, tmp_path_factory):
    """(translation_mdn, translation_mdn --no-fast-generator, fairseq's translation) on the model's dictionaries."""
    folder = tmp_path_factory.mktemp("dicts")
    model.encoder.dictionary.save(str(folder / "dict.en.txt"))
    model.decoder.dictionary.save(str(folder / "dict.de.txt"))
    common = dict(data=str(folder), source_lang="en", target_lang="de")
    return (
        TranslationMDNTask.setup_task(TranslationMDNConfig(**common)),
        TranslationMDNTask.setup_task(TranslationMDNConfig(no_fast_generator=True, **common)),
        TranslationTask.setup_task(TranslationConfig(**common)),
    )


def outcome(task, model, cfg, caplog):
    """("lean" | "fairseq" | "refused", the generator or the error message)."""
    caplog.clear()
    try:
        with caplog.at_level("INFO", logger="mdn_fairseq"):
            gen = task.build_generator([model], cfg)
    except (GenerationOptionError, AssertionError, ValueError) as err:
        return "refused", str(err)
    if isinstance(gen, FastSequenceGenerator):
        return "lean", gen
    return "fairseq", caplog.text


def test_the_walk_and_the_rules_cover_every_generation_config_field():
    """A field that a newer fairseq adds fails here until options.RULES (and this walk) say what to do."""
    assert set(WALK) == FIELDS
    assert set(options.RULES) == FIELDS


@pytest.mark.parametrize("name", sorted(WALK))
def test_every_option_is_implemented_handed_over_or_refused(name, model, tasks, caplog):
    fast_task, stock_task, _ = tasks
    value, needs, expected = WALK[name]
    cfg = GenerationConfig(**{"beam": 4, "max_len_b": 12, **needs, name: value})
    kind, result = outcome(fast_task, model, cfg, caplog)
    assert kind == expected, (name, kind, result)
    if kind == "refused":
        assert flag(name) in result
        assert outcome(stock_task, model, cfg, caplog)[0] == "refused"  # --no-fast-generator too
    elif kind == "fairseq":
        assert f"fast generator not used ({flag(name) if not needs else flag(next(iter(needs)))}" in result
    else:  # the lean search and fairseq's generator (--no-fast-generator) agree
        stock = stock_task.build_generator([model], cfg)
        assert not isinstance(stock, FastSequenceGenerator)
        for seed in range(2):
            sample = batch(model, 5, seed)
            assert_same(stock.generate([model], sample), result.generate([model], sample))
    if needs:  # without the option it modifies, it is refused (by fairseq's own checks or ours)
        cfg = GenerationConfig(beam=4, **{name: value})
        kind, message = outcome(fast_task, model, cfg, caplog)
        assert kind == "refused" and flag(name) in message and flag(next(iter(needs))) in message


@pytest.mark.parametrize(
    "settings",
    [
        dict(sampling=True, diverse_beam_groups=2),
        dict(match_source_len=True, diversity_rate=0.5),
        dict(sampling_topk=5),
        dict(sampling_topp=0.5, diverse_beam_groups=2),
        dict(temperature=0.0),
    ],
    ids=lambda s: ",".join(s),
)
def test_invalid_combinations_fail_as_in_fairseq(settings, model, tasks):
    fast_task, stock_task, fairseq_task = tasks
    cfg = GenerationConfig(beam=4, **settings)
    with pytest.raises((AssertionError, ValueError)) as want:
        fairseq_task.build_generator([model], cfg)
    for task in (fast_task, stock_task):
        with pytest.raises(type(want.value)) as got:
            task.build_generator([model], cfg)
        assert str(got.value) == str(want.value)


def test_refusals_say_what_to_use_instead(model, tasks):
    fast_task = tasks[0]
    for name, hint in (
        ("beam_mt", "--beam"),
        ("lenpen_mt", "--lenpen"),
        ("print_step", "translation_lev"),
        ("no_early_stop", "remove it"),
    ):
        with pytest.raises(GenerationOptionError, match=f"{flag(name)}.*{hint}"):
            fast_task.build_generator([model], GenerationConfig(**{name: WALK[name][0]}))
    with pytest.raises(GenerationOptionError, match="--nbest 5 is more than --beam 4.*raise --beam"):
        fast_task.build_generator([model], GenerationConfig(beam=4, nbest=5))
    with pytest.raises(GenerationOptionError, match="--lm-weight 0.5 has no effect without --lm-path"):
        plan([model], argparse.Namespace(lm_weight=0.5))


def test_an_option_this_plugin_does_not_know_is_handed_over(model, monkeypatch):
    """What a newer fairseq's new option gets until the table knows it: fairseq's generator, not silence."""
    monkeypatch.setitem(options.DEFAULTS, "brand_new_option", 0)
    assert plan([model], argparse.Namespace(brand_new_option=0)) is None
    assert "--brand-new-option" in plan([model], argparse.Namespace(brand_new_option=3))


def test_suppressed_tokens_and_eos_are_honoured_as_in_fairseq(model):
    """SequenceGenerator keyword arguments beyond GenerationConfig: tokens_to_suppress, eos."""
    from fairseq.sequence_generator import SequenceGenerator

    tgt_dict = model.decoder.dictionary
    kwargs = dict(beam_size=4, max_len_b=10, tokens_to_suppress=[tgt_dict[5], tgt_dict[9]])
    ref = SequenceGenerator([model], tgt_dict, **kwargs)
    fast = FastSequenceGenerator([model], tgt_dict, **kwargs)
    sample = batch(model, 5, seed=1)
    got = fast.generate([model], sample)
    assert_same(ref.generate([model], sample), got)
    assert not any(bool(torch.isin(h["tokens"], torch.tensor([5, 9])).any()) for hs in got for h in hs)
