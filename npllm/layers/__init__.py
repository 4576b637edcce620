"""Layers: Module, Linear, Embedding, LayerNorm, Dropout, CausalSelfAttention, MLP, Block.

`module.py` holds the `Module` machinery (parameters, state dicts, modes); `basic.py` the
one-op layers; `attention.py` the causal self-attention; `block.py` the MLP and the block.
"""

from npllm.layers.attention import CausalSelfAttention
from npllm.layers.basic import Dropout, Embedding, LayerNorm, Linear
from npllm.layers.block import MLP, Block
from npllm.layers.module import LoadResult, Module, ModuleDict, ModuleList

__all__ = [
    "MLP",
    "Block",
    "CausalSelfAttention",
    "Dropout",
    "Embedding",
    "LayerNorm",
    "Linear",
    "LoadResult",
    "Module",
    "ModuleDict",
    "ModuleList",
]
