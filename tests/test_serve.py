"""`llmtune serve`: the official `openai` client talks to the server (transformers' own, with our model pinned) in a
subprocess on 127.0.0.1: a chat completion, a stream that adds up to the same greedy answer, the served model
listed, and an unknown model name answered with HTTP 404 and a message naming the served one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT_S = 180  # importing the serving stack and loading the model on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    """`llmtune serve --model TINY --name tiny` on a free port; always stopped, with bounded waits."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "llmtune", "serve", "--model", str(tiny_model_dir), "--port", str(port),
           "--name", "tiny"]  # fmt: skip
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_openai_client_gets_completions_streams_and_a_404_for_an_unknown_model(server) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=60, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    answer = reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant" and answer
    assert reply.usage.completion_tokens <= 12 and reply.choices[0].finish_reason in ("stop", "length")

    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == answer, "streamed greedy answer equals the non-streamed one"

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=4)
    assert caught.value.status_code == 404
    assert "'gpt-4o' is not served here" in caught.value.message and "'tiny'" in caught.value.message
