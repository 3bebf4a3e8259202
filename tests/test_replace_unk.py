"""``--replace-unk [ALIGN_DICT]`` with the plugin's tasks (fairseq's own crashes: mdn_fairseq/fairseq_fixes.py)."""

import argparse

import pytest
import torch
from fairseq import utils
from fairseq.data import Dictionary
from fairseq.dataclass.configs import GenerationConfig
from omegaconf import OmegaConf

from conftest import USER_DIR, binarise, run_cli, train_tiny
from mdn_fairseq import fairseq_fixes
from mdn_fairseq.fairseq_fixes import ReplaceUnkError, generation_args, install, replace_unk_tokens

UNK = "<unk>"


@pytest.fixture(scope="module")
def patched():
    install()
    return utils


def dictionary(*words):
    d = Dictionary()
    for w in words:
        d.add_symbol(w)
    return d


def ids(d, line):
    return torch.tensor([d.index(w) for w in line.split()] + [d.eos()])


# -- fairseq's bugs, as they are ---------------------------------------------------------------


def test_fairseqs_replace_unk_breaks_on_its_own_alignments():
    """fairseq.utils.replace_unk takes per-target source positions; generators return pairs or nothing."""
    with pytest.raises(TypeError):  # --print-alignment: (source, target) pairs
        utils.replace_unk("ein <unk>", "a house", [(0, 0), (1, 1)], {}, UNK)
    with pytest.raises(IndexError):  # no --print-alignment: SequenceGenerator's empty alignment
        utils.replace_unk("ein <unk>", "a house", torch.empty(0), {}, UNK)


def test_bare_replace_unk_is_the_file_name_at_at_space(patched):
    """A bare --replace-unk parses to GenerationConfig's argparse_const "@@ ", which fairseq opens as a file."""
    assert GenerationConfig()._get_argparse_const("replace_unk") == fairseq_fixes.BARE_REPLACE_UNK
    with pytest.raises(FileNotFoundError):
        patched.load_align_dict.__wrapped__(fairseq_fixes.BARE_REPLACE_UNK)


# -- the fix -----------------------------------------------------------------------------------


def test_install_is_idempotent_and_reads_align_dicts(patched, tmp_path):
    before = (patched.load_align_dict, patched.post_process_prediction)
    install()
    assert (patched.load_align_dict, patched.post_process_prediction) == before
    assert patched.load_align_dict(fairseq_fixes.BARE_REPLACE_UNK) == {}
    assert patched.load_align_dict("") == {} and patched.load_align_dict(None) is None
    (tmp_path / "dict.txt").write_text("house Haus\ndog Hund\n")
    assert patched.load_align_dict(str(tmp_path / "dict.txt")) == {"house": "Haus", "dog": "Hund"}


def test_replace_unk_tokens_from_pairs():
    d = dictionary("ein", "der")
    hypo = ids(d, "ein <unk> der <unk> <unk>")
    # hypothesis position 4 has no pair: its <unk> stays
    pairs = [(0, 0), (2, 1), (1, 2), (3, 3)]
    assert replace_unk_tokens(hypo, "a big house dog", pairs, {}, d) == "ein house der dog <unk>"
    assert replace_unk_tokens(hypo, "a big house dog", pairs, {"house": "Haus"}, d) == "ein Haus der dog <unk>"
    # what fairseq leaves out of the string (EOS, BOS, extra symbols) does not shift positions
    hypo = torch.tensor([d.bos(), d.index("ein"), d.unk(), d.eos()])
    assert replace_unk_tokens(hypo, "the house", [(0, 0), (0, 1), (1, 2)], {}, d) == "ein house"
    with pytest.raises(ReplaceUnkError, match="source token 3, but the source line has 2"):
        replace_unk_tokens(ids(d, "<unk>"), "a house", [(2, 0)], {}, d)


