"""``mdn-bench``: translation speed of fairseq models, side by side in one process.

Every model (``--synthetic ARCH,...`` at the paper's dims, or ``--path CKPT`` trained checkpoints)
is run with every generator (``--generator fairseq,fast``: fairseq's ``SequenceGenerator`` and
:class:`~mdn_fairseq.fast_generator.FastSequenceGenerator`) on the same sentences; repeats
alternate the rows (each repeat starts one row later) so drift hits all alike.  Reported: sentences/s
and target tokens/s (median, min-max over repeats, after warm-up), parameters, peak memory and the
speedup over the first row (median and range of the per-repeat ratios), as a markdown table in the
layout of the paper's Table 4 and as JSON with the full setting.  ``--profile`` adds time per module
(the paper's Table 1); ``--sweep batch|beam|bpe`` repeats the measurement over a range and writes
CSV and a PNG.

Synthetic models are random-initialised and forced to a fixed output length (``--out-len``;
``min_len = max_len``, so EOS cannot come early; every hypothesis is checked).  Tokens counted
per sentence are those of the best hypothesis, EOS included (as ``fairseq-generate`` counts them).
"""

import argparse
import copy
import ctypes
import csv
import json
import logging
import os
import platform
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

import mdn_fairseq  # noqa: F401  (registers the plugin's models and tasks)
from fairseq.data import Dictionary, data_utils
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
from fairseq.sequence_generator import SequenceGenerator

from .fast_generator import FastSequenceGenerator, decoder_unsupported_reason

logger = logging.getLogger("mdn_fairseq.benchmark")

GENERATORS = ("fairseq", "fast")
SWEEP_DEFAULTS = {"batch": [1, 8, 16, 32, 64, 128], "beam": [1, 2, 4, 8, 16], "bpe": [2000, 10000, 20000, 32000]}
REGIONS = ("enc attn", "enc FFN", "dec attn", "dec FFN", "output proj")


# ------------------------------------------------------------------------------------------------
# models and input


def synthetic_dictionary(size: int) -> Dictionary:
    """A fairseq dictionary of ``size`` symbols (the 4 specials, then w0, w1, ...)."""
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


class _DictionaryTask:
    """What fairseq's ``build_model`` needs from a task: the two dictionaries."""

    def __init__(self, source_dictionary, target_dictionary):
        self.source_dictionary = source_dictionary
        self.target_dictionary = target_dictionary


def paper_vocab(arch: str):
    """(source, target) vocabulary sizes of the paper's comparison: 32K/10K for MDN, 32K/32K otherwise."""
    mdn = arch.startswith("mdn") and not arch.startswith("mdn_transformer")
    return (32000, 10000) if mdn else (32000, 32000)


def build_synthetic(arch: str, src_vocab: int, tgt_vocab: int, seed: int = 1) -> nn.Module:
    """A random-initialised ``arch`` as fairseq builds it from the command line (arch defaults, then model)."""
    if arch not in ARCH_MODEL_REGISTRY:
        raise SystemExit(f"--synthetic: unknown architecture {arch!r}; e.g. transformer, mdn, mdn_tiny, "
                         "mdn_transformer_tiny (any name `fairseq-train --arch` accepts)")
    torch.manual_seed(seed)
    args = argparse.Namespace(arch=arch)
    ARCH_CONFIG_REGISTRY[arch](args)
    task = _DictionaryTask(synthetic_dictionary(src_vocab), synthetic_dictionary(tgt_vocab))
    return ARCH_MODEL_REGISTRY[arch].build_model(args, task).eval()


def random_sentences(n: int, vocab: int, seed: int, min_len: int = 20, max_len: int = 30) -> List[torch.Tensor]:
    """``n`` source sentences of ``min_len``..``max_len`` tokens (EOS included) drawn from ``vocab``."""
    g = torch.Generator().manual_seed(seed)
    eos, first = Dictionary().eos(), Dictionary().nspecial
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [torch.cat([torch.randint(first, vocab, (length - 1,), generator=g), torch.tensor([eos])])
            for length in lengths]


