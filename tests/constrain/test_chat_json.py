"""`npllm chat --json-schema FILE`: every reply of a (tiny, untrained-quality) chat model
is JSON valid against the schema, and ends with `<|im_end|>` only once it is complete."""

from __future__ import annotations

import json

import jsonschema
import pytest

from npllm import cli
from tests.cli.conftest import TINY

SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"enum": ["calm", "curious", "sleepy"]},
        "words": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "fish": {"type": "integer"},
    },
    "required": ["mood", "words"],
}


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("jsonchat")
    prep = ["prepare", "--corpus", "chat-demo", "--size", "100", "--out", str(d / "data")]
    assert cli.main([*prep, "--tokenizer", "bpe", "--vocab-size", "300"]) == 0
    args = ["train", "--data", str(d / "data"), "--out", str(d / "run"), *TINY]
    assert cli.main([*args, "--block-size", "128", "--max-iters", "5"]) == 0
    (d / "schema.json").write_text(json.dumps(SCHEMA))
    return d


@pytest.mark.parametrize("seed", range(6))
def test_chat_replies_validate(chat_run, capsys, seed):
    argv = ["chat", "--run", str(chat_run / "run"), "--prompt", "how are you?"]
    argv += ["--json-schema", str(chat_run / "schema.json"), "--temperature", "1.0"]
    assert cli.main([*argv, "--max-new-tokens", "80", "--seed", str(seed)]) == 0
    out, err = capsys.readouterr()
    assert "reply cut" not in err  # ended at <|im_end|>, which the grammar allowed last
    jsonschema.validate(json.loads(out), SCHEMA)
