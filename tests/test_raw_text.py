"""Raw text in and out of a model folder of mdn-export (issue 10, item 5): fairseq's hub and
fairseq-interactive tokenise raw sentences exactly as mdn-prepare tokenised the training text (Moses without
escaping and without aggressive dash splits, jieba for Chinese, subword-nmt BPE per side) and detokenise
their output; contradicting --tokenizer/--bpe flags and bad export input are refused with clear errors."""

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from fairseq import options
from fairseq.data import encoders
from fairseq.data.encoders.moses_tokenizer import MosesTokenizer, MosesTokenizerConfig
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf
from sacremoses import MosesDetokenizer

from conftest import USER_DIR, read_slice, run_cli, train
from mdn_fairseq.checkpoint import load_checkpoint
from mdn_fairseq.cli.export import main as export_main
from mdn_fairseq.export import ExportError, export_model
from mdn_fairseq.prepare.tokenise import bpe_model, tokenize_line, tokenizer_description
from mdn_fairseq.tasks.preprocessing import (
    PreprocessingError,
    build_bpe,
    build_tokenizer,
    fairseq_tokenizer,
)
from mdn_fairseq.tokenizers import MosesJiebaTokenizer

# pairs put at the start of the training slice: every character the tests feed is in the vocabulary
SPECIALS = [
    ('Tom & Jerry say "hello" | <ok> & bye.', 'Tom & Jerry sagen "hallo" | <ok> & tschüss.'),
    ("It's a stop-gap - the man's dog-friendly café.", "Es ist eine Notlösung - das hundefreundliche Café des Mannes."),
    ("Jürgen, Zoë and Strauß eat crème brûlée “here”.", "Jürgen, Zoë und Strauß essen Crème brûlée „hier“."),
    ("A <b> tag | a pipe & an 'apostrophe' > less.", "Ein <b> Tag | ein Rohr & ein 'Apostroph' > weniger."),
    ('Tom & Jerry say "hello" & bye.', 'Tom & Jerry sagen "hallo" & tschüss.'),
]
# German sides that Moses' detokenizer restores exactly from their tokens
ROUND_TRIP = [1, 2, 4]
# raw sentences the model never saw
NEW = [
    'A dog & a cat | "run" <fast> - it\'s a stop-gap, über café “now”.',
    "Two men's dogs - a mother-in-law & her kids, aged 5 > 3 < 7.",
    "Schön: Björn’s “crème” & Zoë's Straße [ä ö ü ß é].",
]
RAW = [en for en, _ in SPECIALS] + NEW
SPECIAL_CHARACTERS = re.compile(r"[&'\"|<>\[\]]|\w-\w")
ESCAPES = re.compile(r"&(amp|quot|apos|lt|gt|#124|#91|#93);")


def training_side(sentence: str, codes: Path, lang: str = "en") -> str:
    """mdn-prepare's tokenisation + BPE of one raw sentence (its library functions)."""
    return bpe_model(str(codes)).process_line(tokenize_line(sentence, lang))