def read_sentences(path: str, dictionary: Dictionary) -> List[torch.Tensor]:
    """Lines of a text file (tokenised and BPE'd as the model's training data), encoded with ``dictionary``."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise SystemExit(f"--input {path}: no sentences (one tokenised sentence per line expected)")
    return [dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).long() for line in lines]


def make_batches(sentences: List[torch.Tensor], batch: int, pad: int, eos: int) -> List[Dict]:
    """fairseq batches (left-padded sources) of ``batch`` sentences, sorted by length as fairseq sorts them."""
    order = sorted(range(len(sentences)), key=lambda i: (sentences[i].numel(), i))
    batches = []
    for start in range(0, len(order), batch):
        ids = order[start : start + batch]
        src = [sentences[i] for i in ids]
        batches.append({
            "id": torch.tensor(ids),
            "nsentences": len(ids),
            "net_input": {
                "src_tokens": data_utils.collate_tokens(src, pad, eos, left_pad=True),
                "src_lengths": torch.tensor([s.numel() for s in src]),
            },
        })
    return batches


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy with every ``nn.Linear`` dynamically quantized to int8 (CPU; approximate)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "skip_embed_dim_check"):
            module.skip_embed_dim_check = True  # fairseq attention then calls its (quantized) projections
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@dataclass
class Model:
    name: str
    model: nn.Module
    src_dict: Dictionary
    tgt_dict: Dictionary
    params: int
    int8: bool = False
    input: Optional[str] = None  # --path: its source sentences


@dataclass
class Row:
    """One line of the table: a model with a generator."""

    model: Model
    generator_kind: str
    generator: nn.Module
    batches: List[Dict]
    seconds: List[float] = field(default_factory=list)
    sentences: int = 0
    tokens: int = 0
    peak_mem_mib: Optional[float] = None
    profile: Optional[Dict[str, float]] = None

    @property
    def name(self):
        return f"{self.model.name} · {self.generator_kind}" + (" · int8" if self.model.int8 else "")


def build_generator(kind: str, model: Model, beam: int, out_len: Optional[int], max_len_a: float,
                    max_len_b: int) -> nn.Module:
    if out_len is not None:  # fixed length: EOS is masked until step out_len, then forced
        lengths = dict(min_len=out_len, max_len_a=0, max_len_b=out_len)
    else:
        lengths = dict(max_len_a=max_len_a, max_len_b=max_len_b)
    cls = SequenceGenerator if kind == "fairseq" else FastSequenceGenerator
    return cls([model.model], model.tgt_dict, beam_size=beam, **lengths)


# ------------------------------------------------------------------------------------------------
# measuring


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def _status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the next peak is this block's
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated``, or on CPU the rise of the process's
    peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) over its RSS at the start."""

    def __init__(self, device: str):
        self.device = device
        self.method = ("torch.cuda.max_memory_allocated" if device == "cuda" else
                       "rise of the peak RSS over the RSS before the pass (malloc_trim, then VmHWM reset "
                       "through /proc/self/clear_refs); model weights excluded")
        self.mib: Optional[float] = None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start = 0
        else:
            self.start = _status_kib("VmRSS") if _reset_peak_rss() else None
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.mib = torch.cuda.max_memory_allocated() / 2**20
        elif self.start is not None:
            peak = _status_kib("VmHWM")
            self.mib = None if peak is None else max(0, peak - self.start) / 1024
        return False


def translate(row: Row, batches: List[Dict], out_len: Optional[int]):
    """Translate ``batches`` with ``row``; (sentences, best-hypothesis tokens). Checks fixed lengths."""
    sentences = tokens = 0
    for sample in batches:
        hypos = row.generator.generate([row.model.model], sample)
        sentences += len(hypos)
        tokens += sum(len(h[0]["tokens"]) for h in hypos)
        if out_len is not None:
            bad = {len(h["tokens"]) for hs in hypos for h in hs} - {out_len + 1}
            if bad:
                raise RuntimeError(f"{row.name}: hypotheses of {sorted(bad)} tokens, expected --out-len {out_len} "
                                   "+ EOS; the fixed-length setting is broken")
    return sentences, tokens


