# Multi30k task 1, English -> French, 256-wide models: the paper's proportions at a quarter of its width (29k pairs).
# Read by scripts/reproduce.sh (bash `source`) and by mdn-prepare (KEY=VALUE lines; no inline comments).
# Time on 2 cores (AMD EPYC). MEASURED on multi30k_en_de_small (same sizes): one epoch of the baseline, 133 updates,
# 410 s (245 s of CPU) with OMP_NUM_THREADS=1 while another training ran on the second core. ESTIMATES:
# ~3.5 min an epoch with 2 free threads, for each of the three models (the student's 8-layer encoder costs
# what the teacher's 3+3 layers do), so 3 x 12 epochs ~ 125 min, plus prepare, evaluation and benchmark
# ~ 15 min: ~ 2.3 h for reproduce.sh (aim: <= 3 h); BLEU: not measured yet (aims: teacher >= 34, MDN within 0.5).
TASK=multi30k_en_fr_small
SRC=en
TGT=fr
# local folder with {stem}.{lang} or {stem}.{lang}.gz per split (relative paths: to the repository root)
DATA=../shared/data/multi30k
# test: a comma list of test sets, the first is the main one; the results table reports BLEU on each
SPLITS="train=train valid=val test=test_2016_flickr,test_2017_flickr"
# where files the local folder lacks are downloaded from, one by one (checksums: configs/multi30k.sha256)
DOWNLOAD=multi30k
# BPE as multi30k_en_fr (vocabularies en 3968 / fr 4368 joint, en 5784 / fr 2128 separate: mdn_small's depth
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
# models: 3+3 Transformer, 256 wide, 4 heads of 64, FFN 1024 (8.78M parameters); the student: 8+1, one 64-dim
# head, no decoder FFN, rank-64 output (8.63M: the encoder depth closest to the baseline's count)
BASELINE_ARCH=mdn_transformer_small
STUDENT_ARCH=mdn_small
# as multi30k_en_de: ~220 sentences a batch, 133 updates an epoch (MEASURED; fewer, larger products on CPU)
MAX_TOKENS=4096
# ESTIMATE: half the 64-wide configs' 0.002: four times wider, post-norm (the best Adam rate falls with width)
LR=0.001
# the 64-wide configs' warm-up: 3 of 12 epochs, then inverse square root (lr 0.0005 at the last update)
WARMUP=400
# ESTIMATE: 12 epochs are too few to overfit 8.7M parameters on 29k pairs with label smoothing 0.1; 0.3 would
# slow the short training down
DROPOUT=0.1
# ESTIMATE: 12 epochs (1600 updates) a model fit the 3 h aim; reproduce.sh averages the last 5 epoch checkpoints
MAX_EPOCH=12
# the student's data: original (WD init + NLL) or original+distilled (WD + sequence-level KD, the
# authors' setting); as multi30k_en_de (results/multi30k_en_de/training_strategies.md): the original pairs
STUDENT_DATA=original
# as many epochs as the teacher: the WD init starts near the teacher, the remaining epochs tune the student
STUDENT_MAX_EPOCH=12
# sequence-level KD students see twice as many pairs: half the epochs, about the same updates
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
# the depth closest to the baseline's count for each (AAN 8.83M, CAN 8.61M; tests/test_small_configs.py)
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
