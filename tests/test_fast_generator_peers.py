"""The lean beam search decodes the paper's peers (AAN, SAN, CAN and Table 7's aan_mdn, can_mdn) with fairseq's
SequenceGenerator results: by its packed route (the peers' layers re-run on its own buffers), through the
model's own incremental forward where the packed route does not replicate a layer, and in half precision
and under CPU autocast (bit for bit)."""

from collections import Counter

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig
from fairseq.sequence_generator import SequenceGenerator, SequenceGeneratorWithAlignment
from test_fast_generator import assert_same, batch, eos_friendly

from conftest import build_model
from mdn_fairseq import bench
from mdn_fairseq.fast_generator import FastSequenceGenerator, decoder_unsupported_reason, unsupported_reason
from mdn_fairseq.fast_generator.compressed import CANSteps
from mdn_fairseq.fast_generator.incremental import IncrementalSteps
from mdn_fairseq.fast_generator.steps import TransformerSteps
from mdn_fairseq.tasks.translation_mdn import TranslationMDNConfig, TranslationMDNTask

PAPER_DIMS = dict(src_vocab=300, tgt_vocab=300, encoder_layers=2)  # Table 7 archs, with a shallow encoder
PEERS = {
    "aan_tiny": lambda: build_model("aan_tiny"),
    "aan_tiny_ffn_prenorm": lambda: build_model(
        "aan_tiny", aan_ffn=True, encoder_normalize_before=True, decoder_normalize_before=True, decoder_learned_pos=True
    ),
    "aan_tiny_no_gating_no_ffn": lambda: build_model("aan_tiny", no_aan_gating=True, no_decoder_ffn=True),
    "aan_mdn": lambda: build_model("aan_mdn", **PAPER_DIMS),
    "san_tiny": lambda: build_model("san_tiny"),
    # pre-norm, one narrow head; the last (alignment) layer reuses the block's cross-attention: no attention
    "san_tiny_prenorm_shared_alignment": lambda: build_model(
        "san_tiny",
        decoder_layers=4,
        san_self_attn_blocks="2,2",
        san_cross_attn_blocks="1,3",
        decoder_normalize_before=True,
        decoder_attention_heads=1,
        decoder_attention_dim=16,
    ),
    "can_tiny": lambda: build_model("can_tiny"),
    "can_tiny_postnorm_one_head": lambda: build_model(
        "can_tiny",
        encoder_normalize_before=False,
        decoder_normalize_before=False,
        decoder_attention_heads=1,
        decoder_attention_dim=16,
        can_value_dim=32,
        tgt_vocab=1037,
    ),
    "can_mdn": lambda: build_model("can_mdn", **PAPER_DIMS),
}
SETTINGS = [
    dict(beam_size=4, max_len_b=12),
    dict(beam_size=5, max_len_a=1.2, max_len_b=2, len_penalty=0.6, unk_penalty=0.5),
    dict(beam_size=3, max_len_b=10, min_len=3, normalize_scores=False, temperature=0.7),
]


def assert_same_peer(ref_out, fast_out, atol=1e-4):
    """:func:`assert_same`; a decoder whose alignment layer has no attention of its own (a SAN layer that reuses
    its block's cross-attention) gives none, in both generators."""
    for ref_hypos, fast_hypos in zip(ref_out, fast_out):
        for r, f in zip(ref_hypos, fast_hypos):
            if r["attention"].numel() == 0:
                assert f["attention"].numel() == 0
                r["attention"] = f["attention"] = torch.zeros(0, len(r["tokens"]))
    assert_same(ref_out, fast_out, atol)