def time_rows(rows: List[Row], repeats: int, warmup: int, out_len: Optional[int], device: str):
    """``warmup`` batches per row, then ``repeats`` passes over all batches, rows rotating each pass.
    Under ``no_grad``, as ``fairseq-generate`` runs its generator."""
    with torch.no_grad():
        for row in rows:
            for sample in row.batches[:1] * warmup:
                row.generator.generate([row.model.model], sample)
        for rep in range(repeats):
            for i in range(len(rows)):
                row = rows[(rep + i) % len(rows)]
                with PeakMemory(device) as mem:
                    _sync(device)
                    start = time.perf_counter()
                    row.sentences, row.tokens = translate(row, row.batches, out_len)
                    _sync(device)
                    row.seconds.append(time.perf_counter() - start)
                if mem.mib is not None:
                    row.peak_mem_mib = max(row.peak_mem_mib or 0.0, mem.mib)


def _spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def row_stats(row: Row, first: Row) -> Dict:
    """Speeds over the repeats, and the speedup over ``first`` repeat by repeat (the rows of one
    repeat run back to back, so their ratio cancels most drift)."""
    return {
        "sent_per_s": _spread([row.sentences / s for s in row.seconds]),
        "tok_per_s": _spread([row.tokens / s for s in row.seconds]),
        "speedup": _spread([(row.sentences / s) / (first.sentences / f) for s, f in zip(row.seconds, first.seconds)]),
        "seconds": row.seconds,
    }


# ------------------------------------------------------------------------------------------------
# profile: time per module (the paper's Table 1)


class ModuleTimer:
    """Wall time inside groups of modules, from forward pre/post hooks (``time.perf_counter``).

    A module region counts the time while any of its modules runs (nested calls once); a span
    region runs from one module's start to another's end (the FFN: ``fc1`` .. ``fc2``).
    """

    def __init__(self, model: nn.Module, generator: nn.Module, device: str):
        self.device = device
        self.totals = {name: 0.0 for name in REGIONS}
        self._depth = {name: 0 for name in REGIONS}
        self._start = {name: 0.0 for name in REGIONS}
        self._handles = []
        enc, dec = model.encoder, model.decoder
        for layer in getattr(enc, "layers", []):
            self._module("enc attn", layer.self_attn)
            self._span("enc FFN", layer.fc1, layer.fc2)
        for layer in getattr(dec, "layers", []):
            for attn in (layer.self_attn, getattr(layer, "encoder_attn", None)):
                if attn is not None:
                    self._module("dec attn", attn)
            if getattr(layer, "encoder_attn", None) is not None:  # the fast path projects keys/values itself
                self._module("dec attn", layer.encoder_attn.k_proj, layer.encoder_attn.v_proj)
            if getattr(layer, "fc1", None) is not None:
                self._span("dec FFN", layer.fc1, layer.fc2)
        if isinstance(generator, FastSequenceGenerator):
            self._module("dec attn", *generator.self_attns, *generator.cross_attns)
            if generator.enc_attns is not None:
                self._module("enc attn", *generator.enc_attns)
        if getattr(dec, "output_projection", None) is not None:
            self._module("output proj", dec.output_projection)

    def _now(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def _enter(self, name):
        if self._depth[name] == 0:
            self._start[name] = self._now()
        self._depth[name] += 1

    def _leave(self, name):
        self._depth[name] -= 1
        if self._depth[name] == 0:
            self.totals[name] += self._now() - self._start[name]

    def _module(self, name, *modules):
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(lambda *_: self._enter(name)))
            self._handles.append(m.register_forward_hook(lambda *_: self._leave(name)))

    def _span(self, name, first, last):
        self._handles.append(first.register_forward_pre_hook(lambda *_: self._enter(name)))
        self._handles.append(last.register_forward_hook(lambda *_: self._leave(name)))

    def remove(self):
        for h in self._handles:
            h.remove()


def profile_row(row: Row, out_len: Optional[int], device: str) -> Dict[str, float]:
    """Seconds per region over one pass of ``row``'s batches, plus ``other`` and ``total``."""
    timer = ModuleTimer(row.model.model, row.generator, device)
    try:
        with torch.no_grad():
            _sync(device)
            start = time.perf_counter()
            translate(row, row.batches, out_len)
            _sync(device)
            total = time.perf_counter() - start
    finally:
        timer.remove()
    result = dict(timer.totals)
    result["other"] = total - sum(timer.totals.values())
    result["total"] = total
    return result


