"""mdn-bench --ctranslate2: CTranslate2's fairseq converter on the plugin's tiny models, and its rows.

The tests that run CTranslate2 need the optional extra (``pip install -e ".[bench]"``, which CI installs);
without it they are skipped, and the missing-package message is tested instead."""

import importlib.util
import json
import sys

import pytest
import torch

from conftest import build_model
from mdn_fairseq import bench
from mdn_fairseq.bench.ct2 import CT2Generator, ct2_models, plain_equivalent, plain_reason, require_ctranslate2
from mdn_fairseq.bench.inputs import make_batches, random_sentences
from mdn_fairseq.bench.models import synthetic_models
from mdn_fairseq.errors import MDNError

needs_ct2 = pytest.mark.skipif(
    importlib.util.find_spec("ctranslate2") is None,
    reason="ctranslate2 is not installed (optional extra: pip install -e '.[bench]')",
)
TINY = ["--src-vocab", "300", "--tgt-vocab", "200", "--batch-size", "4", "--num-sentences", "6", "--out-len", "6",
        "--repeats", "1", "--beam", "2", "--threads", "1", "--peak-size", "64"]  # fmt: skip


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 -> ImportError
    with pytest.raises(MDNError, match=r"--ctranslate2 needs the ctranslate2 package.*pip install"):
        require_ctranslate2()
    with pytest.raises(MDNError, match=r"pip install 'mdn-fairseq\[bench\]'"):
        bench.run(["--synthetic", "mdn_tiny", "--ctranslate2"])


def test_plain_and_its_equivalent():
    assert plain_reason(build_model("mdn_transformer_tiny")) is None
    mdn = build_model("mdn_tiny")
    assert "NarrowMultiheadAttention" in plain_reason(mdn) or "MDNDecoderLayer" in plain_reason(mdn)
    eq = plain_equivalent(mdn, mdn.encoder.dictionary, mdn.decoder.dictionary, seed=1)
    assert plain_reason(eq) is None
    a = eq.args
    assert (a.encoder_layers, a.decoder_layers, a.decoder_attention_heads, a.decoder_ffn_embed_dim) == (4, 1, 4, 128)
    assert eq.decoder.output_projection.weight.shape == (len(mdn.decoder.dictionary), 64)


@needs_ct2
def test_converted_model_scores_as_fairseq():
    """The converter maps every weight: CTranslate2's token log-probabilities of a given target equal the
    fairseq model's (fp32), for the plugin's plain model and for MDN's plain equivalent."""
    models = synthetic_models(["mdn_transformer_tiny", "mdn_tiny"], 300, 200, seed=1)
    converted = ct2_models(models, True, 1, "cpu", 1, False, notes := [])
    assert [(m.name, m.engine.compute_type) for m in converted] == [
        ("mdn_transformer_tiny", "float32"),
        ("mdn_transformer_tiny", "int8"),
        ("plain 4+1 (mdn_tiny's dims)", "float32"),
        ("plain 4+1 (mdn_tiny's dims)", "int8"),
    ] and notes == []
    for m in converted[::2]:
        src = [5, 17, 42, 9, 2]
        tgt = [7, 8, 150, 3]
        src_sym = [m.src_dict[i] for i in src[:-1]]
        tgt_sym = [m.tgt_dict[i] for i in tgt]
        ct2 = m.engine.translator.score_batch([src_sym], [tgt_sym])[0].log_probs
        eos = m.tgt_dict.eos()
        with torch.no_grad():
            logits, _ = m.model(torch.tensor([src]), torch.tensor([len(src)]), torch.tensor([[eos] + tgt]))
        lprobs = torch.log_softmax(logits[0], dim=-1).gather(1, torch.tensor([tgt + [eos]]).t()).squeeze(1)
        assert torch.allclose(torch.tensor(ct2), lprobs, atol=1e-4), m.name


@needs_ct2
def test_generator_keeps_the_fixed_length():
    m = ct2_models(synthetic_models(["mdn_transformer_tiny"], 300, 200, seed=1), True, 1, "cpu", 1, False, [])[0]
    batch = make_batches(random_sentences(3, 300, seed=2), 3, m.src_dict.pad(), m.src_dict.eos())[0]
    hypos = CT2Generator(m, beam=2, out_len=6).generate(None, batch)
    assert [len(h) for h in hypos] == [1, 1, 1]
    assert all(len(h[0]["tokens"]) == 7 and h[0]["tokens"][-1] == m.tgt_dict.eos() for h in hypos)


@needs_ct2
def test_ctranslate2_rows(tmp_path):
    js = tmp_path / "t.json"
    result = bench.run(
        ["--synthetic", "mdn_transformer_tiny,mdn_tiny", "--ctranslate2", "--generator", "fast", "--profile",
         "--out-json", str(js), *TINY]
    )  # fmt: skip
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == [
        "mdn_transformer_tiny · fast",
        "mdn_tiny · fast",
        "mdn_transformer_tiny · ctranslate2",
        "mdn_transformer_tiny · ctranslate2 · int8",
        "plain 4+1 (mdn_tiny's dims) · ctranslate2",
        "plain 4+1 (mdn_tiny's dims) · ctranslate2 · int8",
    ]
    for name, r in rows.items():
        assert r["tokens"] == 6 * 7 and r["sent_per_s"]["median"] > 0  # same sentences, fixed length + EOS
        assert r["precision"] == ("int8" if name.endswith("int8") else "fp32")
        assert r["flops"] > 0 and r["pct_of_peak"] > 0
        assert (r["profile_s"] is None) == ("ctranslate2" in name)  # no module hooks in another engine
    assert rows["mdn_transformer_tiny · ctranslate2"]["flops"] == rows["mdn_transformer_tiny · fast"]["flops"]
    assert rows["plain 4+1 (mdn_tiny's dims) · ctranslate2"]["params"] > rows["mdn_tiny · fast"]["params"]
    saved = json.loads(js.read_text())
    assert saved["setting"]["ctranslate2"] and set(saved["peaks"]) == {"fp32", "int8"}
