"""Secrets: with HF_TOKEN set (and credentials in a recipe's hub.endpoint), download, sft, export and eval, all with
-v, use the token against a mirror that demands it, yet it appears in nothing they print and no file they write.

The token is built at run time, so no token-shaped string is committed.
"""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hubmirror import FaultProxy, OlahServer, build_repo, olah_cli

REPO = "acme/secret-llama"


def marker(seed: int) -> str:
    """A value shaped like a Hub token ("hf_" and 34 letters), different in every session."""
    return "hf_" + "".join(random.Random(seed).choices(string.ascii_letters, k=34))


TOKEN = marker(int.from_bytes(os.urandom(4), "big"))
URL_SECRET = marker(int.from_bytes(os.urandom(4), "big"))[3:]


def pieces(secret: str) -> list[str]:
    """The secret and long pieces of it, so a partly masked print ("hf_...WXYZabcd1234") counts as a leak too."""
    body = secret.removeprefix("hf_")
    return [secret, body[:12], body[-12:], body[11:23]]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[FaultProxy]:
    """A Hub mirror holding the tiny model, behind a proxy that answers only requests carrying TOKEN."""
    exe, why = olah_cli()
    if exe is None:
        pytest.skip(f"the olah mirror server cannot be installed: {why}")
    root = tmp_path_factory.mktemp("secret-mirror")
    files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    build_repo(root / "mirrors", "model", REPO, [("main", files)])
    server = OlahServer(exe, root / "mirrors", root)
    try:
        server.wait_ready(f"/api/models/{REPO}/revision/main")
        proxy = FaultProxy(server.url)
        proxy.require_token = TOKEN
        yield proxy
        proxy.close()
    finally:
        server.stop()


def test_the_token_is_used_but_never_printed_or_written(mirror: FaultProxy, tmp_path: Path,
                                                        tiny_data_dir: Path) -> None:  # fmt: skip
    work, hf_home = tmp_path / "work", tmp_path / "hf"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env |= {"HF_TOKEN": TOKEN, "HF_HOME": str(hf_home), "HF_ENDPOINT": mirror.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    recipe = tmp_path / "recipe.yaml"  # outside `work`: it holds URL_SECRET itself, on purpose
    recipe.write_text(yaml.safe_dump({
        "stage": "sft",
        "model": {"name_or_path": REPO},
        "method": {"kind": "lora", "lora": {"r": 4, "alpha": 8}},
        "data": {"train": [{"path": str(tiny_data_dir / "sft_messages.jsonl")}], "max_length": 128,
                 "cache_dir": str(work / "cache")},
        "train": {"max_steps": 2, "batch_size": 2, "save_steps": 1, "logging_steps": 1},
        "hub": {"endpoint": f"https://llmtune:{URL_SECRET}@mirror.example"},
        "output": {"dir": str(work / "run")},
    }, sort_keys=False))  # fmt: skip

    printed = []
    for args in (
        ["download", REPO],
        ["sft", "--recipe", str(recipe)],
        ["export", "--adapter", str(work / "run"), "--out", str(work / "exported")],
        ["eval", "--model", str(work / "exported"), "--data", str(tiny_data_dir / "eval_messages.jsonl"),
         "--max-samples", "4", "--no-generate", "--out", str(work / "eval.json")],
    ):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "llmtune", "-v", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{args[0]}: {proc.stderr[-3000:]}"
        printed.append((args[0], proc.stdout + proc.stderr))

    authorized = [r for r in mirror.log if r.status == 200]
    assert authorized and all(r.status != 401 for r in mirror.log), "every request carried the token"
    assert (work / "run" / "recipe.yaml").is_file() and (work / "exported" / "README.md").is_file()
    assert "https://mirror.example" in (work / "run" / "recipe.yaml").read_text(), "the endpoint is kept, not its user"

    written = [p for root in (work, hf_home) for p in root.rglob("*") if p.is_file()]
    assert len(written) > 20, "the run, checkpoints, export, caches and HF cache were all scanned"
    for secret in (TOKEN, URL_SECRET):
        for piece in pieces(secret):
            for command, text in printed:
                assert piece not in text, f"{command} printed a piece of a secret"
            for path in written:
                assert piece.encode() not in path.read_bytes(), f"{path} holds a piece of a secret"