@pytest.fixture(scope="module", params=sorted(PEERS))
def peer(request):
    return eos_friendly(PEERS[request.param]())


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_packed_route_same_as_sequence_generator(peer, setting):
    tgt_dict = peer.decoder.dictionary
    ref = SequenceGenerator([peer], tgt_dict, **setting)
    fast = FastSequenceGenerator([peer], tgt_dict, **setting)
    assert fast.decoder_fallback_reason is None and fast.encoder_fallback_reason is None
    assert type(fast.steps) is (CANSteps if "can" in type(peer).__name__.lower() else TransformerSteps)
    ends = Counter()
    for seed in range(3):
        sample = batch(peer, 6, seed)
        out = fast.generate([peer], sample)
        assert_same_peer(ref.generate([peer], sample), out)
        ends.update(len(h["tokens"]) for hs in out for h in hs)
    assert len(ends) > 2, ends  # hypotheses of several lengths: EOS competes, sentences finish at different steps


def test_packed_route_with_one_sentence(peer):
    """A batch of one sentence (interactive use; the last batch of a test set): the step tensors then keep
    transposed layouts that a batch of several does not (CAN's multi-head sum once failed on a ``view``)."""
    tgt_dict = peer.decoder.dictionary
    setting = dict(beam_size=4, max_len_b=8)
    ref = SequenceGenerator([peer], tgt_dict, **setting)
    fast = FastSequenceGenerator([peer], tgt_dict, **setting)
    for seed in range(2):
        sample = batch(peer, 1, seed)
        assert_same_peer(ref.generate([peer], sample), fast.generate([peer], sample))


def test_packed_route_with_the_encoders_own_forward(peer):
    """min_len = max_len: every hypothesis runs to the last step; the encoder's own forward gives the same."""
    tgt_dict = peer.decoder.dictionary
    setting = dict(beam_size=4, min_len=7, max_len_b=7)
    ref = SequenceGenerator([peer], tgt_dict, **setting)
    fast = FastSequenceGenerator([peer], tgt_dict, **setting)
    fast.enc_attns = None
    for sample in (batch(peer, 5, seed=7), batch(peer, 3, seed=8, min_len=6, max_len=6)):  # padded, unpadded
        out = fast.generate([peer], sample)
        assert_same_peer(ref.generate([peer], sample), out)
        assert {len(h["tokens"]) for hs in out for h in hs} == {8}


@pytest.mark.parametrize("arch", ["aan_tiny", "san_tiny", "can_tiny"])
def test_translation_mdn_task_builds_the_lean_search_for_peers(arch, tmp_path):
    model = build_model(arch)
    model.encoder.dictionary.save(str(tmp_path / "dict.en.txt"))
    model.decoder.dictionary.save(str(tmp_path / "dict.de.txt"))
    task = TranslationMDNTask.setup_task(TranslationMDNConfig(data=str(tmp_path), source_lang="en", target_lang="de"))
    gen = task.build_generator([model], GenerationConfig(beam=4, print_alignment="hard"))
    assert isinstance(gen, FastSequenceGenerator) and gen.decoder_fallback_reason is None


def own_forward(module):
    """Give ``module`` a subclass whose ``forward`` is its own (the same computation), which the packed route
    does not replicate."""
    cls = type(module)
    module.__class__ = type(
        f"Custom{cls.__name__}", (cls,), {"forward": lambda self, *a, **k: cls.forward(self, *a, **k)}
    )
    return module


@pytest.mark.parametrize(
    "arch, module",
    [("aan_tiny", "layers.0.self_attn"), ("san_tiny", "layers.2.self_attn"), ("can_tiny", "layers.1.compressed_attn")],
)
def test_incremental_route_same_as_sequence_generator(arch, module, caplog):
    """A peer layer that the packed route does not replicate: the lean search runs the model's own incremental
    decoder (the reason logged and kept for mdn-bench), with the same results."""
    model = eos_friendly(build_model(arch))
    own_forward(model.decoder.get_submodule(module))
    assert decoder_unsupported_reason(model) is None
    assert unsupported_reason([model], GenerationConfig(beam=4)) is None  # translation_mdn builds the lean search
    tgt_dict = model.decoder.dictionary
    with caplog.at_level("INFO"):
        fast = FastSequenceGenerator([model], tgt_dict, beam_size=4, max_len_b=12)
    assert isinstance(fast.steps, IncrementalSteps) and "has its own forward" in fast.decoder_fallback_reason
    assert f"runs its own incremental decoder ({fast.decoder_fallback_reason})" in caplog.text
    assert fast.decoder_fallback_reason in fast.encoder_fallback_reason  # mdn-bench's note
    ref = SequenceGenerator([model], tgt_dict, beam_size=4, max_len_b=12)
    for seed in range(3):
        sample = batch(model, 6, seed)
        assert_same(ref.generate([model], sample), fast.generate([model], sample))


