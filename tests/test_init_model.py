"""init-model: tokenizer training, the LLaMA build, the closed-form parameter count and safe writing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from llmtune.errors import UserError
from llmtune.jobs.init_model import (
    PRESETS,
    build_model,
    init_model,
    llama_config,
    llama_param_count,
    rule_of_thumb_param_count,
    write_model_dir,
)
from llmtune.tokenizers.train import MIN_VOCAB_SIZE, SPECIAL_TOKENS, iter_corpus, train_tokenizer

CORPUS = "The quick brown fox jumps over the lazy dog.\nA second line, with numbers 1234 and a comma.\n" * 40


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmtune", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_reloaded_directory_gives_identical_logits(tmp_path: Path) -> None:
    result = init_model(tmp_path / "m", preset="tiny", vocab_size=400, seed=3)
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(
        p.name for p in (tmp_path / "m").iterdir()
    )
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = AutoTokenizer.from_pretrained(tmp_path / "m")("the answer is 42", return_tensors="pt").input_ids
    assert torch.equal(ids, result.tokenizer("the answer is 42", return_tensors="pt").input_ids)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, result.model(ids).logits)
    assert reloaded.config.vocab_size == len(result.tokenizer)
    assert not reloaded.config.tie_word_embeddings


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_param_count_matches_closed_form(preset: str) -> None:
    config = llama_config(PRESETS[preset], PRESETS[preset].vocab_size)
    model = build_model(config, seed=0)
    exact = sum(p.numel() for p in model.parameters())
    assert exact == llama_param_count(config)
    assert exact == {"tiny": 353_088, "small": 8_547_584}[preset]


@pytest.mark.parametrize("overrides", [{"tie_word_embeddings": True}, {"attention_bias": True, "mlp_bias": True}])
def test_closed_form_covers_tied_embeddings_and_biases(overrides: dict) -> None:
    config = llama_config(PRESETS["tiny"], 300)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = build_model(config, seed=0)
    assert sum(p.numel() for p in model.parameters()) == llama_param_count(config)


def test_rule_of_thumb() -> None:
    assert rule_of_thumb_param_count(vocab=2048, hidden=64, layers=2) == 2048 * 64 + 12 * 64 * 64 * 2


def test_seed_fixes_the_weights() -> None:
    config = llama_config(PRESETS["tiny"], 300)
    first, again, other = build_model(config, 1), build_model(config, 1), build_model(config, 2)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])


def test_same_seed_writes_identical_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    for name in ("a", "b"):
        init_model(tmp_path / name, preset="tiny", corpus=[corpus], vocab_size=300, seed=5)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "a").iterdir()}
    assert len(modes) == 1, "model.safetensors should be as readable as the JSON files"


def test_special_tokens_are_single_distinct_ids(tokenizer) -> None:
    assert SPECIAL_TOKENS == ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
    for token_id, token in enumerate(SPECIAL_TOKENS):
        a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
        assert tokenizer.encode(f"a{token}b", add_special_tokens=False) == [a, token_id, b]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 2, 3)
    assert tokenizer.encode("hello", add_special_tokens=True) == tokenizer.encode("hello", add_special_tokens=False)


@pytest.mark.parametrize("text", ["The answer is 42.", "  two  spaces\n\nand tabs\t", "Ünïcödé 日本語 🙂 ∑"])
def test_text_round_trips(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_chat_template_renders_chatml(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert "{% generation %}" not in tokenizer.chat_template
    with pytest.raises(Exception, match="Unsupported chat role: tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_written_configs(tiny_model_dir: Path) -> None:
    generation = GenerationConfig.from_pretrained(tiny_model_dir)
    assert generation.eos_token_id == [2, 0]
    assert (generation.bos_token_id, generation.pad_token_id) == (0, 3)
    tokenizer_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"].startswith("{%- for message in messages %}")
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert tokenizer_config["pad_token"] == "<|pad|>"


def test_corpus_files_plain_and_jsonl(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("first line\n\nsecond line\n")
    rows = tmp_path / "b.jsonl"
    rows.write_text('{"text": "a row"}\n\n{"text": "another row", "id": 2}\n')
    assert list(iter_corpus([text, rows])) == ["first line\n", "second line\n", "a row", "another row"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: .*\"text\" field"):
        list(iter_corpus([bad]))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(UserError, match=r"blank\.txt has no text"):
        list(iter_corpus([blank]))


def test_vocab_size_too_small_names_the_range(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"between {MIN_VOCAB_SIZE} .* and "):
        init_model(tmp_path / "m", preset="tiny", vocab_size=MIN_VOCAB_SIZE - 1)
    assert not (tmp_path / "m").exists()


def test_failed_write_leaves_previous_model_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("previous model")
    tokenizer = train_tokenizer(CORPUS.splitlines(), vocab_size=300)
    model = build_model(llama_config(PRESETS["tiny"], len(tokenizer)), seed=0)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        write_model_dir(out, model, tokenizer, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_writes_then_refuses_then_overwrites(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "model"
    first = _cli("init-model", str(out), "--preset", "tiny", "--corpus", str(corpus), "--vocab-size", "300")
    assert first.returncode == 0, first.stderr
    assert "Parameters:" in first.stderr and "Rule of thumb" in first.stderr
    before = _digest(out)

    again = _cli("init-model", str(out), "--preset", "tiny", "--corpus", str(corpus))
    assert again.returncode == 2
    assert str(out) in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert _digest(out) == before

    replaced = _cli("init-model", str(out), "--preset", "tiny", "--corpus", str(corpus), "--seed", "1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    after = _digest(out)
    assert after.keys() == before.keys() and after["model.safetensors"] != before["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_missing_corpus_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.txt"
    result = _cli("init-model", str(tmp_path / "m"), "--preset", "tiny", "--corpus", str(missing))
    assert result.returncode == 2
    assert "nowhere.txt" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()
