"""`npllm export --format onnx` judged by ONNX Runtime: the graph (built with the onnx
helpers, no PyTorch) passes onnx.checker, takes any batch and sequence length up to
block_size, and gives npllm's logits within 1e-4; the int8 file holds exactly npllm's int8
model (equal logits with ONNX Runtime's basic optimizations) and, in a default session,
where ONNX Runtime fuses each DequantizeLinear + MatMul into its 8-bit MatMulNBits (which
rounds the activations to 8 bits as well), stays within 2% of the largest logit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from npllm.cli import main
from npllm.decoder import Decoder
from npllm.export.onnx import write_onnx
from npllm.quant import load_weights, quantize_state_dict
from tests.export.conftest import perturbed, save_run, tiny_config


def session(path, basic: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, ids: np.ndarray) -> np.ndarray:
    return sess.run(["logits"], {"input_ids": ids.astype(np.int64)})[0]


LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", bias=False, mlp_hidden=40)
OPTIONS = [
    {},
    {"activation": "gelu_exact", "tie_embeddings": False},
    {"activation": "relu", "bias": False, "mlp_hidden": 48},
    {**LLAMA, "n_kv_head": 2, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    {**LLAMA, "n_kv_head": 1, "bias": True, "tie_embeddings": False, "sliding_window": 5},
]
IDS = ["gelu-tanh", "gelu-exact-untied", "relu-nobias", "llama-gqa-yarn", "mistral-mqa-window"]


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_onnxruntime_gives_npllm_logits_at_any_batch_and_length(tmp_path, bpe, options):
    model = perturbed(tiny_config(bpe.vocab_size, **options), seed=8)
    path = write_onnx(model.config, model.state_dict(), tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(path))
    sess = session(path)
    rng = np.random.default_rng(0)
    for shape in [(3, 50), (1, 1), (2, model.config.block_size)]:
        ids = rng.integers(0, bpe.vocab_size, shape)
        np.testing.assert_allclose(run(sess, ids), model(ids)[0].data, atol=1e-4, rtol=0)


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_onnx_int8_is_npllms_int8_model(tmp_path, bpe, options):
    model = perturbed(tiny_config(bpe.vocab_size, **options), seed=9)
    sd = model.state_dict()
    f32 = write_onnx(model.config, sd, tmp_path / "f.onnx")
    path = write_onnx(model.config, sd, tmp_path / "q.onnx", int8=True)
    assert path.stat().st_size < 0.5 * f32.stat().st_size
    ids = np.random.default_rng(1).integers(0, bpe.vocab_size, (2, 40))
    int8 = Decoder(model.config, load_weights(quantize_state_dict(sd)))(ids)
    np.testing.assert_allclose(run(session(path, basic=True), ids), int8, atol=1e-5, rtol=0)
    scale = np.abs(int8).max()
    assert np.abs(run(session(path), ids) - int8).max() <= 0.02 * scale


def test_export_cli_onnx_and_its_refusals(tmp_path, bpe, bpe_run, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(bpe_run), "--format", "onnx", "--out", str(out)]) == 0
    args = ["export", str(bpe_run), "--format", "onnx", "--out", str(tmp_path / "q.onnx")]
    assert main([*args, "--quantize", "int8"]) == 0
    assert run(session(out), np.array([[1, 2, 3]])).shape == (1, 3, bpe.vocab_size)
    capsys.readouterr()
    assert main([*args, "--quantize", "q8_0"]) == 2
    assert "use int8" in capsys.readouterr().err
    model = perturbed(tiny_config(bpe.vocab_size, pos_embedding="rope", norm="rmsnorm"), 1)
    save_run(tmp_path / "llama", model, bpe)
    code = main(["export", str(tmp_path / "llama"), "--format", "onnx", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "RoPE" in err and len(err.strip().splitlines()) == 1
    code = main(["export", str(bpe_run), "--format", "onnx", "--out", str(tmp_path)])
    assert code == 2 and "is a folder" in capsys.readouterr().err
