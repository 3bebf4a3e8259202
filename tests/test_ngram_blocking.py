"""--no-repeat-ngram-size N: no hypothesis repeats an n-gram of N tokens, in the lean search and in fairseq's
generator as translation_mdn builds it; results equal fairseq's once fairseq's own blocking is fixed."""

import math

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig
from fairseq.ngram_repeat_block import NGramRepeatBlock
from fairseq.sequence_generator import SequenceGenerator
from fairseq.tasks.translation import TranslationTask
from test_fast_generator import GENERATE, assert_same, assert_same_output, batch, eos_friendly, parsed

from conftest import build_model, run_cli
from mdn_fairseq.fast_generator import FastSequenceGenerator, GenerationOptionError, NGramBlocker, ban_repeated_ngrams
from mdn_fairseq.fast_generator.ngram import repeated_ngrams
from mdn_fairseq.tasks.translation_mdn import TranslationMDNConfig, TranslationMDNTask


def fixed_no_repeat_ngram(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
    """fairseq 0.12's ``NGramRepeatBlock._no_repeat_ngram`` (its CPU path), copied with its one bug fixed:
    the n-gram to check is the last n - 1 generated tokens, ``tokens[step + 2 - n : step + 1]``, not the
    last entries of the whole buffer (``[-(n - 1):]``, which are always padding)."""
    n = self.no_repeat_ngram_size
    banned_tokens = [[] for _ in range(bsz * beam_size)]
    if step + 2 - n >= 0:
        cpu_tokens = tokens.cpu().tolist()
        check_start_pos = step + 2 - n
        for bbsz_idx in range(bsz * beam_size):
            ngram_to_check = cpu_tokens[bbsz_idx][step + 2 - n : step + 1]  # the fix
            for i in range(check_start_pos):
                if ngram_to_check == cpu_tokens[bbsz_idx][i : i + n - 1]:
                    banned_tokens[bbsz_idx].append(cpu_tokens[bbsz_idx][i + n - 1])
    for bbsz_idx in range(bsz * beam_size):
        lprobs[bbsz_idx][torch.tensor(banned_tokens[bbsz_idx], dtype=torch.int64)] = torch.tensor(-math.inf).to(lprobs)
    return lprobs


@pytest.fixture
def fixed_fairseq(monkeypatch):
    """fairseq's own generator with working n-gram blocking, for this test only."""
    monkeypatch.setattr(NGramRepeatBlock, "_no_repeat_ngram", fixed_no_repeat_ngram)


def assert_no_repeats(out, n):
    for hypos in out:
        for h in hypos:
            assert not repeated_ngrams(h["tokens"].tolist(), n), (n, h["tokens"].tolist())


def count_with_repeats(out, n):
    return sum(bool(repeated_ngrams(h["tokens"].tolist(), n)) for hypos in out for h in hypos)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ban_repeated_ngrams_is_fairseqs_rule(n):
    """The vectorised rule bans exactly what fairseq's (fixed) loop bans, over a buffer with padding beyond step."""
    g = torch.Generator().manual_seed(n)
    rows, width, vocab = 12, 14, 6
    tokens = torch.randint(3, vocab, (rows, width), generator=g)  # a small vocabulary: many repeats
    tokens[:, 0] = 2
    for step in range(width - 1):
        buf = tokens.clone()
        buf[:, step + 1 :] = 1  # what SequenceGenerator passes: pad after the current step
        want = fixed_no_repeat_ngram(
            NGramRepeatBlock(n, use_extension=False), buf, torch.zeros(rows, vocab), 3, 4, step
        )
        got = ban_repeated_ngrams(buf, torch.zeros(rows, vocab), step, n)
        assert torch.equal(got, want), step
        assert torch.equal(NGramBlocker(n)(buf, torch.zeros(rows, vocab), 3, 4, step), want)
    assert bool(torch.isinf(want).any())


def test_fairseqs_cpu_blocking_blocks_nothing():
    """Why the plugin blocks n-grams itself: fairseq 0.12's CPU path compares the buffer's padding."""
    tokens = torch.tensor([[2, 7, 8, 9, 7, 1, 1, 1]])  # step 4: the last token 7 began the bigram 7 8
    lprobs = torch.zeros(1, 12)
    assert not bool(torch.isinf(NGramRepeatBlock(2, use_extension=False)(tokens, lprobs.clone(), 1, 1, 4)).any())
    banned = NGramBlocker(2)(tokens, lprobs.clone(), 1, 1, 4)
    assert torch.isinf(banned).nonzero()[:, 1].tolist() == [8]


def repetitive_model(arch):
    """A random model over 20 target types: its 12-token hypotheses repeat bigrams unless blocked."""
    return eos_friendly(build_model(arch, tgt_vocab=20), 2.0)


@pytest.mark.parametrize("arch", ["mdn_tiny", "mdn_transformer_tiny"])
@pytest.mark.parametrize("n", [2, 3])
def test_lean_search_blocks_as_fixed_fairseq(arch, n, fixed_fairseq):
    model = repetitive_model(arch)
    tgt_dict = model.decoder.dictionary
    setting = dict(beam_size=4, max_len_b=12)
    unblocked = FastSequenceGenerator([model], tgt_dict, **setting)
    ref = SequenceGenerator([model], tgt_dict, no_repeat_ngram_size=n, **setting)
    fast = FastSequenceGenerator([model], tgt_dict, no_repeat_ngram_size=n, **setting)
    repeats = 0
    for seed in range(3):
        sample = batch(model, 6, seed)
        repeats += count_with_repeats(unblocked.generate([model], sample), n)
        got = fast.generate([model], sample)
        assert_same(ref.generate([model], sample), got)
        assert_no_repeats(got, n)
    assert repeats > 0  # blocking changed something


@pytest.mark.parametrize("settings", [dict(), dict(prefix_size=1)], ids=["no-fast-generator", "handed-over"])
def test_translation_mdns_fairseq_generator_blocks_too(settings, fixed_fairseq, tmp_path):
    """--no-fast-generator, and options handed to fairseq's generator, get the working blocker."""
    model = repetitive_model("mdn_tiny")
    model.encoder.dictionary.save(str(tmp_path / "dict.en.txt"))
    model.decoder.dictionary.save(str(tmp_path / "dict.de.txt"))
    cfg = TranslationMDNConfig(data=str(tmp_path), source_lang="en", target_lang="de", no_fast_generator=not settings)
    task = TranslationMDNTask.setup_task(cfg)
    gen = task.build_generator([model], GenerationConfig(beam=4, max_len_b=12, no_repeat_ngram_size=2, **settings))
    assert type(gen) is SequenceGenerator and isinstance(gen.repeat_ngram_blocker, NGramBlocker)
    ref = SequenceGenerator([model], model.decoder.dictionary, beam_size=4, max_len_b=12, no_repeat_ngram_size=2)
    sample = batch(model, 6, seed=0)
    prefix = torch.randint(4, 20, (6, 1), generator=torch.Generator().manual_seed(0)) if settings else None
    got = gen.generate([model], sample, prefix_tokens=prefix)
    assert_same(ref.generate([model], sample, prefix_tokens=prefix), got)
    assert_no_repeats(got, 2)


# ------------------------------------------------------------------------------------------------
# a trained tiny model


@pytest.mark.slow
def test_trained_model_hub_blocks_ngrams(trained_tiny, monkeypatch):
    """Sizes 2 and 3 through the hub: fairseq's own generator keeps repeated n-grams (its CPU blocking is
    broken); the lean search and translation_mdn's fairseq generator have none and equal fixed fairseq's."""
    from fairseq.models.transformer import TransformerModel

    hub = TransformerModel.from_pretrained(str(trained_tiny / "ck"), "checkpoint_last.pt", str(trained_tiny / "bin"))
    tokens = [hub.encode(line) for line in (trained_tiny / "test.en").read_text(encoding="utf-8").splitlines()]

    def translate(n, generator="fast"):
        hub.task.cfg.no_fast_generator = generator == "stock"
        with monkeypatch.context() as m:
            if generator == "fairseq":  # FairseqTask.build_generator: fairseq's SequenceGenerator as it is
                m.setattr(
                    hub.task, "build_generator", lambda *a, **k: TranslationTask.build_generator(hub.task, *a, **k)
                )
            return hub.generate(tokens, beam=4, max_len_b=20, no_repeat_ngram_size=n)

    assert count_with_repeats(translate(2, "fairseq"), 2) >= 5  # what users got: the option was ignored
    for n in (2, 3):
        fast = translate(n)
        assert_no_repeats(fast, n)
        assert_same(translate(n, "stock"), fast)
        with monkeypatch.context() as m:
            m.setattr(NGramRepeatBlock, "_no_repeat_ngram", fixed_no_repeat_ngram)
            assert_same(translate(n, "fairseq"), fast)


@pytest.mark.slow
def test_fairseq_generate_no_repeat_ngram_size(trained_tiny):
    """The CLI, lean and --no-fast-generator: identical output, no hypothesis repeats a bigram."""
    flags = ["--task", "translation_mdn", "--no-repeat-ngram-size", "2"]
    fast = run_cli(GENERATE + flags, trained_tiny).out
    stock = run_cli(GENERATE + flags + ["--no-fast-generator"], trained_tiny).out
    assert_same_output(stock, fast)
    assert "fast generator not used" not in fast
    hypos = [text.split() for (kind, _), (text, _) in parsed(fast).items() if kind == "H"]
    assert len(hypos) == 60 and not any(repeated_ngrams(h, 2) for h in hypos)


def test_size_1_is_refused(tmp_path):
    """Size 1 would ban the start symbol </s> (fairseq's rule counts it as generated): nothing could end."""
    model = build_model("mdn_tiny")
    with pytest.raises(GenerationOptionError, match="--no-repeat-ngram-size 1 .* use 2 or more"):
        FastSequenceGenerator([model], model.decoder.dictionary, beam_size=2, no_repeat_ngram_size=1)
    model.encoder.dictionary.save(str(tmp_path / "dict.en.txt"))
    model.decoder.dictionary.save(str(tmp_path / "dict.de.txt"))
    for off in (False, True):
        cfg = TranslationMDNConfig(data=str(tmp_path), source_lang="en", target_lang="de", no_fast_generator=off)
        with pytest.raises(GenerationOptionError, match="--no-repeat-ngram-size 1"):
            TranslationMDNTask.setup_task(cfg).build_generator([model], GenerationConfig(no_repeat_ngram_size=1))