# ------------------------------------------------------------------------------------------------
# output


def hardware(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        name = m.group(1).strip() if m else platform.processor()
    except OSError:
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} logical CPUs"


def _fmt(stats) -> str:
    return f"{stats['median']:.1f} ({stats['min']:.1f}–{stats['max']:.1f})"


def speed_table(rows: List[Row]) -> str:
    lines = ["| model | #params | sent/s | tok/s | speedup | peak mem (MiB) |", "|---|---|---|---|---|---|"]
    for row in rows:
        st = row_stats(row, rows[0])
        up = st["speedup"]
        mem = "n/a" if row.peak_mem_mib is None else f"{row.peak_mem_mib:.1f}"
        lines.append(f"| {row.name} | {row.model.params / 1e6:.1f}M | {_fmt(st['sent_per_s'])} | "
                     f"{_fmt(st['tok_per_s'])} | {up['median']:.2f}× ({up['min']:.2f}–{up['max']:.2f}) | {mem} |")
    return "\n".join(lines)


def profile_table(rows: List[Row], batches: int) -> str:
    cols = list(REGIONS) + ["other", "total"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        p = row.profile
        cells = [f"{1000 * p[c] / batches:.1f} ({100 * p[c] / p['total']:.0f}%)" for c in cols[:-1]]
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {1000 * p['total'] / batches:.1f} |")
    return "\n".join(lines)


def setting_line(s: Dict) -> str:
    length = f"output length {s['out_len']} (fixed)" if s["out_len"] else "natural output length"
    dev = f"{s['device']}{' fp16' if s['fp16'] else ''}"
    return (f"{s['hardware']}; {dev}, {s['threads']} threads; batch {s['batch']}, beam {s['beam']}, {length}; "
            f"{s['sentences']} sentences, {s['repeats']} repeats after {s['warmup']} warm-up batch(es); "
            f"torch {s['torch']}")


def plot_sweep(points: List[Dict], kind: str, path: str):
    """Speedup over the first row (left) and sentences/s (right) against the swept value."""
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(dict.fromkeys(p["row"] for p in points))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        pts = [p for p in points if p["row"] == name]
        xs = [p["value"] for p in pts]
        ax1.plot(xs, [p["speedup"] for p in pts], marker="o", label=name)
        ax2.plot(xs, [p["sent_per_s"] for p in pts], marker="o", label=name)
    label = {"batch": "batch size (sentences)", "beam": "beam size", "bpe": "target vocabulary size"}[kind]
    values = sorted({p["value"] for p in points})
    for ax, ylabel in ((ax1, f"speedup over {names[0]}"), (ax2, "sentences/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax2.set_yscale("log")
    ax2.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# command line


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mdn-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("models (one of)")
    src.add_argument("--synthetic", metavar="ARCH[,ARCH...]",
                     help="random-initialised models of these fairseq architectures, e.g. transformer,mdn")
    src.add_argument("--path", action="append", metavar="CKPT", help="a trained fairseq checkpoint (repeatable)")
    src.add_argument("--data", action="append",
                     help="--path: the data-bin folder with the checkpoints' dictionaries (once for all, or once "
                     "per --path, in the same order)")
    src.add_argument("--input", action="append",
                     help="--path: text file, one tokenised (BPE'd) source sentence per line (once for all, or once "
                     "per --path: models with different BPE read the same sentences in their own segmentation)")
    src.add_argument("--name", action="append",
                     help="--path: row names, once per --path (default: the checkpoint's folder/file name)")
    src.add_argument("--src-vocab", type=int, help="--synthetic: source vocabulary (default 32000)")
    src.add_argument("--tgt-vocab", type=int,
                     help="--synthetic: target vocabulary of every model (default 10000 for mdn*, else 32000)")
    run = p.add_argument_group("setting")
    run.add_argument("--generator", default="fairseq,fast",
                     help="generators to run each model with: fairseq (SequenceGenerator), fast (FastSequenceGenerator)")
    run.add_argument("--int8", action="store_true",
                     help="also run each model with int8 dynamic quantization (approximate; own rows; CPU)")
    run.add_argument("--batch", type=int, default=64, help="sentences per batch")
    run.add_argument("--beam", type=int, default=4)
    run.add_argument("--out-len", type=int,
                     help="fixed output length (EOS excluded); default 30 with --synthetic, natural with --path")
    run.add_argument("--max-len-a", type=float, default=0, help="without --out-len: max length a*src_len+b")
    run.add_argument("--max-len-b", type=int, default=200)
    run.add_argument("--num-sentences", type=int, help="--synthetic: sentences per pass (default 2 x --batch)")
    run.add_argument("--repeats", type=int, default=3, help="timed passes over all sentences per row")
    run.add_argument("--warmup", type=int, default=1, help="untimed batches per row first")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count(), help="CPU threads (torch.set_num_threads); default: all cores")
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    run.add_argument("--fp16", action="store_true", help="half precision (with --device cuda)")
    run.add_argument("--profile", action="store_true", help="also time each module group (one extra pass per row)")
    run.add_argument("--sweep", choices=sorted(SWEEP_DEFAULTS), help="repeat over batch sizes, beams or target vocabularies")
    run.add_argument("--sweep-values", help="comma-separated values for --sweep (defaults: " + "; ".join(
        f"{k}: {','.join(map(str, v))}" for k, v in SWEEP_DEFAULTS.items()) + ")")
    out = p.add_argument_group("output")
    out.add_argument("--out-md", help="write the markdown tables here (they are printed too)")
    out.add_argument("--out-json", help="write the results and the full setting here")
    out.add_argument("--out-csv", help="--sweep: CSV (default: sweep_<kind>.csv next to --out-md/--out-json, or here)")
    out.add_argument("--out-png", help="--sweep: plot (default: like --out-csv)")
    return p


def check_args(args, parser):
    def fail(msg):
        parser.error(msg)

    if bool(args.synthetic) == bool(args.path):
        fail("give either --synthetic ARCH[,ARCH...] or --path CKPT (repeatable), not both and not neither")
    if args.path and not (args.data and args.input):
        fail("--path needs --data DIR (the dictionaries) and --input FILE (one tokenised sentence per line)")
    if args.synthetic and args.input:
        fail("--input is for --path checkpoints; --synthetic draws random sentences (--num-sentences, --seed)")
    kinds = [g.strip() for g in args.generator.split(",") if g.strip()]
    if not kinds or any(k not in GENERATORS for k in kinds):
        fail(f"--generator takes a comma-separated subset of {','.join(GENERATORS)}; got {args.generator!r}")
    args.generators = kinds
    for name in ("batch", "beam", "repeats"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be >= 1")
    if args.warmup < 0 or args.threads < 1:
        fail("--warmup must be >= 0 and --threads >= 1")
    if args.out_len is not None and args.out_len < 1:
        fail("--out-len must be >= 1")
    if args.fp16 and args.device != "cuda":
        fail("--fp16 needs --device cuda (half precision on CPU is slower, not faster)")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail(f"--device cuda: CUDA is not available (torch {torch.__version__}, built with CUDA "
             f"{torch.version.cuda}); run on a GPU machine with a CUDA build of torch, or use --device cpu")
    if args.int8 and args.device != "cpu":
        fail("--int8 uses torch's dynamic quantization, which runs on CPU only: drop --int8 or use --device cpu")
    if args.sweep == "bpe" and not args.synthetic:
        fail("--sweep bpe varies the target vocabulary, which needs --synthetic models (a checkpoint's is fixed)")
    if args.sweep_values and not args.sweep:
        fail("--sweep-values needs --sweep batch|beam|bpe")
    if args.sweep:
        try:
            args.sweep_values = ([int(v) for v in args.sweep_values.split(",")] if args.sweep_values
                                 else SWEEP_DEFAULTS[args.sweep])
        except ValueError:
            fail(f"--sweep-values takes comma-separated integers; got {args.sweep_values!r}")
    if args.synthetic and args.out_len is None:
        args.out_len = 30
    if args.path:
        n = len(args.path)
        for opt in ("data", "input", "name"):
            given = getattr(args, opt)
            if given is None:
                continue
            if len(given) == 1 and opt != "name":
                setattr(args, opt, given * n)
            elif len(given) != n:
                fail(f"--{opt} given {len(given)} times for {n} --path checkpoints: give it once per --path"
                     + ("" if opt == "name" else " (or once for all)"))
        if args.input:
            counts = {}
            for path in dict.fromkeys(args.input):
                if not os.path.isfile(path):
                    fail(f"--input {path}: no such file")
                with open(path, encoding="utf-8") as f:
                    counts[path] = sum(1 for line in f if line.strip())
            if len(set(counts.values())) > 1:
                fail("--input files hold different numbers of sentences (" + ", ".join(
                    f"{p}: {c}" for p, c in counts.items()) + "): give every model the same sentences")


def load_models(args, tgt_vocab_override: Optional[int] = None) -> List[Model]:
    models = []
    if args.synthetic:
        for arch in [a.strip() for a in args.synthetic.split(",") if a.strip()]:
            src_v, tgt_v = paper_vocab(arch)
            src_v = args.src_vocab or src_v
            tgt_v = tgt_vocab_override or args.tgt_vocab or tgt_v
            model = build_synthetic(arch, src_v, tgt_v, seed=args.seed)
            models.append(Model(arch, model, model.encoder.dictionary, model.decoder.dictionary,
                                sum(p.numel() for p in model.parameters())))
    else:
        from fairseq import checkpoint_utils

        for i, path in enumerate(args.path):
            ensemble, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
                [path], arg_overrides={"data": args.data[i]})
            model = ensemble[0].eval()
            name = (args.name[i] if args.name
                    else os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)))
            models.append(Model(name, model, task.source_dictionary, task.target_dictionary,
                                sum(p.numel() for p in model.parameters()), input=args.input[i]))
    if args.int8:
        models += [Model(m.name, quantize_int8(m.model), m.src_dict, m.tgt_dict, m.params, int8=True, input=m.input)
                   for m in models]
    for m in models:
        if args.device == "cuda":
            m.model.cuda()
            if args.fp16:
                m.model.half()
    return models


