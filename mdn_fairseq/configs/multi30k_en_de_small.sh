# Multi30k task 1, English -> German, 256-wide models: the paper's proportions at a quarter of its width (29k pairs).
# Read by scripts/reproduce.sh (bash `source`) and by mdn-prepare (KEY=VALUE lines; no inline comments).
# MEASURED (bash scripts/reproduce.sh multi30k_en_de_small --threads 2, 2-core AMD EPYC; the teacher's first 100
# updates shared the cores with a test run, the rest ran alone): about 2 h in all (aim: <= 3 h) on a slower day
# of that machine: prepare 24 s, baseline 37.4 min (133 updates an epoch, 0.71 a second), teacher ~35 min,
# distilled pairs 3.8 min, MDN 30.7 min (6 epochs of 267 updates),
# evaluation 3 min, benchmark 3.4 min. BLEU on test_2016_flickr: baseline 35.55, teacher 35.34 (aim >= 34: met),
# MDN 35.28 (aim: within 0.5 of the teacher; -0.06, met); the MDN's lean search 4.29x the baseline's fairseq speed
TASK=multi30k_en_de_small
SRC=en
TGT=de
# local folder with {stem}.{lang} or {stem}.{lang}.gz per split (relative paths: to the repository root)
DATA=../shared/data/multi30k
# test: a comma list of test sets, the first is the main one; the results table reports BLEU on each
SPLITS="train=train valid=val test=test_2016_flickr,test_2017_flickr"
# where files the local folder lacks are downloaded from, one by one (checksums: configs/multi30k.sha256)
DOWNLOAD=multi30k
# BPE as multi30k_en_de (vocabularies en 3520 / de 4480 joint, en 5784 / de 2152 separate: mdn_small's depth
# is param-matched to these, see tests/test_small_configs.py): the same BPE at both widths
BASELINE_JOINT=1
BASELINE_SRC_MERGES=6000
BASELINE_TGT_MERGES=6000
MDN_JOINT=0
MDN_SRC_MERGES=6000
MDN_TGT_MERGES=2000
# training-pair filter, applied after BPE (subwords)
MAX_LEN=250
MAX_RATIO=1.5
# models: 3+3 Transformer, 256 wide, 4 heads of 64, FFN 1024 (8.72M parameters); the student: 8+1, one 64-dim
# head, no decoder FFN, rank-64 output (8.64M: the encoder depth closest to the baseline's count)
BASELINE_ARCH=mdn_transformer_small
STUDENT_ARCH=mdn_small
# as multi30k_en_de: ~220 sentences a batch, 133 updates an epoch (MEASURED; fewer, larger products on CPU)
MAX_TOKENS=4096
# half the 64-wide configs' 0.002: four times wider, post-norm (the best Adam rate falls with width); not swept.
# MEASURED with it: the baseline's valid loss falls until epoch 10 and is flat after (4.21 at 10, 4.21 at 12)
LR=0.001
# the 64-wide configs' warm-up: 3 of 12 epochs, then inverse square root (lr 0.0005 at the last update)
WARMUP=400
# with label smoothing 0.1, 12 epochs do not overfit 8.7M parameters on 29k pairs (MEASURED: the baseline's valid
# loss does not rise up to epoch 12); 0.3 would slow the short training down
DROPOUT=0.1
# 12 epochs (1600 updates) a model; reproduce.sh averages the last 5 epoch checkpoints
MAX_EPOCH=12
# the student's data: original (WD init + NLL) or original+distilled (WD + sequence-level KD, the authors'
# setting). MEASURED on valid (the same teacher, WD init, no label smoothing, decoder dropout 0, averaged last 5):
# original, 12 epochs: 33.63 valid BLEU (0.75 below the teacher's 34.38); original+distilled, 6 epochs (about the
# same updates: 1602 against 1764): 35.00, above the teacher. At 64 wide the distilled pairs of a 24-BLEU teacher
# did not help (results/multi30k_en_de/training_strategies.md); from this 35-BLEU teacher they do
STUDENT_DATA=original+distilled
# sequence-level KD students see twice as many pairs: half the teacher's epochs, about the same updates (the
# original-pairs student's valid loss was lowest at epoch 7 of 12, yet its average of epochs 8-12 beat every
# single checkpoint; the distilled student's is flat from epoch 4 to 6: 2.92, 2.91, 2.92)
STUDENT_MAX_EPOCH=6
SEQKD_MAX_EPOCH=6
# the paper's peers (reproduce.sh --peers; KEY_ARCH and KEY_ARGS: architecture and model flags). Table 4: AAN,
# SAN, CAN, trained as the baseline, at its shape (256 wide, 3+3 layers; san_small shares self-attention in
# blocks 1,2 and cross-attention in blocks 2,1; can_small: pre-norm, values 1024 wide)
AAN_ARCH=aan_small
AAN_ARGS=
SAN_ARCH=san_small
SAN_ARGS=
CAN_ARCH=can_small
CAN_ARGS=
# Table 7, "+ Ours": the tricks on the small peers at mdn_small's shape (1 decoder layer, one 64-dim head, no
# decoder FFN, rank-64 output; CAN's values as narrow as its head), trained as the MDN student; 8 encoder layers:
# the depth closest to the baseline's count for each (AAN 8.83M, CAN 8.62M; tests/test_small_configs.py)
AAN_MDN_ARCH=aan_small
AAN_MDN_ARGS="--encoder-layers 8 --decoder-layers 1 --decoder-attention-heads 1 --decoder-attention-dim 64 --no-decoder-ffn --output-rank 64"
CAN_MDN_ARCH=can_small
CAN_MDN_ARGS="--encoder-layers 8 --decoder-layers 1 --decoder-attention-heads 1 --decoder-attention-dim 64 --can-value-dim 64 --output-rank 64"
# --quick: every stage on a slice, a few updates
QUICK_TRAIN_LINES=800
QUICK_SRC_MERGES=300
QUICK_TGT_MERGES=200
QUICK_MAX_UPDATE=10
# scripts/ablation.sh (the paper's Tables 2 and 5): each structure trick as model flags on BASELINE_ARCH, at
# mdn_small's values: one decoder layer; one 64-dim decoder head (one of the baseline's four); no decoder FFN;
# a rank-64 output projection; 8 encoder layers (the student's depth, matched to the baseline's parameters).
# Table 2 switches them on one at a time, Table 5 one after another (all of them: STUDENT_ARCH's model).
ABLATION_SHALLOW_DECODER="--decoder-layers 1"
ABLATION_ONE_HEAD="--decoder-attention-heads 1 --decoder-attention-dim 64"
ABLATION_NO_FFN=--no-decoder-ffn
ABLATION_LOW_RANK="--output-rank 64"
ABLATION_DEEP_ENCODER="--encoder-layers 8"