def test_post_process_prediction_replaces_before_bpe_removal(patched):
    """Alignment positions count the model's tokens: replace first, then --remove-bpe."""
    d = dictionary("ge@@", "hen", "in")
    hypo = ids(d, "ge@@ hen in <unk>")
    pairs = [(0, 0), (0, 1), (2, 2), (3, 3)]
    tokens, text, alignment = patched.post_process_prediction(hypo, "we go in houses", pairs, {}, d, "@@ ")
    assert text == "gehen in houses" and alignment == pairs
    assert d.string(tokens) == text
    tokens, text, _ = patched.post_process_prediction(hypo, "we go in houses", pairs, {"houses": "Häuser"}, d, "@@ ")
    assert text == "gehen in Häuser"


def test_post_process_prediction_unchanged_without_replace_unk(patched):
    d = dictionary("ge@@", "hen")
    hypo = ids(d, "ge@@ hen <unk>")
    for remove_bpe in (None, "@@ "):
        ours = patched.post_process_prediction(hypo, "x", torch.empty(0), None, d, remove_bpe)
        fairseqs = patched.post_process_prediction.__wrapped__(hypo, "x", torch.empty(0), None, d, remove_bpe)
        assert ours[1] == fairseqs[1] and torch.equal(ours[0], fairseqs[0])


def test_generation_args_ask_for_hard_alignments():
    cfg = OmegaConf.structured(GenerationConfig)
    assert generation_args(cfg) is cfg  # no --replace-unk
    cfg.replace_unk = ""
    built = generation_args(cfg)
    assert built.print_alignment == "hard" and built.replace_unk == ""
    assert cfg.print_alignment is None  # the CLI's config (what it prints) is not changed
    cfg.print_alignment = "hard"
    assert generation_args(cfg) is cfg
    cfg.print_alignment = "soft"
    with pytest.raises(ReplaceUnkError, match="--print-alignment hard"):
        generation_args(cfg)
    args = argparse.Namespace(replace_unk="dict.txt", beam=4)
    assert vars(generation_args(args)) == {"replace_unk": "dict.txt", "beam": 4, "print_alignment": "hard"}
    assert not hasattr(args, "print_alignment")


# -- fairseq-generate / fairseq-interactive on a model whose target vocabulary lacks words ----------


@pytest.fixture(scope="module")
def unk_model(tmp_path_factory, multi30k):
    """``bin/`` (raw text, as fairseq-generate --replace-unk requires; target words seen < 3 times are <unk>)
    and ``ck/checkpoint_last.pt``: mdn_tiny, 60 updates with --task translation_mdn."""
    work = tmp_path_factory.mktemp("replace_unk")
    sizes = {"train": ("train", 1000), "valid": ("val", 50), "test": ("test_2016_flickr", 30)}
    binarise(work, multi30k, sizes, "--dataset-impl", "raw", "--thresholdtgt", "3")
    train_tiny(work, "--dataset-impl", "raw")
    return work


# --unkpen -0.5: a few <unk>s per hypothesis
GENERATE = [
    "fairseq-generate",
    "bin",
    "--user-dir",
    USER_DIR,
    "--path",
    "ck/checkpoint_last.pt",
    "--gen-subset",
    "test",
    "--dataset-impl",
    "raw",
    "--beam",
    "4",
    "--batch-size",
    "8",
    "--max-len-b",
    "20",
    "--unkpen",
    "-0.5",
]


def parsed(out):
    """{(kind, id): fields} of the S-, H- and A- lines: S (source tokens), H (hypothesis tokens),
    A (the printed (source, target) pairs)."""
    lines = {}
    for line in out.splitlines():
        kind, _, rest = line.partition("-")
        if kind in ("S", "H", "A") and "\t" in rest:
            sid, *cols = rest.split("\t")
            text = cols[-1]
            lines[kind, sid] = [tuple(map(int, p.split("-"))) for p in text.split()] if kind == "A" else text.split()
    return lines


