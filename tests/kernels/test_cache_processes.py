"""Numba's on-disk cache across processes: a decode step compiled for one kind of weights
in one process, and for another kind in the next, must load and run in a third. Before
`_jit.in_kernels`, the third process crashed (a call through a null pointer) because a
step compiled over a parallel product loaded from the cache was cached without that
product's parallel code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from npllm.decoder import Decoder
    from npllm.gpt import GPT, GPTConfig
    from npllm.quant import load_weights, quantize_state_dict
    c = GPTConfig(vocab_size=300, block_size=32, n_layer=1, n_head=2, n_embd=32)
    sd = GPT(c, seed=0).state_dict()
    kind = sys.argv[1]
    if kind == "int8-linears":
        sd = quantize_state_dict(sd, embedding=False)
    elif kind == "int4":
        sd = quantize_state_dict(sd, bits=4)
    dec = Decoder(c, load_weights(sd))
    cache = dec.new_cache(1)
    dec.forward(np.array([[1, 2, 3]]), cache, last_only=True)
    for t in range(12):  # the decoder times its serial and parallel steps: both run
        logits = dec.forward(np.array([[4 + t]]), cache, last_only=True)
    assert np.isfinite(logits).all()
    print(kind, "ok")
    """
)


def test_decode_steps_of_several_weight_kinds_share_the_cache(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    for kind in ("int8-linears", "f32", "f32", "int4", "f32", "int4"):
        r = subprocess.run(
            [sys.executable, "-c", SCRIPT, kind],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0 and r.stdout.strip() == f"{kind} ok", (
            f"{kind}: exit {r.returncode}\n{r.stderr[-2000:]}"
        )
