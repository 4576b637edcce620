"""Overfit one batch of Shakespeare with npllm alone: the smallest end-to-end proof that
the model, its gradients and AdamW work together. The loss should fall from ~ln(V) to
near zero as the model memorises the batch.

    python examples/overfit_batch.py [path/to/text.txt]

Without a path it reads ../shared/data/tinyshakespeare.txt when present, else fetches
the tinyshakespeare corpus (checksummed) through npllm.data.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from npllm import GPT, GPTConfig, clip_grad_norm, cosine_lr
from npllm.data import load_corpus

LOCAL = Path("../shared/data/tinyshakespeare.txt")


def main(argv: list[str]) -> None:
    text = load_corpus(argv[0] if argv else str(LOCAL) if LOCAL.exists() else "tinyshakespeare")
    # a character-level vocabulary: the text's characters, sorted
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    B, T = 8, 64
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(text) - T - 1, B)
    ids = np.array([[stoi[c] for c in text[s : s + T + 1]] for s in starts])  # (B, T+1)
    x, y = ids[:, :-1], ids[:, 1:]  # each position predicts the next character

    config = GPTConfig(vocab_size=len(chars), block_size=T, n_layer=2, n_head=4, n_embd=64)
    model = GPT(config, seed=0)
    opt = model.configure_optimizers(weight_decay=0.0, learning_rate=3e-3, betas=(0.9, 0.95))
    print(f"{model.num_params() / 1e3:.1f}k parameters, vocab {len(chars)}, batch {B}x{T}")
    t0 = time.perf_counter()
    steps = 200
    for step in range(steps + 1):
        # warm up, then decay: a small final lr keeps Adam from spiking near zero loss
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, 3e-3, warmup_iters=10, decay_iters=steps, min_lr=1e-4)
        _, loss = model(x, y)
        model.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    print(f"final loss {loss.item():.4f} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