def assert_replaced(reference, replaced, align_dict):
    """Each <unk> of ``reference`` (a --print-alignment run) is, in ``replaced``, its aligned token of the
    source line that ``replaced`` printed (fairseq-generate prints the raw text there, not the source
    dictionary's <unk>s) through ``align_dict``; every other token is unchanged.  Returns the number of <unk>s."""
    count = 0
    for (kind, sid), hypo in reference.items():
        if kind != "H":
            continue
        source_of = {t: s for s, t in reference["A", sid]}
        source = replaced["S", sid]
        expected = [
            align_dict.get(source[source_of[i]], source[source_of[i]]) if w == UNK and i in source_of else w
            for i, w in enumerate(hypo)
        ]
        assert replaced["H", sid] == expected, sid
        count += hypo.count(UNK)
    return count


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["lean", "fairseq"])
def test_fairseq_generate_replace_unk(unk_model, generator):
    cmd = GENERATE + ["--task", "translation_mdn"] + (["--no-fast-generator"] if generator == "fairseq" else [])
    reference = run_cli(cmd + ["--print-alignment"], unk_model).out
    if generator == "lean":
        assert "fast generator not used" not in reference
    reference = parsed(reference)
    # bare --replace-unk: the source token is copied; the alignment is extracted, not printed
    copied = parsed(run_cli(cmd + ["--replace-unk"], unk_model).out)
    assert not any(kind == "A" for kind, _ in copied)
    n = assert_replaced(reference, copied, {})
    assert n >= 30 and not any(UNK in h for (kind, _), h in copied.items() if kind == "H")
    # with an align dict (half of the source words), and the alignment printed as without --replace-unk
    words = sorted({w for (kind, _), s in copied.items() if kind == "S" for w in s})[::2]
    align_dict = {w: f"{w.upper()}_de" for w in words}
    (unk_model / "align.txt").write_text("".join(f"{w} {t}\n" for w, t in align_dict.items()), encoding="utf-8")
    looked_up = parsed(run_cli(cmd + ["--replace-unk", "align.txt", "--print-alignment", "hard"], unk_model).out)
    assert assert_replaced(reference, looked_up, align_dict) == n
    assert {k: v for k, v in looked_up.items() if k[0] == "A"} == {k: v for k, v in reference.items() if k[0] == "A"}
    assert any(w in align_dict.values() for (kind, _), h in looked_up.items() if kind == "H" for w in h)


@pytest.mark.slow
def test_fairseq_generate_replace_unk_translation_wd(unk_model):
    mdn = parsed(run_cli(GENERATE + ["--task", "translation_mdn", "--replace-unk"], unk_model).out)
    wd = parsed(run_cli(GENERATE + ["--task", "translation_wd", "--replace-unk"], unk_model).out)
    assert wd == mdn and sum(kind == "H" for kind, _ in wd) == 30


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, error",
    [
        (["--replace-unk"], "FileNotFoundError"),
        (["--replace-unk", ""], "IndexError"),
        (["--replace-unk", "", "--print-alignment"], "TypeError"),
    ],
)
def test_fairseqs_translation_task_still_crashes(unk_model, flags, error):
    """fairseq's own task with the same model and flags: the bugs that the plugin's tasks fix."""
    proc = run_cli(GENERATE + ["--task", "translation"] + flags, unk_model, ok=False)
    assert proc.returncode != 0 and error in proc.out


@pytest.mark.slow
def test_fairseq_interactive_replace_unk(unk_model):
    """fairseq-interactive (the lean search): the source tokens are the S- line's."""
    cmd = [
        "fairseq-interactive",
        "bin",
        "--user-dir",
        USER_DIR,
        "--path",
        "ck/checkpoint_last.pt",
        "--task",
        "translation_mdn",
        "-s",
        "en",
        "-t",
        "de",
        "--beam",
        "4",
        "--max-len-b",
        "20",
        "--unkpen",
        "-0.5",
    ]
    text = "".join(line + "\n" for line in (unk_model / "train.en").read_text(encoding="utf-8").splitlines()[:8])
    reference = run_cli(cmd + ["--print-alignment"], unk_model, stdin=text).out
    assert "fast generator not used" not in reference
    replaced = parsed(run_cli(cmd + ["--replace-unk"], unk_model, stdin=text).out)
    assert assert_replaced(parsed(reference), replaced, {}) >= 8
    assert not any(UNK in h for (kind, _), h in replaced.items() if kind == "H")
