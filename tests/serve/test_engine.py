"""The continuous-batching engine without HTTP: sequences that join and leave a running
batch at different steps (rows moved into the holes of finished ones, the n choices of a
request sharing one prefill) each get exactly the tokens `npllm.generate.generate` gives
them alone with the same seed; stop strings are cut and held back; cancelled rows leave."""

from __future__ import annotations

import numpy as np
import pytest

from npllm.decoder import Decoder
from npllm.generate import generate
from npllm.gpt import GPT, GPTConfig
from npllm.serve.engine import Engine
from npllm.serve.sequence import SamplingParams, Sequence, _held_back
from npllm.tokenizers import CharTokenizer

TOK = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .")


@pytest.fixture(scope="module")
def dec():
    config = GPTConfig(vocab_size=TOK.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config, seed=2)
    rng = np.random.default_rng(0)
    for p in model.parameters():  # sharper than the init, so the samples vary by context
        p.data += rng.normal(0, 0.2, p.shape).astype(np.float32)
    return Decoder.from_model(model)


def drain(engine: Engine) -> None:
    """Run the engine's loop body until nothing is left (in this thread)."""
    while engine.rows or engine.pending:
        engine._admit(engine._take())
        engine._leave()
        if engine.rows:
            engine._step()
        engine._leave()


def sequence(index, prompt, max_tokens, seed, events, **kw):
    params = SamplingParams(max_tokens=max_tokens, **{"temperature": 1.0, **kw})
    return Sequence(index, prompt, params, events.append, frozenset(), seed)


def test_rows_joining_and_leaving_get_what_generate_gives_each_alone(dec):
    engine = Engine(dec, TOK, max_batch=3)  # fewer rows than sequences: some wait
    rng = np.random.default_rng(1)
    jobs = [(list(rng.integers(0, 28, n)), m) for n, m in [(5, 30), (1, 4), (9, 12), (3, 20)]]
    # rows 0 and 2 sample alike (one batched draw), 1 and 3 each their own way
    how = [
        dict(temperature=0.7, top_k=5),
        dict(temperature=1.0, top_p=0.9),
        dict(temperature=0.7, top_k=5),
        dict(temperature=0.0),
    ]
    events: list = []
    seqs = [sequence(i, p, m, 100 + i, events, **how[i]) for i, (p, m) in enumerate(jobs)]
    engine.submit(seqs[:2])
    engine._admit(engine._take())
    for _ in range(3):  # the first two run a few steps before the others arrive
        engine._step()
        engine._leave()
    engine.submit(seqs[2:])
    drain(engine)
    assert engine.steps[3] > 0 and engine.rows == []
    for s, (prompt, m) in zip(seqs, jobs):
        want, _ = generate(dec, np.array(prompt), m, seed=100 + s.index, **how[s.index])
        assert s.ids == list(want) and s.finish_reason == "length"
        assert s.text == TOK.decode(want)
    # every choice's text arrived in pieces that add up, with one finish each
    for s in seqs:
        mine = [e for e in events if e.index == s.index]
        assert "".join(e.text for e in mine) == s.text
        assert [e.finish_reason for e in mine if e.finish_reason] == ["length"]


def test_choices_of_one_request_share_a_prefill_and_sample_apart(dec):
    engine = Engine(dec, TOK, max_batch=8)
    events: list = []
    prompt = [3, 1, 4, 1, 5]
    group = [sequence(i, prompt, 10, [7, i], events) for i in range(4)]
    engine.submit(group)
    drain(engine)
    outs = [tuple(s.ids) for s in group]
    assert len(set(outs)) > 1
    for s in group:
        want, _ = generate(dec, np.array(prompt), 10, temperature=1.0, seed=[7, s.index])
        assert list(want) == s.ids


def test_stop_strings_are_cut_and_never_sent(dec):
    engine = Engine(dec, TOK, max_batch=2)
    events: list = []
    free = sequence(0, [1, 2, 3], 40, 5, events)
    engine.submit([free])
    drain(engine)
    text = free.text
    stop = text[10:13]  # three characters the model will write at that point again
    events.clear()
    cut = sequence(0, [1, 2, 3], 40, 5, events, stop=[stop, "zzzz"])
    engine.submit([cut])
    drain(engine)
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.index(stop)]
    assert "".join(e.text for e in events) == cut.text


def test_cancelled_rows_leave_at_the_next_step(dec):
    engine = Engine(dec, TOK, max_batch=4)
    events: list = []
    seqs = [sequence(i, [1, 2], 40, i, events) for i in range(3)]
    engine.submit(seqs)
    engine._admit(engine._take())
    engine._step()
    engine.cancel(seqs[:2])
    engine._leave()
    assert engine.rows == [seqs[2]] and engine.cancelled == 2
    drain(engine)
    want, _ = generate(dec, np.array([1, 2]), 40, temperature=1.0, seed=2)
    assert seqs[2].ids == list(want)


@pytest.mark.parametrize(
    "text, stops, held",
    [("hello wor", ["world"], 3), ("hello", ["lo!", "o"], 2), ("abc", ["x"], 0), ("a", ["aa"], 1)],
)
def test_the_text_that_could_start_a_stop_string_is_held_back(text, stops, held):
    assert _held_back(text, stops) == held


def test_each_batch_size_class_times_its_own_threading():
    from npllm.decoder import _TRIALS
    from npllm.kernels.decode import PARALLEL, SERIAL

    # wide enough that the decode step's products can take their parallel path
    config = GPTConfig(vocab_size=TOK.vocab_size, block_size=48, n_layer=1, n_head=4, n_embd=256)
    engine = Engine(Decoder.from_model(GPT(config, seed=0)), TOK, max_batch=4)
    for rows in (1, 4):
        events: list = []
        engine.submit([sequence(i, [1, 2], 2 * _TRIALS + 2, i, events) for i in range(rows)])
        drain(engine)
    assert sorted(engine.threading) == [1, 3]  # 1 row; 4 rows (class 4-7)
    for par_min, timings in engine.threading.values():
        assert par_min in (SERIAL, PARALLEL)
        assert [len(t) for t in timings.values()] == [_TRIALS, _TRIALS]
