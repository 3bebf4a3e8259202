"""``mdn-export``: a trained checkpoint as a model folder that translates raw text as it was trained.

    mdn-export --checkpoint WORK/mdn/checkpoint_avg.pt --prepared WORK/data/mdn --out WORK/models/mdn

--prepared is the BPE folder of mdn-prepare the model was trained on (WORK/data/mdn or WORK/data/baseline:
its codes, bin/dict.*.txt, and WORK/data/prepare.json).  The folder --out gets model.pt (no optimizer state;
its cfg carries the tokeniser and BPE settings), the dictionaries, bpecodes (the source codes), the codes per
side and preprocessing.json.  Then, on raw text (tokenised exactly as mdn-prepare did, output detokenised):

    fairseq-interactive OUT --user-dir mdn_fairseq --task translation_mdn --path OUT/model.pt -s SRC -t TGT
    python -c "import mdn_fairseq; from mdn_fairseq.models.mdn import MDNModel; \\
               print(MDNModel.from_pretrained('OUT').translate('A raw sentence.'))"
"""

from ..export import export_model
from .common import parser, run

PROG = "mdn-export"


def body(argv):
    p = parser(PROG, __doc__)
    p.add_argument("--checkpoint", required=True, help="the fairseq checkpoint (e.g. checkpoint_avg.pt)")
    p.add_argument("--prepared", required=True, help="the mdn-prepare BPE folder it was trained on (WORK/data/mdn)")
    p.add_argument("--out", required=True, help="the model folder to write (replaced if it is one already)")
    args = p.parse_args(argv)
    record = export_model(args.checkpoint, args.prepared, args.out)
    src, tgt = record["source_lang"], record["target_lang"]
    tok = record["fairseq"]["tokenizer"]
    codes = ", ".join(f"{lang} {name}" for lang, name in record["bpe"]["codes"].items())
    print(
        f"{PROG}: {args.out}: model.pt, dict.{src}.txt, dict.{tgt}.txt, bpecodes, BPE codes ({codes}), "
        f"preprocessing.json; {src}->{tgt}, --tokenizer {tok['_name']} --moses-no-escape --moses-no-dash-splits "
        f"--bpe subword_nmt (from {record['prepared']['folder']})"
    )


def main(argv=None):
    run(PROG, body, argv)


if __name__ == "__main__":
    main()