def test_non_peer_decoders_are_still_handed_over():
    """The incremental route is for the peers' decoders: fairseq's Transformer with an option the packed route
    does not replicate still goes to fairseq's generator, with the reason."""
    model = build_model("mdn_transformer_tiny", cross_self_attention=True)
    assert decoder_unsupported_reason(model) == "--cross-self-attention"
    assert unsupported_reason([model], GenerationConfig(beam=4)) == "--cross-self-attention"


@pytest.mark.parametrize("precision", ["autocast_bf16", "bf16", "fp16"])
@pytest.mark.parametrize("arch", ["aan_tiny", "san_tiny", "can_tiny"])
def test_half_precision_and_autocast_are_fairseqs(arch, precision):
    """In half precision (a half model, or a float32 model under CPU autocast, as `mdn-bench --bf16` runs it)
    the lean search gives fairseq's results bit for bit (see mdn_fairseq.fast_generator.search)."""
    model = eos_friendly(build_model(arch, tgt_vocab=1000))
    if precision != "autocast_bf16":
        model = model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "autocast_bf16" else torch.no_grad()
    tgt_dict = model.decoder.dictionary
    ref = SequenceGenerator([model], tgt_dict, beam_size=4, max_len_b=12)
    fast = FastSequenceGenerator([model], tgt_dict, beam_size=4, max_len_b=12)
    for seed in range(3):
        sample = batch(model, 8, seed)
        with context:
            want, got = ref.generate([model], sample), fast.generate([model], sample)
        assert_same(want, got, atol=0)
        assert {h["score"].dtype for hs in got for h in hs} == {torch.float32}


@pytest.mark.parametrize("arch", ["aan_tiny", "san_tiny", "can_tiny"])
def test_print_alignment_equals_sequence_generator_with_alignment(arch):
    model = eos_friendly(build_model(arch))
    tgt_dict = model.decoder.dictionary
    ref = SequenceGeneratorWithAlignment([model], tgt_dict, print_alignment="hard", beam_size=4, max_len_b=10)
    fast = FastSequenceGenerator([model], tgt_dict, print_alignment="hard", beam_size=4, max_len_b=10)
    sample = batch(model, 6, seed=2)
    got = fast.generate([model], sample)
    assert_same(ref.generate([model], sample), got)
    assert all(len(h["alignment"]) > 0 for hs in got for h in hs)


def test_bench_runs_the_peers_with_both_generators_and_bf16(tmp_path):
    """mdn-bench --synthetic with the peers: a row per model and generator (no "no fast row" note), the module
    profile, and with --bf16 (on a CPU with bf16) the lean search's bf16 rows too."""
    from mdn_fairseq.bench.models import autocast_dtype

    models = ["aan_tiny", "san_tiny", "can_tiny", "mdn_tiny"]
    result = bench.run(
        ["--synthetic", ",".join(models), "--src-vocab", "300", "--tgt-vocab", "200", "--batch-size", "4",
         "--num-sentences", "4", "--out-len", "5", "--repeats", "1", "--warmup", "0", "--beam", "2", "--threads", "1",
         "--peak-size", "64", "--profile", "--bf16", "--out-json", str(tmp_path / "t.json")]
    )  # fmt: skip
    rows = {r["row"]: r for r in result["rows"]}
    variants = [""] + ([" · bf16"] if autocast_dtype("cpu") is not None else [])
    want = {f"{m} · {gen}{v}" for m in models for gen in ("fairseq", "fast") for v in variants}
    assert set(rows) == want, result["notes"]
    assert not [n for n in result["notes"] if "no fast row" in n or "not run" in n]
    for r in rows.values():
        assert r["sentences"] == 4 and r["tokens"] == 4 * 6