@pytest.fixture(scope="module")
def exported(multi30k, tmp_path_factory):
    """mdn-prepare --quick on the SPECIALS + a Multi30k slice, mdn_tiny trained 10 updates, mdn-export."""
    work = tmp_path_factory.mktemp("raw_text")
    data = work / "input"
    data.mkdir()
    for split, n in (("train", 600), ("val", 50), ("test_2016_flickr", 50)):
        for i, lang in enumerate(("en", "de")):
            lines = ([pair[i] for pair in SPECIALS] if split == "train" else []) + read_slice(
                multi30k / f"{split}.{lang}.gz", n
            )
            (data / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_cli(["mdn-prepare", "--task", "multi30k_en_de", "--work", work / "data", "--data", data, "--quick",
             "--workers", "1"])  # fmt: skip
    prepared = work / "data" / "mdn"
    train(prepared, "mdn_tiny", str(work / "ck"), "--task", "translation_mdn", "--lr", "0.002", "--max-tokens",
          "4096", "--max-update", "10", "--no-epoch-checkpoints", "--disable-validation", "--cpu")  # fmt: skip
    checkpoint = work / "ck" / "checkpoint_last.pt"
    model = work / "models" / "mdn"
    out = run_cli(["mdn-export", "--checkpoint", checkpoint, "--prepared", prepared, "--out", model]).out
    assert "--moses-no-escape" in out
    return argparse.Namespace(work=work, prepared=prepared, checkpoint=checkpoint, model=model)


@pytest.mark.slow
def test_hub_tokenises_raw_text_as_training(exported):
    from mdn_fairseq.models.mdn import MDNModel

    codes = exported.prepared / "codes.en"
    train_lines = set((exported.prepared / "train.en").read_text(encoding="utf-8").splitlines())
    escaping = MosesTokenizer(MosesTokenizerConfig(source_lang="en", target_lang="de"))  # fairseq's default
    hubs = [
        MDNModel.from_pretrained(str(exported.model)),
        MDNModel.from_pretrained(str(exported.model), tokenizer="moses", bpe="subword_nmt"),
    ]  # the call
    for hub in hubs:
        for n, sentence in enumerate(RAW):
            tokens = tokenize_line(sentence, "en")
            bpe = training_side(sentence, codes)
            if SPECIAL_CHARACTERS.search(sentence):  # fairseq's default would tokenise them otherwise
                assert escaping.encode(sentence) != tokens
            assert hub.tokenize(sentence) == tokens
            assert hub.apply_bpe(hub.tokenize(sentence)) == bpe
            assert hub.encode(sentence).tolist() == hub.src_dict.encode_line(bpe, add_if_not_exist=False).tolist()
            if n < len(SPECIALS):  # a training sentence, raw, becomes its line of the training data
                assert bpe in train_lines
                assert hub.src_dict.unk() not in hub.encode(sentence).tolist()
    hub = hubs[0]
    for translation in hub.translate(RAW, beam=4, max_len_b=20):
        assert "@@" not in translation and not ESCAPES.search(translation)
    de_codes = exported.prepared / "codes.de"
    for n, (_, de) in enumerate(SPECIALS):  # the decoding side: BPE removed, detokenised, nothing escaped
        tokens = hub.tgt_dict.encode_line(training_side(de, de_codes, "de"), add_if_not_exist=False)
        assert hub.tgt_dict.unk() not in tokens.tolist()
        decoded = hub.decode(tokens)
        assert decoded == MosesDetokenizer("de").detokenize(tokenize_line(de, "de").split())
        assert "@@" not in decoded and not ESCAPES.search(decoded)
        if n in ROUND_TRIP:
            assert decoded == de


def _interactive(exported, *flags, ok=True):
    source = exported.work / "raw.en"
    source.write_text("\n".join(RAW) + "\n", encoding="utf-8")
    return run_cli(["fairseq-interactive", exported.model, "--user-dir", USER_DIR, "--task", "translation_mdn",
                    "--path", exported.model / "model.pt", "-s", "en", "-t", "de", "--beam", "4", "--max-len-b", "20",
                    "--cpu", "--input", source, *flags], exported.work, ok=ok)  # fmt: skip


def _lines(out: str, kind: str):
    rows = [line.split("\t") for line in out.splitlines() if line.startswith(f"{kind}-")]
    return [row[-1] for row in sorted(rows, key=lambda row: int(row[0].split("-")[1]))]


@pytest.mark.slow
def test_interactive_tokenises_raw_text_as_training(exported):
    from fairseq.data import Dictionary

    src_dict = Dictionary.load(str(exported.model / "dict.en.txt"))
    codes = exported.prepared / "codes.en"
    proc = _interactive(exported)
    sources, hyps, detoks = (_lines(proc.stdout, kind) for kind in "SHD")
    assert len(sources) == len(hyps) == len(detoks) == len(RAW)
    for n, (sentence, shown) in enumerate(zip(RAW, sources)):
        bpe = training_side(sentence, codes)
        assert shown == src_dict.string(src_dict.encode_line(bpe, add_if_not_exist=False))
        if n < len(SPECIALS):
            assert shown == bpe  # every token known: the S- line is the training line itself
    for hyp, detok in zip(hyps, detoks):
        assert not ESCAPES.search(hyp)
        assert "@@" not in detok and not ESCAPES.search(detok)
    # fairseq's escaping default is refused, naming the flags (the same settings spelled out are accepted:
    # test_task_builds_the_folders_tokenizer_and_bpe)
    refused = _interactive(exported, "--tokenizer", "moses", ok=False)
    assert refused.returncode != 0
    assert "--moses-no-escape" in refused.out and "Leave out --tokenizer" in refused.out


@pytest.mark.slow
def test_exported_checkpoint(exported):
    state = load_checkpoint(exported.model / "model.pt")
    original = load_checkpoint(exported.checkpoint)
    assert "last_optimizer_state" not in state and "last_optimizer_state" in original
    assert all(torch.equal(state["model"][k], original["model"][k]) for k in original["model"])
    cfg = state["cfg"]
    assert cfg["tokenizer"] == fairseq_tokenizer("en", "de")
    assert cfg["bpe"]["_name"] == "subword_nmt" and cfg["bpe"]["bpe_codes"] == str(exported.model / "bpecodes")
    assert (cfg["task"]["data"], cfg["task"]["source_lang"], cfg["task"]["target_lang"]) == (
        str(exported.model), "en", "de")  # fmt: skip
    assert (exported.model / "bpecodes").read_bytes() == (exported.prepared / "codes.en").read_bytes()
    assert (exported.model / "codes.de").read_bytes() == (exported.prepared / "codes.de").read_bytes()
    prep = json.loads((exported.model / "preprocessing.json").read_text(encoding="utf-8"))
    assert prep["bpe"]["codes"] == {"en": "codes.en", "de": "codes.de"} and not prep["bpe"]["joint"]
    assert prep["tokenizer"]["en"]["escape"] is False and prep["prepared"]["bpe_setting"] == "mdn"


@pytest.mark.slow
def test_export_refuses_another_bpe_setting(exported, tmp_path):
    with pytest.raises(ExportError, match=r"source vocabulary of \d+ .* has \d+ entries"):
        export_model(exported.checkpoint, exported.prepared.parent / "baseline", tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------------
# without training: a stand-in checkpoint and prepared folder


def fake_prepared(root: Path, src_words=6, tgt_words=5, joint=False) -> Path:
    """An mdn-prepare WORK with one BPE setting ``mdn`` (codes, bin/dict.*.txt) and its prepare.json."""
    settings = {"task": "tiny", "src": "en", "tgt": "de", "quick": False,
                "tokenizer": {lang: tokenizer_description(lang) for lang in ("en", "de")},
                "bpe": {"baseline": {"joint": True}, "mdn": {"joint": joint}}}  # fmt: skip
    (root / "prepare.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "prepare.json").write_text(json.dumps({"fingerprint": "0123", "settings": settings}), encoding="utf-8")
    folder = root / "mdn"
    (folder / "bin").mkdir(parents=True)
    for lang, n in (("en", src_words), ("de", tgt_words)):
        (folder / "bin" / f"dict.{lang}.txt").write_text("".join(f"w{i} 1\n" for i in range(n)), encoding="utf-8")
    for name in ["codes.joint"] if joint else ["codes.en", "codes.de"]:
        (folder / name).write_text(f"#version: 0.2\nt h\n{name[-2:]} x\n", encoding="utf-8")
    return folder


def fake_checkpoint(path: Path, src_vocab=10, tgt_vocab=9, **task) -> Path:
    state = {
        "cfg": {"task": {"_name": "translation_mdn", "data": "bin", "source_lang": None, "target_lang": None, **task},
                "model": argparse.Namespace(arch="mdn_tiny"), "tokenizer": None, "bpe": None},
        "model": {"encoder.embed_tokens.weight": torch.zeros(src_vocab, 4),
                  "decoder.embed_tokens.weight": torch.zeros(tgt_vocab, 4)},
        "optimizer_history": [{"num_updates": 3}],
        "extra_state": {},
        "last_optimizer_state": {"state": {}},
    }  # fmt: skip
    torch.save(state, path)
    return path


def test_export_writes_a_model_folder(tmp_path):
    prepared = fake_prepared(tmp_path / "work", joint=True)
    out = tmp_path / "models" / "m"
    export_model(fake_checkpoint(tmp_path / "ck.pt"), prepared, out)
    names = {p.name for p in out.iterdir()}
    assert names == {"model.pt", "dict.en.txt", "dict.de.txt", "bpecodes", "codes.joint", "preprocessing.json"}
    state = load_checkpoint(out / "model.pt")
    assert "last_optimizer_state" not in state
    assert state["cfg"]["tokenizer"]["moses_no_escape"] and state["cfg"]["tokenizer"]["moses_no_dash_splits"]
    prep = json.loads((out / "preprocessing.json").read_text(encoding="utf-8"))
    assert prep["bpe"]["joint"] and prep["bpe"]["codes"] == {"en": "codes.joint", "de": "codes.joint"}
    export_model(tmp_path / "ck.pt", prepared / "bin", out)  # bin/ accepted; an exported folder is replaced
    assert {p.name for p in out.parent.iterdir()} == {"m"}  # no staging folder left behind


@pytest.mark.parametrize(
    "case, message",
    [
        ("no checkpoint", r"--checkpoint .*nope.pt: no such file"),
        ("no prepare.json", r"cannot read .*prepare.json"),
        ("no codes", r"no BPE codes .*codes.de: mdn-prepare has not finished"),
        ("no dictionary", r"no dictionary .*dict.en.txt"),
        ("source size", r"source vocabulary of 11 \(encoder.embed_tokens.weight\), .*dict.en.txt has 10 entries"),
        ("target size", r"target vocabulary of 7 .* has 9 entries"),
        ("languages", r"translates de->en, --prepared .* is en->de"),
        ("other dictionary", r"was trained on .*other_bin, whose dict.en.txt has other words than .*dict.en.txt"),
        ("tokeniser", r"tokenised as 'sacremoses escape=True' .* tokenises as 'sacremoses escape=False"),
        ("other bpe folder", r"not a BPE setting of .*prepare.json \(its settings: baseline, mdn\)"),
        ("out is a file", r"--out .* is a file"),
        ("out has other files", r"--out .* is a folder with other files"),
        ("out holds the inputs", r"--out .* holds the checkpoint or the prepared data"),
    ],
)
def test_export_bad_input(tmp_path, case, message):
    prepared = fake_prepared(tmp_path / "work")
    checkpoint = fake_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "out"
    if case == "no checkpoint":
        checkpoint = tmp_path / "nope.pt"
    elif case == "no prepare.json":
        (tmp_path / "work" / "prepare.json").unlink()
    elif case == "no codes":
        (prepared / "codes.de").unlink()
    elif case == "no dictionary":
        (prepared / "bin" / "dict.en.txt").unlink()
    elif case in ("source size", "target size"):
        fake_checkpoint(checkpoint, src_vocab=11 if case == "source size" else 10, tgt_vocab=7)
    elif case == "languages":
        fake_checkpoint(checkpoint, source_lang="de", target_lang="en")
    elif case == "other dictionary":  # same size, other words
        (tmp_path / "other_bin").mkdir()
        (tmp_path / "other_bin" / "dict.en.txt").write_text("".join(f"x{i} 1\n" for i in range(6)), encoding="utf-8")
        fake_checkpoint(checkpoint, data=str(tmp_path / "other_bin"))
    elif case == "tokeniser":
        state = json.loads((tmp_path / "work" / "prepare.json").read_text())
        state["settings"]["tokenizer"]["en"] = "sacremoses escape=True"
        (tmp_path / "work" / "prepare.json").write_text(json.dumps(state))
    elif case == "other bpe folder":
        prepared = prepared.rename(tmp_path / "work" / "other")
    elif case == "out is a file":
        out.write_text("x")
    elif case == "out has other files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "out holds the inputs":
        out = tmp_path
    with pytest.raises(ExportError, match=message):
        export_model(checkpoint, prepared, out)
    if case == "out has other files":
        assert (out / "notes.txt").read_text() == "mine"


def test_export_cli_reports_errors(tmp_path, capsys):
    prepared = fake_prepared(tmp_path / "work")
    with pytest.raises(SystemExit) as exit_info:
        export_main(
            ["--checkpoint", str(tmp_path / "nope.pt"), "--prepared", str(prepared), "--out", str(tmp_path / "o")]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("mdn-export: --checkpoint")
    export_main(["--checkpoint", str(fake_checkpoint(tmp_path / "ck.pt")), "--prepared", str(prepared),
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert "--tokenizer moses --moses-no-escape --moses-no-dash-splits" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# the task hooks (fairseq-interactive's --tokenizer/--bpe), on a model folder without a model


def interactive_cfg(folder, *flags):
    """``cfg`` as fairseq-interactive makes it from its command line."""
    parser = options.get_generation_parser(interactive=True)
    args = options.parse_args_and_arch(parser, [str(folder), "--user-dir", USER_DIR, "--task", "translation_mdn",
                                                "--path", "x.pt", "-s", "en", "-t", "de", *flags])  # fmt: skip
    return convert_namespace_to_omegaconf(args)


@pytest.fixture
def model_folder(tmp_path):
    out = tmp_path / "m"
    export_model(fake_checkpoint(tmp_path / "ck.pt"), fake_prepared(tmp_path / "work"), out)
    return out


def test_task_builds_the_folders_tokenizer_and_bpe(model_folder):
    sentence = 'It\'s a "stop-gap" & <b>.'
    cfg = interactive_cfg(model_folder)
    assert cfg.tokenizer is None and cfg.bpe is None  # no flags
    tokenizer = build_tokenizer(str(model_folder), cfg.tokenizer)
    assert tokenizer.encode(sentence) == tokenize_line(sentence, "en") == 'It \'s a " stop-gap " & < b > .'
    bpe = build_bpe(str(model_folder), cfg.bpe)
    assert bpe.encode("that") == bpe_model(str(model_folder / "codes.en")).process_line("that")
    equivalent = interactive_cfg(model_folder, "--tokenizer", "moses", "--moses-no-escape", "--moses-no-dash-splits",
                                 "--bpe", "subword_nmt", "--bpe-codes", str(model_folder / "codes.en"))  # fmt: skip
    assert build_tokenizer(str(model_folder), equivalent.tokenizer).encode(sentence) == tokenizer.encode(sentence)
    assert build_bpe(str(model_folder), equivalent.bpe).encode("that") == bpe.encode("that")


def test_task_without_a_model_folder_is_fairseqs(tmp_path):
    cfg = interactive_cfg(tmp_path, "--tokenizer", "moses")
    assert build_tokenizer(str(tmp_path), None) is None and build_bpe(str(tmp_path), None) is None
    assert build_tokenizer(str(tmp_path), cfg.tokenizer).encode("a & b") == "a &amp; b"


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--tokenizer", "moses"],
            r"without --moses-no-escape, & ' \" \| < > \[ \] are escaped.*"
            r"without --moses-no-dash-splits.*Leave out --tokenizer",
        ),
        (["--tokenizer", "moses", "--moses-no-escape"], r"^without --moses-no-dash-splits"),
        (["--tokenizer", "space"], r"--tokenizer space is not moses.* or pass --tokenizer moses --moses-no-escape"),
        (["--tokenizer", "moses_jieba", "--moses-no-escape", "--moses-no-dash-splits"], r"moses_jieba is not moses"),
        (["--bpe", "subword_nmt", "--bpe-codes", "{folder}/codes.de"], r"--bpe-codes .*codes.de are not the model's"),
        (["--bpe", "gpt2"], r"--bpe gpt2 is not subword_nmt.*Leave out --bpe and --bpe-codes"),
        (["--bpe", "subword_nmt", "--bpe-separator", "++"], r"--bpe-separator \+\+ is not @@"),
    ],
)
def test_task_refuses_contradicting_flags(model_folder, flags, message):
    cfg = interactive_cfg(model_folder, *[f.format(folder=model_folder) for f in flags])
    with pytest.raises(PreprocessingError, match=message):
        if cfg.tokenizer is not None:
            build_tokenizer(str(model_folder), cfg.tokenizer)
        build_bpe(str(model_folder), cfg.bpe)


def test_unreadable_preprocessing_json(model_folder):
    (model_folder / "preprocessing.json").write_text('{"format": "other"}')
    with pytest.raises(PreprocessingError, match=r"not a preprocessing.json of mdn-export/1"):
        build_tokenizer(str(model_folder), None)


# ---------------------------------------------------------------------------------------------------
# Chinese: jieba, then Moses


def test_jieba_tokenizer_is_mdn_prepares_tokenisation():
    cfg = fairseq_tokenizer("zh", "en")
    assert cfg["_name"] == "moses_jieba" and fairseq_tokenizer("en", "zh")["_name"] == "moses"
    tokenizer = encoders.build_tokenizer(OmegaConf.create(cfg))
    assert isinstance(tokenizer, MosesJiebaTokenizer)
    for sentence in ["我爱北京天安门 & “长城”。", '他说："R&D 部门 | <重要> 的 stop-gap 方案"。']:
        assert tokenizer.encode(sentence) == tokenize_line(sentence, "zh")
        assert " " in tokenizer.encode(sentence) and "&amp;" not in tokenizer.encode(sentence)
    to_chinese = encoders.build_tokenizer(OmegaConf.create(dict(cfg, target_lang="zh")))
    assert to_chinese.decode(tokenize_line("我爱北京天安门。", "zh")) == "我爱北京天安门。"
