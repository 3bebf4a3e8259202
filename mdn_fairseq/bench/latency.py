"""Latency (``--latency``): every row at batch size 1, one sentence at a time, the interactive setting.

Each sentence is translated by every row in turn (the order rotating per sentence and repeat, so that
drift hits all rows alike), timed on its own; a row's result is the p50 and p95 (and mean) over its
sentences and repeats, in milliseconds per sentence.
"""

import time
from typing import Dict, List, Optional

import numpy as np
import torch

from .measure import Row, sync, translate, warm_up


def time_latency(rows: List[Row], repeats: int, warmup: int, out_len: Optional[int], device: str) -> List[List[float]]:
    """:func:`~.measure.warm_up`, then ``repeats`` passes over the sentences (``rows[i].batches``: one
    sentence each, the same sentences for every row); returns, per row, the seconds per sentence."""
    warm_up(rows, warmup)
    seconds: List[List[float]] = [[] for _ in rows]
    n = min(len(r.batches) for r in rows)
    with torch.no_grad():
        for rep in range(repeats):
            for j in range(n):
                for k in range(len(rows)):
                    i = (rep + j + k) % len(rows)
                    sync(device)
                    start = time.perf_counter()
                    translate(rows[i], out_len, rows[i].batches[j : j + 1])
                    sync(device)
                    seconds[i].append(time.perf_counter() - start)
    return seconds


def latency_records(rows: List[Row], seconds: List[List[float]]) -> List[Dict]:
    """Per row ``{"row", "p50_ms", "p95_ms", "mean_ms", "sentences", "runs_ms"}`` (percentiles with linear
    interpolation over all timed sentences)."""
    records = []
    for row, secs in zip(rows, seconds):
        ms = np.array(secs) * 1000
        p50, p95 = np.percentile(ms, [50, 95])
        records.append(
            {
                "row": row.name,
                "p50_ms": float(p50),
                "p95_ms": float(p95),
                "mean_ms": float(ms.mean()),
                "sentences": len(row.batches),
                "runs_ms": ms.tolist(),
            }
        )
    return records
