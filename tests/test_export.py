"""`llmtune export`: the merged model reloads with plain transformers and gives the logits of base + adapter, for
LoRA, DoRA and a QLoRA adapter trained on a 4-bit base (dequantized before merging); the card records the recipe
and the numbers and no secrets; a non-empty --out is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_runner import run_main as cli

PROBE = torch.tensor([[5, 17, 99, 250, 3, 41, 77, 300, 12, 8, 64, 128]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


def make_adapter(base_dir: Path, out: Path, dora: bool) -> Path:
    """A LoRA/DoRA adapter with random non-zero weights on every linear layer, saved by peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, use_dora=dora)
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_merged_lora_and_dora_reload_with_plain_transformers(dora, tiny_model_dir, tmp_path, capsys) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", dora)
    recipe = {"stage": "sft", "model": {"name_or_path": str(tiny_model_dir)}, "method": {"kind": "lora"},
              "data": {"train": [{"path": "train.jsonl"}]}, "hub": {"endpoint": "https://user:s3cret@mirror.example"},
              "output": {"dir": str(adapter)}}  # fmt: skip
    (adapter / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    (adapter / "summary.json").write_text(json.dumps({"steps": 8, "final_loss": 1.25, "eval_loss": 1.5}))
    out = tmp_path / "merged"
    code, _, err = cli(capsys, "export", "--adapter", str(adapter), "--out", str(out), "--max-shard-size", "100KB")
    assert code == 0, err

    expected = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter))
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(logits(merged), expected, atol=1e-5)
    assert not torch.allclose(logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir)), expected, atol=1e-3)

    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "sharded at 100KB"
    assert not list(out.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert GenerationConfig.from_pretrained(out).eos_token_id == [2, 0]
    card = (out / "README.md").read_text()
    assert str(tiny_model_dir) in card and "sft / lora" in card and "final_loss | 1.25" in card
    assert "mirror.example" in card and "s3cret" not in card, "credentials never reach the card"


def test_qlora_adapter_is_merged_into_the_dequantized_base(tiny_recipe, tmp_path, capsys) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmtune import modeling
    from llmtune.recipe import load_recipe
    from llmtune.training.run import run

    method = {"kind": "qlora", "lora": {"r": 4, "alpha": 16, "dropout": 0.0}, "qlora": {"compute_dtype": "float32"}}
    result = run(load_recipe(tiny_recipe(method=method, train={"max_steps": 2})))
    run_dir = Path(result.output_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    expected = logits(PeftModel.from_pretrained(modeling.load_model(recipe), run_dir))

    out = tmp_path / "merged"
    code, _, err = cli(capsys, "export", "--adapter", str(run_dir), "--out", str(out))
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert all(type(m).__name__ != "Linear4bit" for m in merged.modules())
    assert torch.allclose(logits(merged), expected, atol=1e-4)
    unquantized = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recipe.model.name_or_path),
                                                   run_dir))  # fmt: skip
    assert not torch.allclose(unquantized, expected, atol=1e-3), "merging into the original weights would differ"
    card = (out / "README.md").read_text()
    assert "sft / qlora" in card and "dequantized" in card and f"steps | {result.steps}" in card


def test_export_refuses_a_non_empty_out_without_overwrite(tiny_model_dir, tmp_path, capsys) -> None:
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", dora=False)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli(capsys, "export", "--adapter", str(adapter), "--out", str(out))
    assert code == 2 and "is not empty" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = cli(capsys, "export", "--adapter", str(adapter), "--out", str(out), "--overwrite")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    code, _, err = cli(capsys, "export", "--adapter", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"))
    assert code == 2 and "not a PEFT adapter directory" in err


class FakeHub:
    """The four Hub endpoints an upload of small files uses (create repo, validate card, preupload, commit),
    answering like the Hub and recording the commit; huggingface_hub's real client talks to it over HTTP."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str | None]] = []
        self.files: dict[str, bytes] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append((self.path, self.headers.get("authorization")))
                self.reply(hub.answer(self.path, body))

            def reply(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, body: bytes) -> dict:
        import base64

        if path == "/api/repos/create":
            spec = json.loads(body)
            return {"url": f"{self.url}/{spec['organization']}/{spec['name']}"}
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if "/commit/" in path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return {"commitUrl": f"{self.url}/me/tiny/commit/{'a' * 40}", "commitOid": "a" * 40}
        return {}


def test_push_uploads_the_exported_folder_with_the_environment_token(tiny_model_dir, tmp_path, capsys, monkeypatch):
    hub = FakeHub()
    try:
        monkeypatch.setenv("HF_TOKEN", "hf_secret_from_env")
        out = tmp_path / "merged"
        code, _, err = cli(capsys, "export", "--model", str(tiny_model_dir), "--out", str(out), "--push", "me/tiny",
                           "--endpoint", hub.url)  # fmt: skip
        assert code == 0, err
    finally:
        hub.server.shutdown()
    assert [path for path, _ in hub.requests][0] == "/api/repos/create"
    assert all(auth == "Bearer hf_secret_from_env" for _, auth in hub.requests)
    assert hub.files == {p.name: p.read_bytes() for p in out.iterdir()}
    assert not any(b"hf_secret_from_env" in data for data in hub.files.values())
    assert "pushed to" in err