def make_rows(args, models: List[Model], batch: int, beam: int, notes: List[str]) -> List[Row]:
    if args.synthetic:
        vocab = min(len(m.src_dict) for m in models)
        sentences = random_sentences(args.num_sentences or 2 * batch, vocab, seed=args.seed)
    rows = []
    for m in models:
        sents = sentences if args.synthetic else read_sentences(m.input, m.src_dict)
        batches = make_batches(sents, batch, m.src_dict.pad(), m.src_dict.eos())
        if args.device == "cuda":
            from fairseq import utils

            batches = [utils.move_to_cuda(b) for b in batches]
        for kind in args.generators:
            if kind == "fast":
                reason = decoder_unsupported_reason(m.model)
                if reason is not None:
                    notes.append(f"{m.name}: no fast row ({reason})")
                    continue
            gen = build_generator(kind, m, beam, args.out_len, args.max_len_a, args.max_len_b)
            if kind == "fast" and gen.encoder_fallback_reason is not None:
                notes.append(f"{m.name} · fast: the encoder runs its own forward ({gen.encoder_fallback_reason})")
            rows.append(Row(m, kind, gen, batches))
    return rows


def measure(args, models, batch, beam, notes) -> List[Row]:
    rows = make_rows(args, models, batch, beam, notes)
    time_rows(rows, args.repeats, args.warmup, args.out_len, args.device)
    if args.profile:
        for row in rows:
            row.profile = profile_row(row, args.out_len, args.device)
    return rows


