"""The model description (`npllm.arch`) and the module tree agree: every name it gives is
a parameter of the model, quantization converts exactly its Linears, and the decoder's
records are built from the model's own arrays."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import arch
from npllm.decoder import Decoder
from npllm.errors import ShapeError
from npllm.gpt import GPT
from npllm.quant import is_quantized_name, quantize_state_dict
from tests.model.helpers import tiny_config


@pytest.mark.parametrize("overrides", [{}, dict(bias=False, activation="relu")])
def test_description_names_are_the_models_parameters(overrides):
    config = tiny_config(**overrides)
    model = GPT(config)
    sd = model.state_dict()
    n = arch.naming(config)
    linears = arch.linear_names(config)
    assert set(linears) <= set(sd)
    assert {n.top("embed"), n.top("norm_f")} <= set(sd)
    # quantization converts the blocks' Linears and the embedding, nothing else
    converted = {k for k in sd if is_quantized_name(k)}
    assert converted == set(linears) | {n.top("embed"), "lm_head.weight"}
    q = quantize_state_dict(sd)
    assert "lm_head.weight" not in q  # tied: the embedding's
    assert all(q[k].dtype == np.int8 for k in linears)
    # the decoder's records share the model's arrays where the model keeps one matrix
    dec = Decoder.from_model(model)
    first = dec.weights.blocks[0]
    assert first.qkv_w is sd[linears[0]] or np.shares_memory(first.qkv_w, sd[linears[0]])
    assert dec.weights.head.w is sd[n.top("embed")]


def test_missing_weights_name_the_missing_parameter():
    config = tiny_config()
    sd = dict(GPT(config).state_dict())
    name = arch.linear_names(config)[-1]
    del sd[name]
    with pytest.raises(ShapeError, match=name.rsplit(".", 1)[0]):
        Decoder(config, sd)
