"""The lean beam search gives fairseq's SequenceGenerator results (hypotheses, scores, attention and
alignments; in float32 and half precision); unsupported cases fall back."""

import argparse
from collections import Counter

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig
from fairseq.sequence_generator import SequenceGenerator, SequenceGeneratorWithAlignment

from conftest import USER_DIR, build_model, run_cli
from mdn_fairseq.fast_generator import FastSequenceGenerator, top_k_shifted, unsupported_reason
from mdn_fairseq.tasks.translation_mdn import TranslationMDNConfig, TranslationMDNTask


def eos_friendly(model, factor=5.0):
    """A random model ends hypotheses at random steps once its EOS logit is scaled up (else never)."""
    proj = model.decoder.output_projection
    weight = proj.A.weight if hasattr(proj, "A") else proj.weight  # LowRankLinear: logits = B(x)·Aᵀ
    with torch.no_grad():
        weight[model.decoder.dictionary.eos()] *= factor
    return model


def batch(model, bsz, seed, min_len=3, max_len=9):
    """Left-padded sources of random lengths, as fairseq batches them."""
    g = torch.Generator().manual_seed(seed)
    d = model.encoder.dictionary
    lengths = torch.randint(min_len, max_len + 1, (bsz,), generator=g)
    lengths[0] = max_len  # at least one padded sentence besides the longest
    lengths[-1] = min_len
    src = torch.full((bsz, max_len), d.pad(), dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        src[i, max_len - n : -1] = torch.randint(d.nspecial, len(d), (n - 1,), generator=g)
        src[i, -1] = d.eos()
    return {"id": torch.arange(bsz), "net_input": {"src_tokens": src, "src_lengths": lengths}}


def assert_same(ref_out, fast_out, atol=1e-4):
    """Same hypotheses in the same order, scores and attention to float rounding, same alignments."""
    assert len(ref_out) == len(fast_out)
    for ref_hypos, fast_hypos in zip(ref_out, fast_out):
        assert len(ref_hypos) == len(fast_hypos)
        for r, f in zip(ref_hypos, fast_hypos):
            assert torch.equal(r["tokens"], f["tokens"]), (r["tokens"].tolist(), f["tokens"].tolist())
            assert abs(float(r["score"]) - float(f["score"])) <= atol
            torch.testing.assert_close(f["positional_scores"], r["positional_scores"], atol=atol, rtol=0)
            assert f["attention"].shape == r["attention"].shape == (r["attention"].size(0), len(r["tokens"]))
            torch.testing.assert_close(f["attention"], r["attention"], atol=1e-5, rtol=0)
            assert isinstance(f["alignment"], list) == isinstance(r["alignment"], list)
            if (
                isinstance(r["alignment"], list) and r["alignment"] and isinstance(r["alignment"][0], list)
            ):  # soft: 6-decimal strings, to rounding
                soft = [torch.tensor([[float(p) for p in row] for row in h["alignment"]]) for h in (f, r)]
                torch.testing.assert_close(*soft, atol=2e-6, rtol=0)
            elif isinstance(r["alignment"], list):  # hard: (source word, target word) pairs
                assert f["alignment"] == r["alignment"]


MODELS = {
    "mdn_tiny": lambda: eos_friendly(build_model("mdn_tiny")),
    "mdn_tiny_prenorm_learned_pos": lambda: eos_friendly(
        build_model(
            "mdn_tiny",
            encoder_normalize_before=True,
            decoder_normalize_before=True,
            encoder_learned_pos=True,
            decoder_learned_pos=True,
            tgt_vocab=1037,
        )
    ),
    "mdn_transformer_tiny": lambda: eos_friendly(build_model("mdn_transformer_tiny", tgt_vocab=1000)),
    "fairseq_transformer": lambda: eos_friendly(
        build_model(
            "transformer",
            encoder_embed_dim=32,
            encoder_ffn_embed_dim=64,
            encoder_attention_heads=4,
            encoder_layers=2,
            decoder_embed_dim=32,
            decoder_ffn_embed_dim=64,
            decoder_attention_heads=4,
            decoder_layers=2,
            activation_fn="gelu",
        )
    ),
}
SETTINGS = [
    dict(beam_size=4, max_len_b=12),
    dict(beam_size=1, max_len_b=8),
    dict(beam_size=5, max_len_a=1.2, max_len_b=2, len_penalty=0.6, unk_penalty=0.5),
    dict(beam_size=4, max_len_b=9, min_len=4, len_penalty=1.5),
    dict(beam_size=3, max_len_b=10, normalize_scores=False, temperature=0.7),
]


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_same_hypotheses_and_scores_as_sequence_generator(model, setting):
    tgt_dict = model.decoder.dictionary
    ref = SequenceGenerator([model], tgt_dict, **setting)
    fast = FastSequenceGenerator([model], tgt_dict, **setting)
    lengths = Counter()
    for seed in range(3):
        sample = batch(model, 6, seed)
        ref_out = ref.generate([model], sample)
        fast_out = fast.generate([model], sample)
        assert_same(ref_out, fast_out)
        max_len = min(
            int(setting.get("max_len_a", 0) * sample["net_input"]["src_tokens"].size(1) + setting["max_len_b"]),
            model.max_decoder_positions() - 1,
        )
        lengths.update("max" if len(h["tokens"]) == max_len + 1 else "early" for hs in fast_out for h in hs)
        lengths.update("sentence done early" for hs in fast_out if all(len(h["tokens"]) <= max_len for h in hs))
    # sentences leave the batch before the last step (the max-length end: the fixed-length test)
    assert lengths["sentence done early"], lengths


def test_feed_forward_in_blocks_of_rows(model, monkeypatch):
    """The encoder's FFN sub-layer runs in blocks of rows (pre- and post-norm, ReLU and GELU): blocks of 3
    rows, the last one partial, give fairseq's results too; the block size is counted in bytes of hidden."""
    from mdn_fairseq.fast_generator import steps as steps_module

    ffn_dim = model.encoder.layers[0].fc1.out_features
    monkeypatch.setattr(steps_module, "FFN_BLOCK_BYTES", 3 * 4 * ffn_dim)
    tgt_dict = model.decoder.dictionary
    sample = batch(model, 6, 0)
    ref = SequenceGenerator([model], tgt_dict, beam_size=4, max_len_b=12).generate([model], sample)
    calls = []
    hook = model.encoder.layers[0].fc2.register_forward_pre_hook(lambda _, inp: calls.append(inp[0].size(0)))
    try:
        fast = FastSequenceGenerator([model], tgt_dict, beam_size=4, max_len_b=12).generate([model], sample)
    finally:
        hook.remove()
    assert_same(ref, fast)
    tokens = int(sample["net_input"]["src_lengths"].sum())
    assert calls == [3] * (tokens // 3) + ([tokens % 3] if tokens % 3 else []), calls


def test_fixed_length_and_encoder_fallback_path(model):
    """min_len = max_len forces every hypothesis to that length; the encoder's own forward gives the same."""
    tgt_dict = model.decoder.dictionary
    setting = dict(beam_size=4, min_len=7, max_len_b=7)
    ref = SequenceGenerator([model], tgt_dict, **setting)
    fast = FastSequenceGenerator([model], tgt_dict, **setting)
    fast.enc_attns = None  # as for an encoder the lean pass does not support
    for sample in (batch(model, 5, seed=7), batch(model, 3, seed=8, min_len=6, max_len=6)):  # padded, unpadded
        out = fast.generate([model], sample)
        assert_same(ref.generate([model], sample), out)
        assert {len(h["tokens"]) for hs in out for h in hs} == {8}
    fast = FastSequenceGenerator([model], tgt_dict, **setting)
    assert fast.enc_attns is not None  # the lean encoder pass, without padding too
    assert_same(ref.generate([model], sample), fast.generate([model], sample))


def test_top_k_shifted_matches_topk():
    g = torch.Generator().manual_seed(0)
    for bsz, rows, vocab, k in ((3, 4, 1000, 8), (2, 1, 1037, 5), (4, 2, 64, 4), (2, 5, 10000, 10)):
        x = torch.randn(bsz, rows, vocab, generator=g)
        x[:, :, 1] = float("-inf")
        offset = torch.randn(bsz, rows, generator=g)
        want_v, want_i = torch.topk((x + offset.unsqueeze(2)).view(bsz, -1), k)
        got_v, got_i = top_k_shifted(x, offset, k)
        assert torch.equal(got_i, want_i) and torch.allclose(got_v, want_v)


# ------------------------------------------------------------------------------------------------
# attention, alignments, half precision


def test_attention_is_the_alignment_layers_cross_attention(model):
    """hypo["attention"] (src_len, tgt_len): columns are distributions over the source, 0 at its pads."""
    tgt_dict = model.decoder.dictionary
    fast = FastSequenceGenerator([model], tgt_dict, beam_size=3, max_len_b=10)
    sample = batch(model, 5, seed=4)
    pads = sample["net_input"]["src_tokens"].eq(model.encoder.dictionary.pad())
    assert pads.any()
    for i, hypos in enumerate(fast.generate([model], sample)):
        for h in hypos:
            assert h["attention"].dtype == torch.float32
            torch.testing.assert_close(h["attention"].sum(0), torch.ones(len(h["tokens"])))
            assert h["attention"][pads[i]].abs().max() == 0 if pads[i].any() else True


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_print_alignment_equals_sequence_generator_with_alignment(model, kind):
    tgt_dict = model.decoder.dictionary
    setting = dict(beam_size=4, max_len_b=10)
    ref = SequenceGeneratorWithAlignment([model], tgt_dict, print_alignment=kind, **setting)
    fast = FastSequenceGenerator([model], tgt_dict, print_alignment=kind, **setting)
    for seed in range(2):
        sample = batch(model, 6, seed)
        got = fast.generate([model], sample)
        assert_same(ref.generate([model], sample), got)
        assert all(len(h["alignment"]) > 0 for hs in got for h in hs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("arch", ["mdn_tiny", "mdn_transformer_tiny"])
def test_half_precision_is_fairseqs(arch, dtype):
    """A half-precision model: scores are float32 sums as fairseq's and, on the same device, hypotheses,
    scores and attention are identical to the bit (see mdn_fairseq.fast_generator.search); half-precision
    logits tie often, so this also checks that ties are broken as fairseq breaks them."""
    model = eos_friendly(build_model(arch, tgt_vocab=1000)).to(dtype)
    tgt_dict = model.decoder.dictionary
    ref = SequenceGenerator([model], tgt_dict, beam_size=4, max_len_b=12)
    fast = FastSequenceGenerator([model], tgt_dict, beam_size=4, max_len_b=12)
    for seed in range(4):
        sample = batch(model, 8, seed)
        got = fast.generate([model], sample)
        assert_same(ref.generate([model], sample), got, atol=0)
        assert {h["score"].dtype for hs in got for h in hs} == {torch.float32}


@pytest.mark.parametrize("arch", ["mdn_tiny", "mdn_transformer_tiny"])
def test_cpu_autocast_bf16_is_fairseqs(arch):
    """A float32 model under torch.autocast("cpu", bfloat16), as `mdn-bench --bf16` runs it: the lean search
    detects autocast and takes the half-precision route, so hypotheses, scores, attention and alignments are
    fairseq's bit for bit (the packed route would mix float32 buffers with bfloat16 projections)."""
    model = eos_friendly(build_model(arch, tgt_vocab=1000))
    tgt_dict = model.decoder.dictionary
    setting = dict(beam_size=4, max_len_b=12, print_alignment="soft")
    ref = SequenceGeneratorWithAlignment([model], tgt_dict, **setting)
    fast = FastSequenceGenerator([model], tgt_dict, **setting)
    for seed in range(3):
        sample = batch(model, 8, seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = ref.generate([model], sample), fast.generate([model], sample)
        assert_same(want, got, atol=0)
        assert {h["score"].dtype for hs in got for h in hs} == {torch.float32}
    assert_same(ref.generate([model], sample), fast.generate([model], sample))  # float32 again: the packed route


# ------------------------------------------------------------------------------------------------
# fallbacks


@pytest.mark.parametrize(
    "option, value",
    [
        ("sampling", True),
        ("diverse_beam_groups", 2),
        ("match_source_len", True),
        ("diversity_rate", 0.5),
        ("constraints", "ordered"),
        ("score_reference", True),
        ("prefix_size", 1),
        ("retain_dropout", True),
    ],
)
def test_unsupported_options_are_named(option, value):
    model = build_model("mdn_tiny")
    args = argparse.Namespace(**{option: value})
    assert unsupported_reason([model], args).startswith(f"--{option.replace('_', '-')} (")
    for lean in ({}, {"print_alignment": "hard"}, {"no_repeat_ngram_size": 2}, {"temperature": 0.5}):
        assert unsupported_reason([model], argparse.Namespace(**lean)) is None
    assert "ensemble" in unsupported_reason([model, model], argparse.Namespace())
    assert "lm_model" in unsupported_reason([model], None, {"lm_model": model, "lm_weight": 0.5})
    assert unsupported_reason([model], None, {"lm_model": None, "lm_weight": 0.0}) is None  # fairseq-generate's
    assert "prefix_allowed" in unsupported_reason([model], None, None, prefix_allowed_tokens_fn=lambda b, t: [4])


def test_unsupported_model_is_refused_by_name():
    model = build_model("mdn_transformer_tiny", cross_self_attention=True)
    with pytest.raises(ValueError, match="cross-self-attention.*SequenceGenerator"):
        FastSequenceGenerator([model], model.decoder.dictionary, beam_size=2)


def test_prefix_tokens_and_training_mode_fall_back_at_call_time(caplog):
    model = eos_friendly(build_model("mdn_tiny"))
    tgt_dict = model.decoder.dictionary
    ref = SequenceGenerator([model], tgt_dict, beam_size=3, max_len_b=8)
    fast = FastSequenceGenerator([model], tgt_dict, beam_size=3, max_len_b=8)
    sample = batch(model, 4, seed=3)
    prefix = torch.randint(4, len(tgt_dict), (4, 2), generator=torch.Generator().manual_seed(0))
    want = ref.generate([model], sample, prefix_tokens=prefix)
    with caplog.at_level("INFO"):
        got = fast.generate([model], sample, prefix_tokens=prefix)
    assert "prefix tokens, generating with fairseq's SequenceGenerator" in caplog.text
    assert_same(want, got)
    assert all(torch.equal(h["tokens"][:2], prefix[i]) for i, hs in enumerate(got) for h in hs)
    model.train()
    torch.manual_seed(0)
    want = ref.generate([model], sample)  # dropout: only fairseq's path applies it
    torch.manual_seed(0)
    assert_same(want, fast.generate([model], sample))
    model.eval()


def test_min_len_above_max_len_fails_as_in_fairseq():
    model = build_model("mdn_tiny")
    sample = batch(model, 2, seed=0)
    for gen in (SequenceGenerator, FastSequenceGenerator):
        with pytest.raises(AssertionError, match="min.len"):
            gen([model], model.decoder.dictionary, beam_size=2, min_len=9, max_len_b=5).generate([model], sample)


@pytest.fixture
def task(tmp_path):
    model = build_model("mdn_tiny")
    model.encoder.dictionary.save(str(tmp_path / "dict.en.txt"))
    model.decoder.dictionary.save(str(tmp_path / "dict.de.txt"))

    def make(**cfg):
        return model, TranslationMDNTask.setup_task(
            TranslationMDNConfig(data=str(tmp_path), source_lang="en", target_lang="de", **cfg)
        )

    return make


def test_task_builds_fast_generator_when_eligible(task):
    model, t = task()
    for args in (
        GenerationConfig(beam=4, max_len_b=20),
        GenerationConfig(beam=4, print_alignment="hard"),
        GenerationConfig(beam=4, no_repeat_ngram_size=3),
    ):
        gen = t.build_generator([model], args)
        assert isinstance(gen, FastSequenceGenerator) and gen.beam_size == 4
    assert gen.no_repeat_ngram_size == 3 and gen.fallback.repeat_ngram_blocker.no_repeat_ngram_size == 3
    align = t.build_generator([model], GenerationConfig(beam=4, print_alignment="soft"))
    assert align.print_alignment == "soft" and type(align.fallback) is SequenceGeneratorWithAlignment
    assert type(t.build_generator([model], GenerationConfig(beam=4, sampling=True))) is SequenceGenerator
    assert type(t.build_generator([model, model], GenerationConfig(beam=4))) is SequenceGenerator
    _, off = task(no_fast_generator=True)
    assert type(off.build_generator([model], GenerationConfig(beam=4))) is SequenceGenerator


# ------------------------------------------------------------------------------------------------
# end to end: fairseq-generate / the hub with --task translation_mdn == with --task translation


def parsed(output):
    """{(kind, id): (text, numbers)} for the S/T/H/D/P/A lines of fairseq-generate/interactive output."""
    lines = {}
    for line in output.splitlines():
        kind, _, rest = line.partition("-")
        if kind not in ("S", "T", "H", "D", "P", "A") or "\t" not in rest:
            continue
        sid, *fields = rest.split("\t")
        if kind in ("H", "D"):  # score, text
            lines[kind, sid] = (fields[-1], [float(fields[0])])
        elif kind == "P":
            lines[kind, sid] = ("", [float(v) for v in fields[0].split()])
        elif kind == "A" and "," in fields[-1]:  # soft: per target token, the source probabilities
            lines[kind, sid] = ("", [float(v) for v in fields[-1].replace(",", " ").split()])
        else:
            lines[kind, sid] = (fields[-1], [])
    return lines


def assert_same_output(a, b):
    """Same lines; scores (printed with 4 decimals) to 2e-4, soft alignments (6 decimals) to 2e-6."""
    pa, pb = parsed(a), parsed(b)
    assert pa.keys() == pb.keys() and pa
    for key in pa:
        assert pa[key][0] == pb[key][0], key
        assert pa[key][1] == pytest.approx(pb[key][1], abs=2e-6 if key[0] == "A" else 2e-4), key


GENERATE = [
    "fairseq-generate",
    "bin",
    "--user-dir",
    USER_DIR,
    "--path",
    "ck/checkpoint_last.pt",
    "--beam",
    "4",
    "--batch-size",
    "16",
    "--max-len-a",
    "1.2",
    "--max-len-b",
    "5",
    "--required-batch-size-multiple",
    "1",
]


@pytest.mark.slow
def test_fairseq_generate_translation_mdn_equals_translation(trained_tiny):
    ref = run_cli(GENERATE + ["--task", "translation"], trained_tiny).out
    fast = run_cli(GENERATE + ["--task", "translation_mdn"], trained_tiny).out
    assert "fast generator not used" not in fast
    assert sum(k == "H" for k, _ in parsed(fast)) == 60
    assert len({parsed(fast)["H", str(i)][0] for i in range(60)}) >= 3  # not one output for every sentence
    assert_same_output(ref, fast)
    slow = run_cli(GENERATE + ["--task", "translation_mdn", "--no-fast-generator", "--prefix-size", "1"], trained_tiny)
    assert sum(k == "H" for k, _ in parsed(slow.out)) == 60


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_fairseq_generate_print_alignment_equals_translation(trained_tiny, kind):
    flags = ["--print-alignment", kind]
    ref = run_cli(GENERATE + flags + ["--task", "translation"], trained_tiny).out
    fast = run_cli(GENERATE + flags + ["--task", "translation_mdn"], trained_tiny).out
    assert "fast generator not used" not in fast
    assert sum(k == "A" for k, _ in parsed(fast)) == 60
    assert_same_output(ref, fast)


@pytest.mark.slow
def test_fairseq_generate_fp16_equals_translation(trained_tiny):
    """--fp16 on CPU: the same output as fairseq's generator, to the last printed digit."""
    flags = ["--fp16", "--print-alignment", "soft"]
    ref = run_cli(GENERATE + flags + ["--task", "translation"], trained_tiny).out
    fast = run_cli(GENERATE + flags + ["--task", "translation_mdn"], trained_tiny).out
    assert "fast generator not used" not in fast
    lines = [[line for line in out.splitlines() if line[:2] in ("H-", "D-", "P-", "A-")] for out in (ref, fast)]
    assert len(lines[0]) == 4 * 60 and lines[0] == lines[1]


@pytest.mark.slow
def test_hub_attention_and_alignment_equal_fairseqs(trained_tiny):
    from fairseq.models.transformer import TransformerModel

    hub = TransformerModel.from_pretrained(str(trained_tiny / "ck"), "checkpoint_last.pt", str(trained_tiny / "bin"))
    lines = (trained_tiny / "test.en").read_text(encoding="utf-8").splitlines()[:12]
    tokens = [hub.encode(line) for line in lines]
    for kwargs in ({}, {"print_alignment": "hard"}):
        hub.task.cfg.no_fast_generator = False
        fast = hub.generate(tokens, beam=4, max_len_b=20, **kwargs)
        assert isinstance(hub.task.build_generator(hub.models, hub.cfg.generation), FastSequenceGenerator)
        hub.task.cfg.no_fast_generator = True
        ref = hub.generate(tokens, beam=4, max_len_b=20, **kwargs)
        assert_same(ref, fast)
        assert all(h["attention"].numel() > 0 for hs in fast for h in hs)
        assert all(len(h["alignment"]) > 0 for hs in fast for h in hs) == bool(kwargs)


@pytest.mark.slow
def test_fairseq_interactive_translation_mdn(trained_tiny):
    common = [
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
    ]
    text = "A man in an orange hat .\nTwo dogs play in the snow .\n"
    assert_same_output(
        run_cli(common + ["--task", "translation"], trained_tiny, stdin=text).out,
        run_cli(common + ["--task", "translation_mdn"], trained_tiny, stdin=text).out,
    )
