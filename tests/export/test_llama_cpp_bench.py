"""benchmarks/llama_cpp_decode.py end to end at its tiny shape: npllm and llama.cpp each in
processes of their own (npllm's never loads llama.cpp's side and the other way round),
prompt and generation timed separately, the greedy ids of npllm float32 and llama.cpp F32
compared, and the RESULTS.md section written. It tests the machinery, not the speed."""

from __future__ import annotations

from benchmarks import llama_cpp_decode


def test_llama_cpp_benchmark_runs_each_side_in_its_own_process(tmp_path, monkeypatch):
    seen = []
    real = llama_cpp_decode.alternate

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(llama_cpp_decode, "alternate", recording)
    out = tmp_path / "RESULTS.md"
    argv = ["--shape", "tiny", "--rounds", "1", "--samples", "1", "--results", str(out)]
    assert llama_cpp_decode.main(argv) == 0
    results = seen[-1]
    # (on an AMX CPU one more row: Q8_0 with llama.cpp's repacked buffers)
    assert (
        set(llama_cpp_decode.RUNS)
        <= set(results)
        <= {*llama_cpp_decode.RUNS, llama_cpp_decode.REPACKED}
    )
    pids = {label: runs[0]["info"]["pid"] for label, runs in results.items()}
    assert len(set(pids.values())) == len(results)
    for label, runs in results.items():
        info = runs[0]["info"]
        assert info["loaded"]["npllm"] == label.startswith("npllm"), label
        assert not info["loaded"]["torch"]
        assert len(runs[0]["samples"]["prefill"]) == len(runs[0]["samples"]["decode"]) == 1
    assert results["npllm float32"][0]["ids"] == results["llama.cpp F32"][0]["ids"]
    text = out.read_text()
    assert "## Decoding beside llama.cpp" in text and "| llama.cpp Q8_0 |" in text
    assert "8/8 equal" in text
