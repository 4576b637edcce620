"""Layers: Module, Linear, Embedding, LayerNorm, CausalSelfAttention, MLP, Block."""
