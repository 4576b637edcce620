"""The GPT's own contract: state-dict names and round trips, strict-load errors, the tie,
parameter counts, init, dropout modes, input errors, config validation, and gradcheck of
the whole model in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest

from npllm import Tensor, kernels
from npllm.autograd import gradcheck
from npllm.errors import CheckpointError, ConfigError, DataError, NpllmError, ShapeError
from npllm.gpt import GPT, GPTConfig
from tests.model.helpers import batch, perturbed, reference, tiny_config


def expected_keys(c: GPTConfig) -> list[str]:
    """docs/architecture.md's nanoGPT names, written out independently of the model."""
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    b = ("weight", "bias") if c.bias else ("weight",)
    for i in range(c.n_layer):
        h = f"transformer.h.{i}"
        keys += [f"{h}.ln_1.{s}" for s in b] + [f"{h}.attn.c_attn.{s}" for s in b]
        keys += [f"{h}.attn.c_proj.{s}" for s in b] + [f"{h}.ln_2.{s}" for s in b]
        keys += [f"{h}.mlp.c_fc.{s}" for s in b] + [f"{h}.mlp.c_proj.{s}" for s in b]
    return keys + [f"transformer.ln_f.{s}" for s in b] + ["lm_head.weight"]


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_has_nanogpt_keys_and_the_tie(bias):
    config = tiny_config(bias=bias)
    model = GPT(config)
    sd = model.state_dict()
    assert list(sd) == expected_keys(config)
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]
    assert model.lm_head.weight is model.transformer.wte.weight
    params = model.parameters()
    assert len(params) == len(sd) - 1  # the tied weight once
    assert len({id(p) for p in params}) == len(params)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in sd.values())


@pytest.mark.parametrize("overrides", [{}, dict(bias=False, mlp_hidden=24, n_layer=3)])
def test_parameter_count_equals_the_torch_reference(overrides):
    model = GPT(tiny_config(**overrides))
    ref = reference(model)
    n_ref = sum(p.numel() for p in ref.parameters())  # torch counts the tied weight once
    assert model.num_params(non_embedding=False) == n_ref
    assert model.num_params() == n_ref - ref.transformer.wpe.weight.numel()


def test_state_dict_round_trip_copies_values_and_keeps_the_tie():
    config = tiny_config()
    a, b = perturbed(GPT(config, seed=0), 0.05), GPT(config, seed=1)
    idx, targets = batch(config, B=2)
    assert not np.allclose(a(idx)[0].data, b(idx)[0].data)
    wte = b.transformer.wte.weight.data
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert b.transformer.wte.weight.data is wte  # copied in place
    assert b.lm_head.weight is b.transformer.wte.weight
    np.testing.assert_array_equal(a(idx, targets)[0].data, b(idx, targets)[0].data)
    a.transformer.wpe.weight.data += 1.0  # b holds copies, not a's arrays
    assert not np.array_equal(a.transformer.wpe.weight.data, b.transformer.wpe.weight.data)


def test_load_state_dict_accepts_tensors_and_casts_float64():
    config = tiny_config()
    a, b = GPT(config, seed=0), GPT(config, seed=1)
    sd = {k: Tensor(v.astype(np.float64)) for k, v in a.state_dict().items()}
    b.load_state_dict(sd)
    assert all(p.dtype == np.float32 for p in b.parameters())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)


def test_strict_load_names_missing_unexpected_and_mismatched_keys():
    config = tiny_config()
    model = GPT(config)
    good = {k: v.copy() for k, v in model.state_dict().items()}

    missing = dict(good)
    del missing["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(
        CheckpointError, match=r"missing keys: 'transformer\.h\.1\.mlp\.c_fc\.bias'"
    ):
        model.load_state_dict(missing)

    extra = {**good, "transformer.h.2.ln_1.weight": np.ones(32, np.float32)}
    with pytest.raises(
        CheckpointError, match=r"unexpected keys: 'transformer\.h\.2\.ln_1\.weight'"
    ):
        model.load_state_dict(extra)

    wrong = {**good, "transformer.wpe.weight": np.zeros((8, 32), np.float32)}
    with pytest.raises(CheckpointError, match=r"'transformer\.wpe\.weight'.*\(16, 32\).*\(8, 32\)"):
        model.load_state_dict(wrong)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        model.load_state_dict(wrong, strict=False)  # shapes are checked even when not strict

    untied = {**good, "lm_head.weight": good["lm_head.weight"] + 1.0}
    with pytest.raises(CheckpointError, match="tied"):
        model.load_state_dict(untied)

    before = model.transformer.wpe.weight.data.copy()
    with pytest.raises(NpllmError):
        model.load_state_dict(missing)
    np.testing.assert_array_equal(model.transformer.wpe.weight.data, before)  # all or nothing


def test_non_strict_load_reports_and_loads_the_rest():
    config = tiny_config()
    a, b = GPT(config, seed=0), GPT(config, seed=1)
    sd = {k: v for k, v in a.state_dict().items() if "ln_f" not in k}
    sd["extra.weight"] = np.zeros(3, np.float32)
    b_ln = b.transformer.ln_f.bias.data.copy()
    result = b.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    assert result.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(b.transformer.wpe.weight.data, a.transformer.wpe.weight.data)
    np.testing.assert_array_equal(b.transformer.ln_f.bias.data, b_ln)


