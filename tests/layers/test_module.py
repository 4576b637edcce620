"""The Module machinery on a small tree: names and order, shared parameters, state
dicts, modes, zero_grad and dtype casts."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import Tensor
from npllm.errors import CheckpointError, ConfigError
from npllm.layers import LayerNorm, Linear, Module, ModuleDict, ModuleList


class Tree(Module):
    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.inp = Linear(3, 4, rng=rng)
        self.body = ModuleDict(
            norms=ModuleList([LayerNorm(4), LayerNorm(4, bias=False)]),
            out=Linear(4, 3, bias=False, rng=rng),
        )
        self.scale = Tensor(np.ones(1, np.float32), requires_grad=True)
        self.shared = self.inp.weight  # a second name for one parameter

    def forward(self, x):
        h = self.body.norms[1](self.body.norms[0](self.inp(x)))
        return self.body.out(h) * self.scale


# PyTorch's order: module by module, a module's own tensors before its children's; a
# shared parameter keeps the first name it was reached by
NAMES = [
    "scale",
    "shared",
    "inp.bias",
    "body.norms.0.weight",
    "body.norms.0.bias",
    "body.norms.1.weight",
    "body.out.weight",
]


def test_named_parameters_are_ordered_named_and_deduplicated():
    tree = Tree()
    assert [n for n, _ in tree.named_parameters()] == NAMES
    assert len(tree.parameters()) == len(NAMES)
    sd = tree.state_dict()
    assert list(sd) == [*NAMES[:2], "inp.weight", *NAMES[2:]]  # both names of the shared one
    assert sd["shared"] is sd["inp.weight"] is tree.inp.weight.data
    assert tree.num_parameters() == 12 + 4 + 4 + 4 + 4 + 12 + 1
    assert [n for n, _ in tree.named_modules()][:3] == ["", "inp", "body"]


def test_train_eval_reach_every_module():
    tree = Tree()
    assert tree.eval() is tree
    assert not any(m.training for m in tree.modules())
    tree.train()
    assert all(m.training for m in tree.modules())
    assert tree.body.norms[1].training


def test_zero_grad_and_float64_keep_sharing():
    tree = Tree()
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    tree(x).sum().backward()
    assert all(p.grad is not None for p in tree.parameters())
    tree.zero_grad()
    assert all(p.grad is None for p in tree.parameters())
    tree.to(np.float64)
    assert tree.shared is tree.inp.weight
    assert all(p.dtype == np.float64 for p in tree.parameters())
    assert tree(x.astype(np.float64)).dtype == np.float64
    with pytest.raises(ConfigError, match="floating"):
        tree.to(np.int32)


def test_load_state_dict_copies_in_place_and_checks():
    a, b = Tree(), Tree()
    for p in a.parameters():
        p.data += 1.0
    arrays = {id(p): p.data for p in b.parameters()}
    b.load_state_dict(a.state_dict())
    assert all(arrays[id(p)] is p.data for p in b.parameters())
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    sd = dict(a.state_dict())
    sd["body.out.weight"] = np.zeros((4, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"'body\.out\.weight'.*\(3, 4\).*\(4, 3\)"):
        b.load_state_dict(sd)


def test_repr_names_the_children():
    text = repr(Tree())
    assert "(inp): Linear(3, 4, bias=True)" in text and "(0): LayerNorm(4" in text
