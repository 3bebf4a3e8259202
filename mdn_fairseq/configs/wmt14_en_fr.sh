# WMT14 English -> French (36M pairs; newstest2013 valid, newstest2014 test).
# Read by scripts/reproduce.sh (bash `source`) and by mdn-prepare (KEY=VALUE lines; no inline comments).
TASK=wmt14_en_fr
SRC=en
TGT=fr
# empty: download into WORK/download (as fairseq's examples/translation/prepare-wmt14en2fr.sh); or pass --data
DATA=
SPLITS="train=train valid=valid test=test"
DOWNLOAD=wmt14_en_fr
BASELINE_JOINT=1
BASELINE_SRC_MERGES=32000
BASELINE_TGT_MERGES=32000
MDN_JOINT=0
MDN_SRC_MERGES=32000
MDN_TGT_MERGES=10000
MAX_LEN=250
MAX_RATIO=1.5
# Transformer-base teacher/baseline; the paper-dims student (mdn: 22+1); deep-model setup
BASELINE_ARCH=transformer
STUDENT_ARCH=mdn
MAX_TOKENS=4096
LR=0.002
WARMUP=16000
DROPOUT=0.1
MAX_EPOCH=6
# the student's data: original (WD init + NLL) or original+distilled (WD + sequence-level KD, the
# authors' setting); with original + distilled pairs (twice as many): half the epochs
STUDENT_DATA=original+distilled
STUDENT_MAX_EPOCH=3
SEQKD_MAX_EPOCH=3
QUICK_TRAIN_LINES=2000
QUICK_SRC_MERGES=500
QUICK_TGT_MERGES=300
QUICK_MAX_UPDATE=10