def test_init_follows_the_design():
    config = tiny_config(n_layer=3, n_embd=64, n_head=4, vocab_size=300)
    model = GPT(config, seed=0)
    sd = model.state_dict()
    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, arr in sd.items():
        if name.endswith("bias"):
            assert np.all(arr == 0), name
        elif ".ln_" in name:
            assert np.all(arr == 1), name
        else:
            std = proj_std if name.endswith("c_proj.weight") else 0.02
            assert abs(arr.mean()) < 0.2 * std, name
            assert abs(arr.std() / std - 1) < 0.1, name
    again = GPT(config, seed=0).state_dict()
    other = GPT(config, seed=1).state_dict()
    assert all(np.array_equal(sd[k], again[k]) for k in sd)  # the seed fixes the init
    assert not np.array_equal(sd["transformer.wte.weight"], other["transformer.wte.weight"])
    wide = GPT(config, seed=0, dtype=np.float64).state_dict()  # the same draws in float64
    assert all(wide[k].dtype == np.float64 for k in wide)
    assert all(np.array_equal(wide[k].astype(np.float32), sd[k]) for k in sd)


def test_tied_gradient_is_the_sum_of_both_uses():
    config = tiny_config()
    tied = perturbed(GPT(config, seed=0), 0.05)
    untied = GPT(config, seed=5)
    untied.load_state_dict(tied.state_dict())
    untied.lm_head.weight = Tensor(tied.lm_head.weight.data.copy(), requires_grad=True)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    idx, targets = batch(config, B=2)
    for m in (tied, untied):
        m(idx, targets)[1].backward()
    emb_grad = untied.transformer.wte.weight.grad
    head_grad = untied.lm_head.weight.grad
    assert np.abs(emb_grad).max() > 0 and np.abs(head_grad).max() > 0
    np.testing.assert_allclose(
        tied.transformer.wte.weight.grad, emb_grad + head_grad, rtol=1e-5, atol=1e-7
    )


def test_dropout_in_training_and_eval():
    config = tiny_config(dropout=0.3)
    model = perturbed(GPT(config, seed=0), 0.05)
    plain = GPT(tiny_config(dropout=0.0), seed=9)
    plain.load_state_dict(model.state_dict())
    idx, targets = batch(config, B=2)

    model.eval()
    assert not any(m.training for m in model.modules())
    e1, e2 = model(idx)[0].data, model(idx)[0].data
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_allclose(e1, plain(idx)[0].data, rtol=0, atol=1e-6)

    model.train()
    assert all(m.training for m in model.modules())
    t1, t2 = model(idx)[0].data, model(idx)[0].data
    assert not np.allclose(t1, e1) and not np.allclose(t1, t2)  # fresh masks each call
    twin = GPT(config, seed=0)
    twin.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(twin(idx)[0].data, t1)  # the seed fixes the masks
    loss = model(idx, targets)[1]
    loss.backward()
    assert all(np.isfinite(p.grad).all() for p in model.parameters())


def test_errors_name_both_numbers():
    config = tiny_config()
    model = GPT(config)
    with pytest.raises(ShapeError, match=r"17.*block_size 16"):
        model(np.zeros((1, 17), dtype=np.int64))
    with pytest.raises(DataError, match=r"65.*vocab_size 65"):
        model(np.full((1, 4), 65))
    with pytest.raises(DataError, match=r"-2.*vocab_size 65"):
        model(np.array([[1, -2]]))
    with pytest.raises(ShapeError, match="integer"):
        model(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(ShapeError, match=r"\(B, T\)"):
        model(np.zeros(4, dtype=np.int64))
    with pytest.raises(ShapeError, match="targets"):
        model(np.zeros((2, 4), dtype=np.int64), np.zeros((2, 3), dtype=np.int64))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(n_embd=30, n_head=4), "divisible"),
        (dict(n_layer=0), "n_layer"),
        (dict(vocab_size=-3), "vocab_size"),
        (dict(activation="swish"), "swish"),
        (dict(dropout=1.0), "dropout"),
        (dict(mlp_hidden=0), "mlp_hidden"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**overrides)


def test_configure_optimizers_decays_only_2d_weights():
    model = GPT(tiny_config())
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=3e-4, betas=(0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(model.parameters())
    assert sum(p is model.transformer.wte.weight for p in decay["params"]) == 1
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_float64_model_keeps_the_tie():
    model = GPT(tiny_config()).to(np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    idx, targets = batch(model.config, B=1, T=4)
    logits, loss = model(idx, targets)
    assert logits.dtype == np.float64 and loss.dtype == np.float64


def _swap_parameters(model: GPT, new: list[Tensor]) -> None:
    """Put the Tensors gradcheck hands to `fn` into the model's slots, the tied one in both."""
    old = {id(p): q for p, q in zip(model.parameters(), new)}
    for m in model.modules():
        for name, value in list(vars(m).items()):
            if isinstance(value, Tensor) and id(value) in old:
                setattr(m, name, old[id(value)])


@pytest.mark.parametrize("activation", ["gelu", "gelu_exact"])
def test_whole_gpt_passes_gradcheck_in_float64(activation):
    config = GPTConfig(
        vocab_size=7,
        block_size=4,
        n_layer=2,
        n_head=2,
        n_embd=8,
        mlp_hidden=12,
        activation=activation,
    )
    model = perturbed(GPT(config, seed=0).to(np.float64), scale=0.3)
    idx, targets = batch(config, B=2, seed=2, ignore=1)
    params = model.parameters()
    assert len(params) == 2 + 2 * 12 + 2  # wte (tied), wpe, 12 per block, ln_f

    def loss_of(*ps: Tensor) -> Tensor:
        _swap_parameters(model, list(ps))
        return model(idx, targets)[1]

    # the NumPy kernels: the same math as the Numba ones (tests/kernels checks that), and
    # fast at these tiny shapes, where ~2,000 forwards would mostly pay Numba's launches;
    # the default backend's gradients are checked against PyTorch in test_gpt_vs_torch.py
    with kernels.use("numpy"):
        assert gradcheck(loss_of, params)
    assert model.lm_head.weight is model.transformer.wte.weight