def rows_json(rows: List[Row]) -> List[Dict]:
    out = []
    for row in rows:
        st = row_stats(row, rows[0])
        out.append({"row": row.name, "model": row.model.name, "generator": row.generator_kind, "int8": row.model.int8,
                    "params": row.model.params, "sentences": row.sentences, "tokens": row.tokens, **st,
                    "peak_mem_mib": row.peak_mem_mib, "profile_s": row.profile})
    return out


def run(argv=None) -> Dict:
    """Parse ``argv``, measure, write the outputs; the results (what ``--out-json`` holds)."""
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stderr)
    parser = get_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    torch.set_num_threads(args.threads)
    setting = {
        "hardware": hardware(args.device), "device": args.device, "fp16": args.fp16, "threads": args.threads,
        "batch": args.batch, "beam": args.beam, "out_len": args.out_len,
        "max_len_a": None if args.out_len else args.max_len_a, "max_len_b": None if args.out_len else args.max_len_b,
        "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed, "generators": args.generators,
        "int8": args.int8, "torch": torch.__version__, "python": platform.python_version(),
        "models": args.synthetic or args.path, "input": args.input or "random token ids, 20-30 tokens",
        "tokens_counted": "best hypothesis, EOS included", "timing": "median (min-max) over repeats",
        "speedup": "over the first row, median (min-max) of the per-repeat ratios",
    }
    notes: List[str] = []
    md: List[str] = []
    result: Dict = {"setting": setting}
    mem_method = PeakMemory(args.device).method

    if not args.sweep:
        models = load_models(args)
        rows = measure(args, models, args.batch, args.beam, notes)
        setting["sentences"] = rows[0].sentences
        md += [setting_line(setting), "", speed_table(rows), "", f"Peak memory: {mem_method}."]
        if args.profile:
            nb = len(rows[0].batches)
            md += ["", f"Time per module, ms per batch of {args.batch} (share of total):", "",
                   profile_table(rows, nb)]
        result["rows"] = rows_json(rows)
    else:
        points = []
        models = load_models(args) if args.sweep != "bpe" else None
        if args.sweep == "batch" and not args.num_sentences:
            args.num_sentences = 2 * max(args.sweep_values)  # the same sentences at every batch size
        for value in args.sweep_values:
            batch = value if args.sweep == "batch" else args.batch
            beam = value if args.sweep == "beam" else args.beam
            ms = models if models is not None else load_models(args, tgt_vocab_override=value)
            logger.info("--sweep %s: %s", args.sweep, value)
            rows = measure(args, ms, batch, beam, notes)
            setting["sentences"] = rows[0].sentences
            for r in rows_json(rows):
                points.append({"value": value, "row": r["row"], "params": r["params"],
                               "sent_per_s": r["sent_per_s"]["median"], "tok_per_s": r["tok_per_s"]["median"],
                               "speedup": r["speedup"]["median"], "profile_s": r["profile_s"]})
        names = list(dict.fromkeys(p["row"] for p in points))
        head = "| model | " + " | ".join(f"{args.sweep} {v}" for v in args.sweep_values) + " |"
        lines = [head, "|---" * (len(args.sweep_values) + 1) + "|"]
        for name in names:
            cells = [next((f"{p['sent_per_s']:.1f} ({p['speedup']:.2f}×)" for p in points
                           if p["row"] == name and p["value"] == v), "–") for v in args.sweep_values]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        md += [setting_line({**setting, args.sweep: "swept"}), "", "sent/s (speedup over the first row):", "",
               "\n".join(lines)]
        base = os.path.dirname(args.out_md or args.out_json or "") or "."
        csv_path = args.out_csv or os.path.join(base, f"sweep_{args.sweep}.csv")
        png_path = args.out_png or os.path.splitext(csv_path)[0] + ".png"
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([args.sweep, "row", "params", "sent_per_s", "tok_per_s", "speedup"])
            for p in points:
                w.writerow([p["value"], p["row"], p["params"], f"{p['sent_per_s']:.3f}", f"{p['tok_per_s']:.3f}",
                            f"{p['speedup']:.4f}"])
        plot_sweep(points, args.sweep, png_path)
        md += ["", f"CSV: {csv_path}; plot: {png_path}"]
        result["sweep"] = {"kind": args.sweep, "values": args.sweep_values, "points": points,
                           "csv": csv_path, "png": png_path}
    notes = list(dict.fromkeys(notes))
    if notes:
        md += [""] + [f"Note: {n}" for n in notes]
    result["notes"] = notes
    result["memory_method"] = mem_method
    text = "\n".join(md) + "\n"
    print(text)
    if args.out_md:
        with open(args.out_md, "w", encoding="utf-8") as f:
            f.write(text)
    if args.out_json:
        with open(args.out_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv=None):
    """The ``mdn-bench`` console script."""
    run(argv)


if __name__ == "__main__":
    main()
