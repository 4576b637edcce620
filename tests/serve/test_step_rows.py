"""`Decoder.step_rows`: rows at different positions decoded in one fused step (the server's
continuous batching) give each row the logits it gets decoded alone, bit for bit, and the
NumPy reference agrees with the Numba kernel; GPT-2 and Llama shapes (RoPE, GQA, a sliding
window), float32 and int8 weights."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import kernels
from npllm.decoder import Decoder, KVCache
from npllm.gpt import GPT, GPTConfig
from npllm.quant import load_weights, quantize_state_dict

CONFIGS = {
    "gpt2": GPTConfig(vocab_size=41, block_size=12, n_layer=2, n_head=2, n_embd=16),
    # products big enough for BLAS (GEMM_MIN_WEIGHTS: qkv, fc and the head here, not the
    # output projection), in blocks of 64 outputs, the head's 518 with a leftover of 6
    "gpt2-wide": GPTConfig(vocab_size=518, block_size=12, n_layer=1, n_head=4, n_embd=256),
    "llama-gqa-window": GPTConfig(
        vocab_size=37,
        block_size=12,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        mlp_hidden=40,
        bias=False,
        pos_embedding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        sliding_window=5,
    ),
}


def decoder(name: str, quantized: bool) -> Decoder:
    model = GPT(CONFIGS[name], seed=3)
    rng = np.random.default_rng(4)
    for p in model.parameters():  # beyond the 0.02 init, so a wrong row or position shows
        p.data += rng.normal(0, 0.3, p.shape).astype(np.float32)
    sd = model.state_dict()
    return Decoder(model.config, load_weights(quantize_state_dict(sd) if quantized else sd))


def alone(dec: Decoder, prompt: np.ndarray, token: int) -> np.ndarray:
    """The logits after `prompt` then `token`, decoded with a cache of one row."""
    cache = dec.new_cache(1)
    dec.forward(prompt[None], cache, last_only=True)
    return dec.forward(np.array([[token]]), cache, last_only=True)[0]


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_rows_at_different_positions_equal_each_row_alone(name, quantized, backend):
    dec = decoder(name, quantized)
    rng = np.random.default_rng(0)
    V = dec.config.vocab_size
    lengths = [1, 7, 3, 11]  # 11: past the sliding window of 5
    prompts = [rng.integers(0, V, n) for n in lengths]
    tokens = rng.integers(0, V, len(lengths))
    B = len(lengths)
    cache = dec.new_cache(B)
    for b, p in enumerate(prompts):
        row = KVCache([k[b : b + 1] for k in cache.k], [v[b : b + 1] for v in cache.v])
        dec.forward(p[None], row, last_only=True)
    with kernels.use(backend):
        got = dec.step_rows(tokens, np.array(lengths, np.int64), cache)
    want = np.stack([alone(dec, p, t) for p, t in zip(prompts, tokens)])
    assert got.shape == (B, V)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rows_on_the_thread_pool_give_the_same_bits(name):
    """par_min 1 runs every product and the rows' attention in parallel chunks
    (npllm.kernels.decode): each row is still summed by one thread in the same order, so
    the logits and the cache rows written are bitwise those of the serial step."""
    from npllm.kernels.decode import SERIAL

    dec = decoder(name, False)
    rng = np.random.default_rng(5)
    V = dec.config.vocab_size
    lengths = [1, 7, 3, 11, 4, 9, 2, 10, 6]  # more rows than a driver's chunks (8)
    B = len(lengths)
    base = dec.new_cache(B)
    for b, n in enumerate(lengths):
        row = KVCache([k[b : b + 1] for k in base.k], [v[b : b + 1] for v in base.v])
        dec.forward(rng.integers(0, V, n)[None], row, last_only=True)
    tokens = rng.integers(0, V, B)
    out = {}
    for par_min in (SERIAL, 1):
        cache = KVCache([k.copy() for k in base.k], [v.copy() for v in base.v])
        dec.par_min = par_min
        out[par_min] = dec.step_rows(tokens, np.array(lengths, np.int64), cache), cache
    (a, ca), (b, cb) = out[SERIAL], out[1]
    np.testing.assert_array_equal(a, b)
    for x, y in zip(ca.k + ca.v, cb.k + cb.v):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_rows_logits_are_the_same_bits_alone_and_in_any_batch(name, quantized):
    """The server's promise that a seeded request gives the same tokens whatever else runs:
    float32 products go to BLAS in blocks of at most GEMM_ROWS rows (OpenBLAS sums
    differently from 19 rows on), small and int8 ones to the register-blocked product;
    either way a row's logits do not depend on how many rows share the step or where it
    stands."""
    from npllm.kernels.decode import GEMM_MIN_WEIGHTS, GEMM_ROWS

    if name == "gpt2-wide":
        dec = decoder(name, False)
        sizes = [r.qkv_w.size for r in dec.weights.blocks] + [dec.weights.head.w.size]
        assert min(sizes) >= GEMM_MIN_WEIGHTS  # the BLAS path is the one tested

    dec = decoder(name, quantized)
    rng = np.random.default_rng(6)
    V = dec.config.vocab_size
    B = GEMM_ROWS + 5  # two blocks of rows, the second a short one
    lengths = rng.integers(1, 12, B)
    base = dec.new_cache(B)
    for b, n in enumerate(lengths):
        row = KVCache([k[b : b + 1] for k in base.k], [v[b : b + 1] for v in base.v])
        dec.forward(rng.integers(0, V, n)[None], row, last_only=True)
    tokens = rng.integers(0, V, B)
    positions = lengths.astype(np.int64)
    full = dec.step_rows(
        tokens, positions, KVCache([k.copy() for k in base.k], [v.copy() for v in base.v])
    )
    for rows in ([0], [B - 1], [3, 17, 20], list(range(B - 1, -1, -2))):
        cache = KVCache([k[rows].copy() for k in base.k], [v[rows].copy() for v in base.v])
        got = dec.step_rows(tokens[rows], positions[rows], cache)
        np.testing.assert_array_equal(got, full[rows])
