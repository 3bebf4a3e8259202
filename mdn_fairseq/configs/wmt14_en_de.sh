# WMT14 English -> German (4.5M pairs; newstest2013 valid, newstest2014 test), the paper's main task.
# Read by scripts/reproduce.sh (bash `source`) and by mdn-prepare (KEY=VALUE lines; no inline comments).
TASK=wmt14_en_de
SRC=en
TGT=de
# empty: download into WORK/download (as fairseq's examples/translation/prepare-wmt14en2de.sh); or pass --data
DATA=
SPLITS="train=train valid=valid test=test"
DOWNLOAD=wmt14_en_de
BASELINE_JOINT=1
BASELINE_SRC_MERGES=32000
BASELINE_TGT_MERGES=32000
MDN_JOINT=0
MDN_SRC_MERGES=32000
MDN_TGT_MERGES=10000
MAX_LEN=250
MAX_RATIO=1.5
# Transformer-base teacher/baseline; the authors' En-De student (pre-norm, 22+1); deep-model setup
BASELINE_ARCH=transformer_wmt_en_de
STUDENT_ARCH=mdn_wmt_en_de
MAX_TOKENS=4096
LR=0.002
WARMUP=16000
DROPOUT=0.1
MAX_EPOCH=21
# the student's data: original (WD init + NLL) or original+distilled (WD + sequence-level KD, the
# authors' setting); with original + distilled pairs (twice as many): half the epochs
STUDENT_DATA=original+distilled
STUDENT_MAX_EPOCH=11
SEQKD_MAX_EPOCH=11
# the paper's peers (reproduce.sh --peers; KEY_ARCH and KEY_ARGS: architecture and model flags). Table 4:
# AAN, SAN (6+6, Transformer-base dims) and CAN (the CAN authors' 12+2, pre-norm), trained as the baseline
AAN_ARCH=aan
AAN_ARGS=
SAN_ARCH=san
SAN_ARGS=
CAN_ARCH=can
CAN_ARGS=
# Table 7, "+ Ours": the tricks on AAN and CAN (22+1, one 64-dim head, rank 64), trained as the MDN student;
# pre-norm as the student (mdn_wmt_en_de)
AAN_MDN_ARCH=aan_mdn
AAN_MDN_ARGS="--encoder-normalize-before --decoder-normalize-before"
CAN_MDN_ARCH=can_mdn
CAN_MDN_ARGS=
QUICK_TRAIN_LINES=2000
QUICK_SRC_MERGES=500
QUICK_TGT_MERGES=300
QUICK_MAX_UPDATE=10
