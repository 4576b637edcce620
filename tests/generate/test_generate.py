"""The KV-cache decoder and generate/stream: cached logits equal full recomputation through
`model(idx)` at every step (also across a window crop), greedy equals argmax decoding
without the cache, seeded sampling is reproducible, batches, stop sequences, streaming,
argument errors, and the int8-quantized model staying close to the float one."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import kernels
from npllm.autograd import no_grad
from npllm.decoder import _TRIALS, Decoder
from npllm.errors import ConfigError, DataError, NpllmError
from npllm.generate import generate, stream
from npllm.gpt import GPT, GPTConfig
from npllm.kernels.decode import PARALLEL, SERIAL
from npllm.quant import load_weights, quantize_state_dict

CONFIGS = {
    "gelu": GPTConfig(vocab_size=37, block_size=12, n_layer=2, n_head=2, n_embd=16),
    "relu-nobias": GPTConfig(
        vocab_size=29,
        block_size=10,
        n_layer=2,
        n_head=4,
        n_embd=16,
        bias=False,
        mlp_hidden=24,
        activation="relu",
    ),
    "gelu_exact": GPTConfig(
        vocab_size=23, block_size=8, n_layer=1, n_head=1, n_embd=8, activation="gelu_exact"
    ),
}
# wide enough that the decode step's products can take their parallel path
# (npllm.kernels.decode.PARALLEL)
WIDE = GPTConfig(vocab_size=50, block_size=6, n_layer=1, n_head=4, n_embd=256)


def make_model(name: str, seed: int = 0) -> GPT:
    model = GPT(CONFIGS[name], seed=seed)
    # spread the weights beyond the 0.02 init so logits differ visibly between tokens and
    # a wrong cache shows up
    rng = np.random.default_rng(seed + 100)
    for p in model.parameters():
        p.data += rng.normal(0, 0.3, p.shape).astype(np.float32)
    model.eval()
    return model


def full_logits(model: GPT, idx: np.ndarray) -> np.ndarray:
    """The last position's logits by recomputation, cropped to the window as nanoGPT."""
    with no_grad():
        logits, _ = model(idx[:, -model.config.block_size :])
    return logits.data[:, -1]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_logits_equal_recomputation_at_every_step_and_across_the_crop(name):
    model = make_model(name)
    cfg = model.config
    dec = Decoder.from_model(model)
    rng = np.random.default_rng(1)
    B, steps = 2, cfg.block_size + 5  # runs past the window: crops and rebuilds
    context = rng.integers(0, cfg.vocab_size, (B, 3))
    cache = dec.new_cache(B)
    logits = dec.forward(context, cache, last_only=True)
    rebuilt = 0
    for _ in range(steps):
        np.testing.assert_allclose(logits, full_logits(model, context), rtol=1e-5, atol=1e-5)
        nxt = rng.integers(0, cfg.vocab_size, (B, 1))
        context = np.concatenate([context, nxt], axis=1)
        if cache.length == cfg.block_size:
            cache.length = 0  # what `stream` does at the window's end
            logits = dec.forward(context[:, -cfg.block_size :], cache, last_only=True)
            rebuilt += 1
        else:
            logits = dec.forward(nxt, cache, last_only=True)
    assert rebuilt > 1
    # the whole-sequence forward agrees with the model too
    with no_grad():
        ref = model(context[:, -cfg.block_size :])[0].data
    np.testing.assert_allclose(
        dec.forward(context[:, -cfg.block_size :]), ref, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name", [*sorted(CONFIGS), "wide"])
@pytest.mark.parametrize("quantized", [False, True])
def test_fused_decode_step_equals_the_numpy_path(name, quantized):
    model = GPT(WIDE, seed=2) if name == "wide" else make_model(name)
    sd = model.state_dict()
    dec = Decoder(model.config, load_weights(quantize_state_dict(sd) if quantized else sd))
    if name == "wide":
        dec.par_min = PARALLEL
    B, bs = 2, model.config.block_size
    rng = np.random.default_rng(4)
    ids = rng.integers(0, model.config.vocab_size, (B, bs))
    fused, ref = dec.new_cache(B), dec.new_cache(B)
    with kernels.use("numpy"):
        dec.forward(ids[:, :2], fused)
        dec.forward(ids[:, :2], ref)
    for t in range(2, bs):
        got = dec.forward(ids[:, t : t + 1], fused, last_only=True)
        with kernels.use("numpy"):
            want = dec.forward(ids[:, t : t + 1], ref, last_only=True)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert fused.length == ref.length == t + 1
    for a, b in zip(fused.k + fused.v, ref.k + ref.v):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_serial_and_parallel_decode_agree_bitwise_and_the_decoder_picks_one():
    model = GPT(
        GPTConfig(vocab_size=50, block_size=2 * _TRIALS + 2, n_layer=1, n_head=4, n_embd=256),
        seed=5,
    )
    rng = np.random.default_rng(6)
    bs = model.config.block_size
    ids = rng.integers(0, 50, (1, bs))
    runs = {}
    for par_min in (SERIAL, PARALLEL):
        dec = Decoder.from_model(model)
        dec.par_min = par_min
        cache = dec.new_cache(1)
        dec.forward(ids[:, :1], cache)
        runs[par_min] = (
            [dec.forward(ids[:, t : t + 1], cache, last_only=True) for t in range(1, bs)]
            + cache.k
            + cache.v
        )
    for a, b in zip(runs[SERIAL], runs[PARALLEL]):
        np.testing.assert_array_equal(a, b)
    # left to itself, a decoder times both settings, then keeps the faster
    dec = Decoder.from_model(model)
    prompt = ids[0, :2]  # a prefill of 2 tokens, then one decode step per new token but the last
    generate(dec, prompt, 2 * _TRIALS, greedy=True)  # 2 * _TRIALS - 1 timed steps
    assert dec.par_min is None
    generate(dec, prompt, 2, greedy=True)
    assert dec.par_min in (SERIAL, PARALLEL)
    assert [len(v) for v in dec._timings.values()] == [_TRIALS, _TRIALS]
    # a model whose products are all small never times anything
    small = Decoder.from_model(make_model("gelu"))
    generate(small, np.array([1]), 10, greedy=True)
    assert small.par_min is None and not any(small._timings.values())


def test_greedy_is_deterministic_and_equals_argmax_decoding_without_the_cache():
    model = make_model("gelu")
    prompt = np.array([3, 1, 4, 1, 5])
    n = 20  # past block_size 12
    ids, reason = generate(model, prompt, n, greedy=True)
    assert reason == "length" and ids.shape == (n,) and ids.dtype == np.int64
    again, _ = generate(model, prompt, n, greedy=True)
    nocache, _ = generate(model, prompt, n, greedy=True, use_cache=False)
    zero_temp, _ = generate(model, prompt, n, temperature=0.0, seed=5)
    # argmax decoding by hand through model(idx)
    context = prompt[None]
    manual = []
    for _ in range(n):
        nxt = int(full_logits(model, context)[0].argmax())
        manual.append(nxt)
        context = np.concatenate([context, [[nxt]]], axis=1)
    assert ids.tolist() == again.tolist() == nocache.tolist() == zero_temp.tolist() == manual


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = make_model("relu-nobias")
    prompt = np.array([[1, 2, 3]])
    kw = dict(temperature=1.5, top_k=10, top_p=0.95, repetition_penalty=1.3)
    a, _ = generate(model, prompt, 25, seed=7, **kw)
    b, _ = generate(model, prompt, 25, seed=7, **kw)
    c, _ = generate(model, prompt, 25, seed=8, **kw)
    d, _ = generate(model, prompt, 25, seed=7, use_cache=False, **kw)
    assert a.tolist() == b.tolist() == d.tolist()
    assert a.tolist() != c.tolist()


def test_batched_prompts_match_one_at_a_time():
    model = make_model("gelu")
    prompts = np.array([[1, 2, 3, 4], [9, 8, 7, 6], [5, 5, 5, 5]])
    batch, reason = generate(model, prompts, 15, greedy=True)
    assert batch.shape == (3, 15) and reason == "length"
    for row, p in zip(batch, prompts):
        assert row.tolist() == generate(model, p, 15, greedy=True)[0].tolist()


def test_stop_token_and_stop_sequences():
    model = make_model("gelu")
    prompt = np.array([2, 7, 1])
    free, _ = generate(model, prompt, 12, seed=3, temperature=2.0)
    # a single id: ends at its first occurrence, included in the output
    tok = int(free[5])
    ids, reason = generate(model, prompt, 12, seed=3, temperature=2.0, stop=tok)
    first = free.tolist().index(tok)
    assert reason == "stop" and ids.tolist() == free[: first + 1].tolist()
    # a sequence of ids must match as a whole
    seq = free[6:8].tolist()
    ids, reason = generate(model, prompt, 12, seed=3, temperature=2.0, stop=[seq, [99]])
    assert reason == "stop" and ids[-2:].tolist() == seq and len(ids) <= 8
    # never produced -> runs to the length
    never = [int(free[0]), int(free[0]), int(free[0]), int(free[0]), 36, 36, 36]
    assert generate(model, prompt, 12, seed=3, temperature=2.0, stop=never)[1] == "length"


def test_batched_stop_pads_finished_rows_with_minus_one():
    model = make_model("gelu")
    prompts = np.array([[1, 2], [3, 4]])
    free, _ = generate(model, prompts, 10, greedy=True)
    tok = int(free[0, 2])
    ids, reason = generate(model, prompts, 10, greedy=True, stop=tok)
    row0 = ids[0].tolist()
    end = row0.index(tok)
    assert row0[: end + 1] == free[0, : end + 1].tolist()
    assert all(t == -1 for t in row0[end + 1 :])
    row1_stopped = tok in free[1].tolist()
    assert reason == ("stop" if row1_stopped else "length")


def test_stream_yields_the_same_ids_one_at_a_time_and_returns_the_reason():
    model = make_model("gelu")
    prompt = np.array([4, 4, 2])
    ids, _ = generate(model, prompt, 8, seed=11, top_k=5)
    it = stream(model, prompt, 8, seed=11, top_k=5)
    got = []
    with pytest.raises(StopIteration) as fin:
        while True:
            tok = next(it)
            assert isinstance(tok, int)
            got.append(tok)
    assert got == ids.tolist() and fin.value.value == "length"
    assert list(stream(model, prompt, 0)) == []


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(temperature=-1.0), ConfigError, "temperature"),
        (dict(top_p=0.0), ConfigError, "top_p"),
        (dict(top_k=0), ConfigError, "top_k"),
        (dict(max_new_tokens=-1), ConfigError, "max_new_tokens"),
        (dict(stop=[]), ConfigError, "stop"),
        (dict(idx=np.array([[1, 99]])), DataError, "vocab_size"),
        (dict(idx=np.zeros((1, 0), np.int64)), NpllmError, "non-empty"),
    ],
)
def test_bad_arguments_raise_at_the_call_not_at_the_first_token(kwargs, exc, word):
    model = make_model("gelu")
    args = dict(idx=np.array([1, 2]), max_new_tokens=3) | kwargs
    with pytest.raises(exc, match=word):
        stream(model, args.pop("idx"), args.pop("max_new_tokens"), **args)


@pytest.mark.parametrize("embedding", [False, True])
def test_quantized_model_logits_are_close_to_the_float_models(embedding):
    model = GPT(CONFIGS["gelu"], seed=3)  # the real init scale
    qdec = Decoder(
        model.config, load_weights(quantize_state_dict(model.state_dict(), embedding=embedding))
    )
    idx = np.random.default_rng(0).integers(0, 37, (2, 12))
    with no_grad():
        ref = model(idx)[0].data
    got = qdec.forward(idx)
    err = np.abs(got - ref).max()
    assert err < 0.02 * np.abs(ref).max() + 1e-4
    assert err > 0  # it is really quantized
    ids, _ = generate(qdec, idx[0, :4], 6, greedy=True)
    assert ids.shape == (6,)
