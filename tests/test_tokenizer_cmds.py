"""llmtune tokenizer train / extend: tokenizers from any row format; an extended tokenizer keeps old text's ids,
shortens the new language, and its resized model gives the same logits on old ids; pt then learns the new rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.cli_runner import run_main

ZH_WORDS = [
    "天气",
    "公园",
    "散步",
    "学习",
    "中文",
    "朋友",
    "今天",
    "明天",
    "我们",
    "你们",
    "喜欢",
    "吃饭",
    "工作",
    "城市",
    "火车",
    "非常",
    "好",
    "的",
    "了",
    "是",
    "在",
    "书",
]
ADD = 64


def zh_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ZH_WORDS) for _ in range(24)) + "。" for _ in range(n)]


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path, dict]:
    """(zh corpus file, extended model dir, the figures extend returned)."""
    from llmtune.jobs.tokenizer import extend

    root = tmp_path_factory.mktemp("extend")
    corpus = root / "zh.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in zh_texts(300, 0)))
    out = root / "model"
    figures = extend(str(tiny_model_dir), [corpus], ADD, out, overwrite=False)
    return corpus, out, figures


def test_extended_tokenizer_keeps_old_text_and_shortens_the_new_language(extended, tiny_model_dir, tiny_data_dir):
    from transformers import AutoTokenizer

    _, out, figures = extended
    base, ext = AutoTokenizer.from_pretrained(str(tiny_model_dir)), AutoTokenizer.from_pretrained(str(out))
    assert len(ext) == len(base) + ADD and figures["added"] == ADD
    old = [json.loads(line)["text"] for line in (tiny_data_dir / "text.jsonl").read_text().splitlines()]
    old += ["Hello, world!\n\n  Ünïcödé 🙂\tend", "<|im_start|>user\nhi<|im_end|>\n"]
    for text in old:
        assert ext.encode(text) == base.encode(text)
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "hi"}]
    assert ext.apply_chat_template(messages, tokenize=False) == base.apply_chat_template(messages, tokenize=False)
    held_out = zh_texts(50, 99)
    for text in held_out:
        assert ext.decode(ext.encode(text, add_special_tokens=False)) == text
    per_char = [sum(len(t.encode(x, add_special_tokens=False)) for x in held_out) / sum(map(len, held_out))
                for t in (base, ext)]  # fmt: skip
    assert per_char[1] < 0.5 * per_char[0]  # about 3.0 -> 1.0 tokens per character
    assert figures["tokens_per_char_after"] < 0.5 * figures["tokens_per_char_before"]


def test_resized_model_keeps_logits_on_old_ids_and_inits_new_rows_from_their_pieces(extended, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out, _ = extended
    base, ext = (AutoModelForCausalLM.from_pretrained(str(d)) for d in (tiny_model_dir, out))
    base_tok, ext_tok = AutoTokenizer.from_pretrained(str(tiny_model_dir)), AutoTokenizer.from_pretrained(str(out))
    ids = torch.tensor([base_tok.encode("The cat sat on the mat. 今天天气很好")])
    with torch.no_grad():
        old, new = base(ids).logits, ext(ids).logits
    vocab = base.get_input_embeddings().weight.shape[0]
    assert ext.get_input_embeddings().weight.shape[0] == vocab + ADD
    assert torch.equal(old, new[..., :vocab])
    token_id = len(base_tok)
    pieces = base_tok.encode(ext_tok.decode([token_id]), add_special_tokens=False)
    assert len(pieces) > 1
    expected = base.get_input_embeddings().weight[pieces].mean(0)
    assert torch.allclose(ext.get_input_embeddings().weight[token_id], expected)
    assert torch.allclose(
        ext.get_output_embeddings().weight[token_id], base.get_output_embeddings().weight[pieces].mean(0)
    )


def test_pt_on_the_extended_model_lowers_the_new_languages_loss(extended, tiny_recipe, tmp_path, capsys):
    from llmtune.eval.measure import document_perplexities
    from llmtune.infer.load import load_for_inference

    corpus, out, _ = extended
    held_out = zh_texts(16, 7)

    def perplexity(model: str | None, adapter: str | None = None) -> float:
        loaded = load_for_inference(model, adapter, device="cpu")
        scores = document_perplexities(loaded.model, loaded.tokenizer, held_out, context=128, batch_size=8)
        return sum(scores) / len(scores)

    lora = {
        "kind": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": ["embed_tokens", "lm_head"]},
    }
    recipe = tiny_recipe(stage="pt", method=lora, source=[{"path": str(corpus), "format": "text"}],
                         model={"name_or_path": str(out)}, train={"max_steps": 12})  # fmt: skip
    code, _, err = run_main(capsys, "pt", "--recipe", str(recipe))
    assert code == 0, err
    before, after = perplexity(str(out)), perplexity(None, str(tmp_path / "recipe-out"))
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_tokenizer_train_on_chat_rows(kind, tmp_path, capsys, tiny_data_dir):
    from transformers import AutoTokenizer

    out = tmp_path / kind
    code, _, err = run_main(capsys, "tokenizer", "train", "--corpus", str(tiny_data_dir / "sft_messages.jsonl"),
                            "--corpus", str(tiny_data_dir / "text.jsonl"), "--out", str(out), "--vocab-size", "400",
                            "--kind", kind)  # fmt: skip
    assert code == 0, err
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) <= 400 + 1
    assert len(tok.encode("<|im_start|>", add_special_tokens=False)) == 1
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_extend_refuses_a_non_bpe_base_and_bad_counts(tmp_path, capsys, tiny_data_dir):
    corpus = str(tiny_data_dir / "text.jsonl")
    code, _, err = run_main(capsys, "tokenizer", "train", "--corpus", corpus, "--out", str(tmp_path / "sp"),
                            "--vocab-size", "400", "--kind", "sentencepiece")  # fmt: skip
    assert code == 0, err
    code, _, err = run_main(capsys, "tokenizer", "extend", str(tmp_path / "sp"), "--corpus", corpus, "--add", "8",
                            "--out", str(tmp_path / "x"))  # fmt: skip
    assert code == 2 and "only byte-level BPE" in err
    code, _, err = run_main(capsys, "tokenizer", "extend", str(tmp_path / "sp"), "--corpus", corpus, "--add", "0",
                            "--out", str(tmp_path / "y"))  # fmt: skip
    assert code == 2 and "--add 0" in err
