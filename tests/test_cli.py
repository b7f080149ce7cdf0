"""`chunkattn generate` as a user runs it: subprocesses of python -m chunkattn_core.cli."""

import json
import os
import subprocess
import sys

import pytest

SYSTEM = (
    "You are a terse assistant for a library. Answer in one short sentence and never use lists or tables."
)
ENV = {**os.environ, "OMP_WAIT_POLICY": "passive"}  # the native kernels' OpenMP threads must not spin


def generate(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "chunkattn_core.cli", "generate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


@pytest.mark.slow
def test_generate_prints_the_completion():
    result = generate("--max-tokens", "8", "--system", SYSTEM, "--chunk-size", "16", "What is a book?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_generate_jsonl_runs_all_requests(tmp_path):
    lines = [
        {"id": "a", "system": SYSTEM, "prompt": "Can I borrow a book?"},
        {"id": "b", "system": SYSTEM, "prompt": "When do you open?"},
        {"id": "c", "prompt_token_ids": [1, 9690, 198, 19556, 28]},
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    result = generate("--jsonl", str(path), "--max-tokens", "6", "--chunk-size", "16")
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["id"] for o in outputs] == ["a", "b", "c"]
    for out in outputs:
        assert {"text", "token_ids", "prompt_tokens", "cached_prompt_tokens", "finish_reason"} <= set(out)
        assert out["finish_reason"] in ("stop", "length") and 1 <= len(out["token_ids"]) <= 6
    assert outputs[0]["cached_prompt_tokens"] == 0
    assert outputs[1]["cached_prompt_tokens"] >= 16  # shares the system prompt with "a"
    assert outputs[2]["prompt_tokens"] == 5


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "PROMPT"),
        (["--jsonl", "/no/such/file.jsonl"], "cannot read /no/such/file.jsonl"),
        (["--max-tokens", "abc", "hi"], "max-tokens"),
        (["--max-tokens", "0", "hi"], "max_tokens"),
        (["--temperature", "-1", "hi"], "temperature"),
        (["--top-p", "2", "hi"], "top_p"),
        (["--chunk-size", "7", "hi"], "chunk_size"),
        (["--model", "/no/such/model", "hi"], "not found"),
    ],
)
def test_bad_input_exits_2(args, message):
    result = generate(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": \n', "requests.jsonl:2: bad JSON"),
        ('["a"]\n', "requests.jsonl:1: expected a JSON object"),
        ('{"id": "a"}\n', "requests.jsonl:1: give exactly one of"),
        ('{"prompt_token_ids": [1, "x"]}\n', "requests.jsonl:1: 'prompt_token_ids'"),
        ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "unique"),
        ("\n", "no requests"),
    ],
)
def test_bad_jsonl_exits_2(tmp_path, content, message):
    path = tmp_path / "requests.jsonl"
    path.write_text(content)
    result = generate("--jsonl", str(path), timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
