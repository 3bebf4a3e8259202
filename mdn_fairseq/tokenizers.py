"""fairseq tokenizers for text that ``mdn-prepare`` tokenised (registered when the plugin is imported).

fairseq has no Chinese word segmenter, and ``mdn-prepare`` segments :data:`~mdn_fairseq.prepare.tokenise.JIEBA_LANGS`
with jieba before Moses.  ``--tokenizer moses_jieba`` is fairseq's ``moses`` tokenizer (same flags) whose
``encode`` segments with the very function ``mdn-prepare`` uses
(:func:`~mdn_fairseq.prepare.tokenise.segment_chinese`), so a model folder of ``mdn-export`` with a Chinese
source tokenises raw text at inference as its training data was.  ``decode`` is fairseq's: sacremoses'
detokenizer already joins consecutive CJK words without spaces.
"""

from dataclasses import dataclass

from fairseq.data.encoders import register_tokenizer
from fairseq.data.encoders.moses_tokenizer import MosesTokenizer, MosesTokenizerConfig

from .prepare.tokenise import load_jieba, segment_chinese


@dataclass
class MosesJiebaTokenizerConfig(MosesTokenizerConfig):
    """fairseq's Moses flags (``--moses-no-escape``, ``--moses-no-dash-splits``, the languages)."""


@register_tokenizer("moses_jieba", dataclass=MosesJiebaTokenizerConfig)
class MosesJiebaTokenizer(MosesTokenizer):
    """jieba word segmentation, then fairseq's Moses tokenizer: ``mdn-prepare``'s tokenisation of Chinese.

    Raises :class:`~mdn_fairseq.prepare.config.PrepareError` (with the install command) when jieba is missing.
    """

    def __init__(self, cfg: MosesJiebaTokenizerConfig):
        super().__init__(cfg)
        load_jieba()

    def encode(self, x: str) -> str:
        """``x`` segmented into words with jieba, then Moses-tokenised with this tokenizer's flags."""
        return super().encode(segment_chinese(x))
