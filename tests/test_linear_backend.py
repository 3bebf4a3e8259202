"""The lean search's float32 linear layers on oneDNN: same results as F.linear, scoped to generation,
left to F.linear where oneDNN cannot take the input; the benchmark's fast_torch rows and fp32 peak."""

import pytest
import torch
import torch.nn.functional as F
from fairseq.sequence_generator import SequenceGenerator
from test_fast_generator import assert_same, batch, eos_friendly
from torch import nn

from conftest import build_model
from mdn_fairseq.bench.roofline import measure_peak
from mdn_fairseq.errors import MDNError
from mdn_fairseq.fast_generator import FastSequenceGenerator
from mdn_fairseq.fast_generator import linear as lin

pytestmark = pytest.mark.skipif(lin.onednn_unavailable_reason() is not None, reason="torch without oneDNN")


@pytest.fixture(autouse=True)
def every_product_on_onednn(monkeypatch):
    """The tiny test products are below the size where the lean search picks oneDNN: take them all there."""
    monkeypatch.setattr(lin, "MIN_ONEDNN_MACS", 0)


def test_small_products_stay_on_f_linear(monkeypatch):
    monkeypatch.setattr(lin, "MIN_ONEDNN_MACS", 1000)
    w = torch.randn(10, 10)
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[0].shape) or F.linear(*a[:3]))
    lin.linear(torch.randn(9, 10), w)  # 900 multiply-adds: F.linear
    lin.linear(torch.randn(10, 10), w)  # 1000: oneDNN
    assert calls == [torch.Size([10, 10])]


@pytest.mark.parametrize(
    "x_shape,out,bias,view",
    [((7, 48), 33, True, None), ((3, 5, 48), 64, False, None), ((0, 48), 16, True, None), ((48, 9), 20, True, "t")],
)
def test_linear_equals_f_linear(x_shape, out, bias, view):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*x_shape, generator=g)
    x = x.t() if view == "t" else x  # a non-contiguous input
    w = torch.randn(out, x.size(-1), generator=g)
    b = torch.randn(out, generator=g) if bias else None
    y = lin.linear(x, w, b)
    assert y.shape == F.linear(x, w, b).shape
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-4)


def test_onednn_linears_scoped_and_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    quantized = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(16, 8)), {nn.Linear})
    model.add_module("q", quantized)
    calls = []
    model[0].register_forward_hook(lambda *_: calls.append("hook"))
    x = torch.randn(5, 16)
    ref = model[:3](x)
    with torch.no_grad(), lin.onednn_linears(model) as patched:
        assert patched == [model[0], model[2]]  # exactly nn.Linear: the quantized layer keeps its own
        assert lin.on_onednn(model[0]) and not lin.on_onednn(quantized[0])
        out = model[:3](x)
        fused = lin.linear_relu(model[0], x)
    assert calls == ["hook"] * 3  # before, and on oneDNN (plain and fused): module hooks still run
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused, F.relu(F.linear(x, model[0].weight, model[0].bias)), rtol=1e-5, atol=1e-5)
    assert all("forward" not in m.__dict__ for m in model.modules())  # the class's forward is back
    with pytest.raises(RuntimeError, match="boom"), lin.onednn_linears(model):
        raise RuntimeError("boom")
    assert not lin.on_onednn(model[0])  # also after an error
    with lin.onednn_linears(model, enabled=False) as patched:
        assert patched == [] and not lin.on_onednn(model[0])


def test_packed_weights_exact_kept_and_remade():
    torch.manual_seed(0)
    cache = lin.PackedWeights()
    q, k = torch.randn(24, 16), torch.randn(8, 16)
    x, b = torch.randn(5, 16), torch.randn(32)
    stacked = cache.get(q, k)
    assert cache.get(q, k) is stacked and len(cache) == 1  # made once, kept
    torch.testing.assert_close(
        lin.linear(x, torch.cat([q, k]), b, packed=stacked), F.linear(x, torch.cat([q, k]), b), rtol=1e-5, atol=1e-5
    )
    with torch.no_grad():
        k.mul_(-2)  # edited in place: the copy is remade from the new values
    fresh = cache.get(q, k)
    assert fresh is not stacked
    torch.testing.assert_close(lin.linear(x, torch.cat([q, k]), packed=fresh), F.linear(x, torch.cat([q, k])))
    kept = torch.randn(4, 16)
    kept_copy = cache.get(kept)
    del q, k, stacked, fresh
    assert len(cache) == 2
    cache.drop_stale()  # drops the copy of freed weights (q and k's), keeps kept's
    assert len(cache) == 1 and cache.get(kept) is kept_copy


def test_onednn_linears_with_packed_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(5, 16)
    ref = model(x)
    cache = lin.PackedWeights()
    with torch.no_grad(), lin.onednn_linears(model, packed=cache) as patched:
        assert len(cache) == 0 and all(lin.packed_weights(m) is cache for m in patched)  # packed at first use
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
        assert len(cache) == 2
        model[2].weight.mul_(0.5)  # an in-place edit is seen at the next product
        torch.testing.assert_close(model(x), F.linear(F.relu(model[0](x)), model[2].weight, model[2].bias))
    assert all(not {"forward", "onednn_packed"} & set(m.__dict__) for m in model.modules())
    assert lin.packed_weights(model[0]) is None
    with lin.onednn_linears(model):  # without a cache: the plain weights, nothing attached
        assert lin.packed_weights(model[0]) is None and "onednn_packed" not in model[0].__dict__


