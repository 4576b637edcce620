"""`npllm.functional` (imported as `F`): the neural-network ops, with the names and
semantics of torch.nn.functional. Each op is one `Function` whose forward and backward
call kernels from `npllm.kernels` (and so follow its backend switch); the math of every
kernel is written out in its module's docstring. Each `forward` checks its inputs.

    basic.py       linear, relu, gelu, swiglu, softmax, log_softmax, layer_norm, rms_norm,
                   embedding, cross_entropy, dropout
    attention.py   scaled_dot_product_attention, attention_qkv, attention_heads, rope,
                   repeat_kv

All ops keep the input dtype (float32 or float64), accept non-contiguous inputs and work
at T = 1 and odd sizes. Integer inputs (embedding ids, cross-entropy targets) may be NumPy
arrays or Tensors and receive no gradient.
"""

from npllm.functional.attention import (
    attention_heads,
    attention_qkv,
    repeat_kv,
    rope,
    scaled_dot_product_attention,
)
from npllm.functional.basic import (
    cross_entropy,
    dropout,
    embedding,
    gelu,
    layer_norm,
    linear,
    log_softmax,
    relu,
    rms_norm,
    softmax,
    swiglu,
)

__all__ = [
    "attention_heads",
    "attention_qkv",
    "cross_entropy",
    "dropout",
    "embedding",
    "gelu",
    "layer_norm",
    "linear",
    "log_softmax",
    "relu",
    "repeat_kv",
    "rms_norm",
    "rope",
    "scaled_dot_product_attention",
    "softmax",
    "swiglu",
]
