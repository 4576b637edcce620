"""The demo MLP (the README's main job until training lands) and the CLI's help."""

from __future__ import annotations

import numpy as np

from npllm import cli
from npllm.autograd import gradcheck
from npllm.commands.demo import mse, xor_mlp


def test_demo_learns_xor_and_its_gradients_pass_gradcheck(capsys):
    assert cli.main(["demo", "--steps", "400"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    first = float(lines[0].split("loss")[1])
    last = float(lines[-2].split("loss")[1])
    assert last < 0.01 < first
    preds = np.array([float(v) for v in lines[-1].split(":")[1].split()])
    np.testing.assert_array_equal(preds > 0.5, [False, True, True, False])
    x, y, params = xor_mlp(8, 0)
    assert gradcheck(mse, [x, y, *params])


def test_demo_rejects_bad_flags_with_one_line(capsys):
    assert cli.main(["demo", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--steps" in err


def test_help_lists_commands(capsys):
    assert cli.main([]) == 0
    assert "demo" in capsys.readouterr().out
