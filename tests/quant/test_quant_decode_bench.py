"""benchmarks/quant_decode.py end to end at the tiny shape: npllm int4/int8 and llama.cpp
Q4_0/Q8_0 each in processes of their own, and the RESULTS.md section written. It tests the
machinery, not the speed (nor the ids: llama.cpp's 8-bit activations may flip a near-tie
of random weights; tests/quant/test_q4_0_export.py compares the logits)."""

from __future__ import annotations

from benchmarks import llama_cpp_decode, quant_decode


def test_quant_decode_benchmark_runs_each_side_in_its_own_process(tmp_path, monkeypatch):
    seen = []
    real = llama_cpp_decode.alternate  # quant_decode measures through llama_cpp_decode

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(llama_cpp_decode, "alternate", recording)
    out = tmp_path / "RESULTS.md"
    argv = ["--shape", "tiny", "--rounds", "1", "--samples", "1", "--results", str(out)]
    assert quant_decode.main(argv) == 0
    results = seen[-1]
    assert set(quant_decode.RUNS) <= set(results)
    for label, runs in results.items():
        info = runs[0]["info"]
        assert info["loaded"]["npllm"] == label.startswith("npllm"), label
        assert not info["loaded"]["torch"]
    assert len(results["npllm int4"][0]["ids"]) == len(results["llama.cpp Q4_0"][0]["ids"])
    text = out.read_text()
    assert "## Quantized decoding beside llama.cpp" in text and "| llama.cpp Q4_0 |" in text
