"""mdn-bench --floor: the kernel floor of a row (its matrix products, attention and log_softmax re-timed
alone at the recorded shapes); well-formed, counted from the real pass, fp32 CPU rows only."""

import json

import pytest
import torch
from test_benchmark import TINY, table_rows

from conftest import build_model
from mdn_fairseq import bench
from mdn_fairseq.bench import floor
from mdn_fairseq.bench.inputs import make_batches, random_sentences
from mdn_fairseq.bench.measure import Row, build_generator
from mdn_fairseq.bench.models import Model
from mdn_fairseq.bench.synthetic import synthetic_dictionary


def tiny_row(kind: str, variant=None, sentences=6, batch_size=4, out_len=5) -> Row:
    model = build_model("mdn_tiny", src_vocab=300, tgt_vocab=200)
    src, tgt = synthetic_dictionary(300), synthetic_dictionary(200)
    m = Model("mdn_tiny", model, src, tgt, 0, variant=variant)
    batches = make_batches(random_sentences(sentences, 300, seed=1), batch_size, src.pad(), src.eos())
    return Row(m, kind, build_generator(kind, m, 2, out_len), batches)


@pytest.mark.parametrize("kind", ["fairseq", "fast"])
def test_floor_counts_the_real_calls(kind):
    row = tiny_row(kind)
    result = floor.kernel_floor(row, out_len=5, calls=2)
    assert set(result["kernel_calls"]) == set(result["floor_by_kernel_s"])
    assert result["floor_s"] == pytest.approx(sum(result["floor_by_kernel_s"].values())) and result["floor_s"] > 0
    # one log_softmax over the hypotheses per decoding step: out_len tokens and EOS, for each of the 2 batches
    assert result["kernel_calls"]["aten::_log_softmax"] == 2 * (5 + 1)


def test_calls_inside_a_kernel_count_with_it():
    q = k = v = torch.randn(2, 4, 9, 8)
    calls = floor.record_calls(lambda: torch.ops.aten._scaled_dot_product_attention_math(q, k, v))
    assert [(name, count) for name, _, count in calls] == [(floor.SDPA_MATH, 1)]  # not its bmm's too
    calls = floor.record_calls(lambda: (torch.bmm(q[0], k[0].transpose(1, 2)), torch.log_softmax(q, -1)))
    assert sorted(name for name, _, _ in calls) == ["aten::_log_softmax", "aten::bmm"]


@pytest.mark.parametrize(
    "name,shapes,out_shape",
    [
        (floor.LINEAR, ((3, 5, 16), (24, 16), (24,), (), (), ()), (15, 24)),
        (floor.LINEAR, ((7, 16), (24, 16), (), (), (), ()), (7, 24)),
        ("aten::addmm", ((24,), (7, 16), (16, 24), (), ()), (7, 24)),
        ("aten::addmm", ((), (7, 16), (16, 24), (), ()), (7, 24)),  # a scalar bias
        ("aten::mm", ((7, 16), (16, 24)), (7, 24)),
        ("aten::bmm", ((4, 1, 16), (4, 16, 9)), (4, 1, 9)),
        (floor.SDPA, ((2, 4, 9, 8), (2, 4, 9, 8), (2, 4, 9, 8), (), (), (2, 1, 1, 9), ()), (2, 4, 9, 8)),
        (floor.SDPA, ((2, 4, 9, 8), (2, 4, 9, 8), (2, 4, 9, 8), (), (), (), ()), (2, 4, 9, 8)),  # no mask
        (floor.SDPA_MATH, ((2, 4, 9, 8), (2, 4, 9, 8), (2, 4, 9, 8), (9, 9), (), ()), (2, 4, 9, 8)),
        ("aten::_log_softmax", ((6, 50), (), (), (6, 50)), (6, 50)),
    ],
)
def test_each_kernel_is_rebuilt_from_its_shapes(name, shapes, out_shape):
    out = floor.KERNELS[name](shapes)()
    out = out[0] if isinstance(out, tuple) else out  # the attention ops also return their logsumexp/weights
    assert tuple(out.shape) == out_shape
    assert floor.best_seconds(floor.KERNELS[name](shapes), calls=2) > 0


def test_only_fp32_cpu_rows_get_a_floor():
    assert floor.floor_applies(tiny_row("fast"))
    assert not floor.floor_applies(tiny_row("fast", variant="int8"))
    assert not floor.floor_applies(tiny_row("fast", variant="bf16"))


def test_cli_floor_table_and_json(tmp_path):
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    bench.run(TINY + ["--floor", "--int8", "--out-md", str(md), "--out-json", str(js)])
    header, rows = table_rows(md.read_text(), "| model | ms/batch measured")
    assert header.startswith("| model | ms/batch measured | ms/batch floor | % of peak measured |")
    names = [r[0] for r in rows]
    assert names == [n for n in names if "int8" not in n] and len(names) == 4  # 2 models x 2 generators, fp32
    for r in rows:
        assert float(r[1]) > 0 and float(r[2]) > 0 and r[4].endswith("%") and "_log_softmax" in r[6]
    records = json.loads(js.read_text())["rows"]
    for rec in records:
        if rec["variant"] == "int8":
            assert rec["floor"] is None and rec["floor_pct_of_peak"] is None
        else:
            assert rec["floor"]["floor_s"] > 0 and rec["floor_pct_of_peak"] > 0
