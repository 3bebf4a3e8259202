# NIST12 Chinese -> English (LDC training data; MT06 valid, MT08 test with 4 references). Local data only:
# --data DIR with train.{zh,en}, valid.zh + valid.en[0-3], test.zh + test.en[0-3] (plain or .gz).
# Chinese is segmented with jieba (PyPI) before Moses tokenisation.
# Read by scripts/reproduce.sh (bash `source`) and by mdn-prepare (KEY=VALUE lines; no inline comments).
TASK=nist12_zh_en
SRC=zh
TGT=en
DATA=
SPLITS="train=train valid=valid test=test"
DOWNLOAD=none
BASELINE_JOINT=0
BASELINE_SRC_MERGES=32000
BASELINE_TGT_MERGES=32000
MDN_JOINT=0
MDN_SRC_MERGES=32000
MDN_TGT_MERGES=10000
MAX_LEN=250
MAX_RATIO=1.5
BASELINE_ARCH=transformer
STUDENT_ARCH=mdn
MAX_TOKENS=4096
LR=0.002
WARMUP=16000
DROPOUT=0.1
MAX_EPOCH=30
# the student's data: original (WD init + NLL) or original+distilled (WD + sequence-level KD, the
# authors' setting); with original + distilled pairs (twice as many): half the epochs
STUDENT_DATA=original+distilled
STUDENT_MAX_EPOCH=15
SEQKD_MAX_EPOCH=15
# the paper's peers (reproduce.sh --peers; KEY_ARCH and KEY_ARGS: architecture and model flags). Table 4:
# AAN, SAN (6+6, Transformer-base dims) and CAN (the CAN authors' 12+2, pre-norm), trained as the baseline
AAN_ARCH=aan
AAN_ARGS=
SAN_ARCH=san
SAN_ARGS=
CAN_ARCH=can
CAN_ARGS=
# Table 7, "+ Ours": the tricks on AAN and CAN (22+1, one 64-dim head, rank 64), trained as the MDN student
AAN_MDN_ARCH=aan_mdn
AAN_MDN_ARGS=
CAN_MDN_ARCH=can_mdn
CAN_MDN_ARGS=
QUICK_TRAIN_LINES=2000
QUICK_SRC_MERGES=500
QUICK_TGT_MERGES=300
QUICK_MAX_UPDATE=10
