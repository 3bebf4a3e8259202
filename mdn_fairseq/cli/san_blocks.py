"""``mdn-san-blocks``: propose SAN blocks for a trained model, as the SAN paper chose them.

    mdn-san-blocks --path teacher.pt --data data-bin [--subset valid] [--sentences 64] [--threshold 0.9]

Prints the similarity (1 − mean Jensen–Shannon divergence) of every two decoder layers' self- and
cross-attention distributions on the first ``--sentences`` pairs of ``--subset``, and the blocks grown
greedily over ``--threshold`` as the flags of a SAN student:
``--san-self-attn-blocks 2,4 --san-cross-attn-blocks 4,2`` (see :mod:`mdn_fairseq.san_blocks`).
"""

from ..files import write_json
from ..san_blocks import format_matrix, held_out_batch, propose_blocks
from .common import parser, run

PROG = "mdn-san-blocks"


def body(argv):
    p = parser(PROG, __doc__)
    p.add_argument("--path", required=True, help="checkpoint of a Transformer or MDN model (e.g. the teacher)")
    p.add_argument("--data", required=True, help="binarised data folder (fairseq-preprocess output)")
    p.add_argument("--subset", default="valid", help="held-out subset to read (default valid)")
    p.add_argument("--sentences", type=int, default=64, help="how many of its sentence pairs (default 64)")
    p.add_argument("--threshold", type=float, default=0.9, help="least similarity within a block (default 0.9)")
    p.add_argument("--source-lang", help="source language, if the data folder has several pairs")
    p.add_argument("--target-lang", help="target language")
    p.add_argument("--out-json", help="also write the matrices and blocks here")
    args = p.parse_args(argv)
    model, net_input = held_out_batch(
        args.path, args.data, args.subset, args.sentences, args.source_lang, args.target_lang
    )
    result = propose_blocks(model, net_input, args.threshold)
    n = net_input["src_tokens"].size(0)
    for kind in ("self", "cross"):
        print(f"{kind}-attention similarity of the decoder layers ({n} sentences of {args.subset}):")
        print(format_matrix(result[kind]["matrix"]))
    flags = " ".join(f"--san-{k}-attn-blocks {','.join(map(str, result[k]['blocks']))}" for k in ("self", "cross"))
    print(f"proposed blocks (threshold {args.threshold}): {flags}")
    if args.out_json:
        write_json(args.out_json, dict(result, threshold=args.threshold, sentences=n, subset=args.subset))


def main(argv=None):
    run(PROG, body, argv)


if __name__ == "__main__":
    main()