def test_packed_weights_drop_stale_and_clear(monkeypatch):
    cache = lin.PackedWeights()
    layer, other = nn.Linear(16, 8), nn.Linear(16, 4)
    model = nn.ModuleList([layer, other])
    x = torch.randn(3, 16)
    with torch.no_grad(), lin.onednn_linears(model, packed=cache):
        layer(x), other(x)
    assert len(cache) == 2
    with torch.no_grad():
        other.weight.data = torch.randn(4, 16)  # another tensor: its copy is stale
    with torch.no_grad(), lin.onednn_linears(model, packed=cache):  # each block starts by dropping stale copies
        assert len(cache) == 1
        torch.testing.assert_close(other(x), F.linear(x, other.weight, other.bias))
    with torch.no_grad():
        layer.weight.data.mul_(2)  # through .data: no version bump, so the cache cannot see it ...
    with torch.no_grad(), lin.onednn_linears(model, packed=cache):
        assert not torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))
        cache.clear()  # ... and clear() is the way out
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    with torch.inference_mode():  # inference tensors have no version counter: still packed and used
        w = torch.randn(8, 16)
        assert cache.get(w) is cache.get(w)


def test_generator_follows_edited_weights():
    """The generator keeps packed copies across batches; weights edited between batches (e.g. a model
    reloaded in place) are used at the next batch, as fairseq's generator uses them."""
    model = eos_friendly(build_model("mdn_tiny", tgt_vocab=1000))
    d = model.decoder.dictionary
    ref = SequenceGenerator([model], d, beam_size=4, max_len_b=12)
    fast = FastSequenceGenerator([model], d, beam_size=4, max_len_b=12)
    sample = batch(model, 6, 0)
    assert_same(ref.generate([model], sample), fast.generate([model], sample))
    assert len(fast.packed_weights) > 0
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.fc1.weight.mul_(1.5)
            layer.self_attn.v_proj.weight.mul_(-1)
        model.decoder.output_projection.A.weight.mul_(2)  # the low-rank output layer's A factor
    assert_same(ref.generate([model], sample), fast.generate([model], sample))


def test_inputs_onednn_cannot_take_go_to_f_linear():
    layer, wide = nn.Linear(8, 4), nn.Linear(8, 4).double()
    x = torch.randn(3, 8)
    with lin.onednn_linears(nn.ModuleList([layer, wide])) as patched:
        assert patched == [layer]  # float64 weights are not patched
        y = layer(x)  # autograd through the weights: F.linear, which has a backward
        y.sum().backward()
        assert layer.weight.grad is not None
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts as it does for F.linear
            assert layer(x).dtype == torch.bfloat16
        with torch.no_grad():
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_backend_option():
    model = eos_friendly(build_model("mdn_tiny"))
    d = model.decoder.dictionary
    assert FastSequenceGenerator([model], d, beam_size=2).linear_backend == "onednn"
    assert FastSequenceGenerator([model], d, beam_size=2, linear_backend="torch").linear_backend == "torch"
    with pytest.raises(MDNError, match="unknown; choose from auto, onednn, torch"):
        FastSequenceGenerator([model], d, beam_size=2, linear_backend="mkl")


def test_onednn_missing(monkeypatch):
    monkeypatch.setattr(lin, "onednn_unavailable_reason", lambda: "no oneDNN here")
    assert lin.resolve_backend("auto") == "torch"
    with pytest.raises(MDNError, match="'onednn': no oneDNN here; use 'auto' or 'torch'"):
        lin.resolve_backend("onednn")


@pytest.mark.parametrize("arch", ["mdn_tiny", "mdn_transformer_tiny"])
def test_both_backends_give_sequence_generator_results(arch):
    model = eos_friendly(build_model(arch, tgt_vocab=1000))
    d = model.decoder.dictionary
    ref = SequenceGenerator([model], d, beam_size=4, max_len_b=12)
    for backend in ("onednn", "torch"):
        fast = FastSequenceGenerator([model], d, beam_size=4, max_len_b=12, linear_backend=backend)
        for seed in range(2):
            sample = batch(model, 6, seed)
            assert_same(ref.generate([model], sample), fast.generate([model], sample))
    assert not any(lin.on_onednn(m) for m in model.modules())


def test_fp32_peak_is_the_fastest_of_matmul_and_onednn():
    peak = measure_peak("fp32", "cpu", size=256, calls=2)
    assert set(peak["by_method"]) == {
        "torch.matmul, fp32",
        "oneDNN linear, fp32",
        "oneDNN linear, fp32, packed weight",
    }
    assert peak["gflop_per_s"] == max(peak["by_method"].values()) > 0
    assert peak["method"].startswith(max(peak["by_method"], key=peak["by_method"].get))
