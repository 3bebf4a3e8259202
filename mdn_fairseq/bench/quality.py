"""BLEU per row (``--reference``): the quality next to the speed, so that nobody trades it unknowingly.

Each row's best hypotheses of its last timed pass (:attr:`~.measure.Row.hypotheses`) are scored against
the references: fairseq's dictionary turns them into text with the ``@@ `` BPE continuation removed
(``fairseq-generate --remove-bpe``), and sacreBLEU scores them with ``tokenize="none"`` on the
tokenised text, as the paper's tokenised BLEU.  fp32, bf16, int8 and CTranslate2 rows of one checkpoint
translate the same sentences, so their BLEU differences are the cost of the precision or engine.
"""

from typing import Dict, List

from ..errors import MDNError
from .measure import Row

BPE = "@@ "


def read_references(path: str) -> List[str]:
    """The non-empty lines of ``path`` (one reference per non-empty ``--input`` line), BPE removed."""
    with open(path, encoding="utf-8") as f:
        return [(line.strip() + " ").replace(BPE, "").strip() for line in f if line.strip()]


def row_bleu(row: Row, references: List[str]) -> Dict:
    """``{"bleu", "signature"}`` of ``row``'s hypotheses (sentence ids index ``references``).  Raises
    :class:`MDNError` when the row translated a different number of sentences than there are references."""
    import sacrebleu

    if sorted(row.hypotheses) != list(range(len(references))):
        raise MDNError(
            f"--reference: {len(references)} references but {row.name} translated {len(row.hypotheses)} "
            "sentences; give one reference per non-empty --input line"
        )
    hyps = [row.model.tgt_dict.string(row.hypotheses[i], bpe_symbol=BPE) for i in range(len(references))]
    metric = sacrebleu.metrics.BLEU(tokenize="none", force=True)
    score = metric.corpus_score(hyps, [references])
    return {"bleu": score.score, "bleu_signature": str(metric.get_signature())}


def add_bleu(records: List[Dict], rows: List[Row], reference: str) -> None:
    """Add each row's ``bleu`` and ``bleu_signature`` to its record (``records[i]`` is ``rows[i]``'s)."""
    references = read_references(reference)
    for rec, row in zip(records, rows):
        rec.update(row_bleu(row, references))
