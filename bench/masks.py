"""Training with padding masks against training without, in cgru and its peers.

    python bench/masks.py               # prints the table (bench/report.py records it)

A text classifier's training step: Embedding(1000, 64, mask_zero=True) + GRU(128) + Dense(1,
sigmoid), batch 64 of 100 token ids whose valid lengths are drawn in [20, 100] (the rest is
padding, index 0). "masked" trains with the padding mask (cgru and Keras from mask_zero, PyTorch
from pack_padded_sequence); "unmasked" trains the same model without it (mask_zero=False, no
packing) on the same ids. The median of 15 steps after 3 warm-up steps, one thread count for all
(the process default), in one process, side by side.
"""
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

B, T, VOCAB, EMBED, UNITS = 64, 100, 1000, 64, 128
WARMUP, REPEATS = 3, 15


def _data():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, T + 1, size=B)
    ids = rng.integers(1, VOCAB, size=(B, T))
    ids[np.arange(T)[None, :] >= lengths[:, None]] = 0
    labels = (rng.random(B) < 0.5).astype(np.float32)
    return ids, lengths, labels


def _median_step(step):
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cgru(masked, ids, labels):
    import cgru
    from cgru import layers
    model = cgru.Sequential([layers.Embedding(VOCAB, EMBED, mask_zero=masked),
                             layers.GRU(UNITS), layers.Dense(1, activation="sigmoid")], seed=0)
    model.compile("adam", "binary_crossentropy")
    return _median_step(lambda: model.train_on_batch(ids, labels))


def _keras(masked, ids, labels):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    model = keras.Sequential([keras.Input((T,), dtype="int32"),
                              keras.layers.Embedding(VOCAB, EMBED, mask_zero=masked),
                              keras.layers.GRU(UNITS),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    return _median_step(lambda: model.train_on_batch(ids, labels))


def _torch(masked, ids, lengths, labels):
    import torch
    torch.manual_seed(0)
    embed = torch.nn.Embedding(VOCAB, EMBED, padding_idx=0)
    gru = torch.nn.GRU(EMBED, UNITS, batch_first=True)
    head = torch.nn.Linear(UNITS, 1)
    params = list(embed.parameters()) + list(gru.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params)
    x, y = torch.from_numpy(ids), torch.from_numpy(labels)[:, None]
    lens = torch.from_numpy(lengths)

    def step():
        optimizer.zero_grad()
        e = embed(x)
        if masked:
            packed = torch.nn.utils.rnn.pack_padded_sequence(e, lens, batch_first=True,
                                                             enforce_sorted=False)
            _, h = gru(packed)
        else:
            _, h = gru(e)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(h[-1]), y)
        loss.backward()
        optimizer.step()

    return _median_step(step)


def measure():
    """[(implementation, unmasked s, masked s)] for the installed implementations."""
    ids, lengths, labels = _data()
    rows = [("cgru", _cgru(False, ids, labels), _cgru(True, ids, labels))]
    try:
        rows.append(("torch (pack_padded_sequence)", _torch(False, ids, lengths, labels),
                     _torch(True, ids, lengths, labels)))
    except ImportError:
        pass
    try:
        rows.append(("keras 3, torch backend", _keras(False, ids, labels),
                     _keras(True, ids, labels)))
    except ImportError:
        pass
    return rows


def table(rows):
    lines = ["| implementation | unmasked step | masked step | masked / unmasked | masked vs cgru |",
             "|---|---|---|---|---|"]
    cgru_masked = rows[0][2]
    for name, plain, masked in rows:
        lines.append(f"| {name} | {plain * 1e3:.1f} ms | {masked * 1e3:.1f} ms | "
                     f"{masked / plain:.2f}x | {masked / cgru_masked:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(measure()))
