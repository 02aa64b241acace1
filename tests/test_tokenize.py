"""Tokenization: loss masks with two templates, truncation, packing without attention leaks, the cache, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from llmtune.data.templates import check_eos, generation_eos_ids, resolve_chat_template
from llmtune.data.tokenize import prepare
from llmtune.errors import UserError
from llmtune.schema import Recipe

IGNORE = -100
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CONVERSATION = [
    {"role": "system", "content": "You know capitals."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, I think."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]
ANSWERS = ["Paris.", "Rome, I think.", "Madrid."]


@pytest.fixture
def chatml_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def llama3_tokenizer(chatml_tokenizer):
    """The tiny tokenizer with Llama-3's special tokens added, its bos being <|begin_of_text|>, as in Llama 3."""
    chatml_tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    chatml_tokenizer.bos_token = "<|begin_of_text|>"
    return chatml_tokenizer


def make_recipe(tmp_path: Path, model_dir: Path, rows: list[dict], stage: str = "sft", **data) -> Recipe:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    template = data.pop("chat_template", None)
    block = {"train": [{"path": str(path)}], "max_length": 512, "cache_dir": str(tmp_path / "cache"), **data}
    return Recipe.model_validate(
        {
            "stage": stage,
            "model": {"name_or_path": str(model_dir), "chat_template": template},
            "data": block,
            "output": {"dir": str(tmp_path / "out")},
        }
    )


def trained_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for tok, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == tok
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in [*runs, current] if run]


TEMPLATES = {"chatml": ("chatml_tokenizer", "<|im_end|>"), "llama3": ("llama3_tokenizer", "<|eot_id|>")}


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("loss_on", ["all_assistant", "last_assistant", "all"])
def test_loss_masks_on_a_three_turn_conversation(request, tmp_path, tiny_model_dir, template, loss_on) -> None:
    fixture, end = TEMPLATES[template]
    tokenizer = request.getfixturevalue(fixture)
    recipe = make_recipe(
        tmp_path, tiny_model_dir, [{"messages": CONVERSATION}], chat_template=template, loss_on=loss_on
    )
    row = prepare(recipe, tokenizer).train[0]
    ids, labels = row["input_ids"], row["labels"]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    if loss_on == "all":
        assert labels == ids
        return
    expected = ANSWERS if loss_on == "all_assistant" else ANSWERS[-1:]
    assert trained_runs(tokenizer, ids, labels) == [answer + end for answer in expected]


def test_text_rows_are_trained_on_every_token_and_end_with_eos(tmp_path, tiny_model_dir, chatml_tokenizer) -> None:
    docs = [{"text": "The cat sat."}, {"text": "Two words"}]
    recipe = make_recipe(tmp_path, tiny_model_dir, docs, stage="pt", packing=False)
    rows = prepare(recipe, chatml_tokenizer).train
    assert sorted(chatml_tokenizer.decode(r["input_ids"]) for r in rows) == [
        "The cat sat.<|im_end|>",
        "Two words<|im_end|>",
    ]
    assert all(r["labels"] == r["input_ids"] for r in rows)


def test_truncation_that_leaves_nothing_to_train_is_a_row_error(tmp_path, tiny_model_dir, chatml_tokenizer) -> None:
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    rows = [{"messages": short}, {"messages": long}]
    recipe = make_recipe(tmp_path, tiny_model_dir, rows, max_length=32)
    with pytest.raises(
        UserError, match=r"data.jsonl:2: nothing left to train on after truncation to data.max_length=32"
    ):
        prepare(recipe, chatml_tokenizer)
    skipping = make_recipe(tmp_path, tiny_model_dir, rows, max_length=32, bad_rows="skip")
    prepared = prepare(skipping, chatml_tokenizer)
    assert (prepared.stats["examples"], prepared.stats["dropped"]) == (1, 1)


def test_a_template_that_rewrites_earlier_turns_is_refused_for_all_assistant(
    tmp_path, tiny_model_dir, chatml_tokenizer
) -> None:
    rewriting = (
        "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<old>{% else %}"
        "{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    recipe = make_recipe(tmp_path, tiny_model_dir, [{"messages": CONVERSATION}], chat_template=rewriting)
    with pytest.raises(UserError, match=r"data.jsonl:1: .* renders earlier turns differently .* data.loss_on"):
        prepare(recipe, chatml_tokenizer)
    last = make_recipe(
        tmp_path, tiny_model_dir, [{"messages": CONVERSATION}], chat_template=rewriting, loss_on="last_assistant"
    )
    row = prepare(last, chatml_tokenizer).train[0]
    assert trained_runs(chatml_tokenizer, row["input_ids"], row["labels"]) == ["Madrid."]


def test_eos_check_warns_when_the_turn_end_is_not_a_stop_token(
    tiny_model_dir, llama3_tokenizer, chatml_tokenizer, capsys
) -> None:
    eos_ids = generation_eos_ids(tiny_model_dir, llama3_tokenizer)
    assert llama3_tokenizer.convert_ids_to_tokens(eos_ids) == ["<|im_end|>", "<|endoftext|>"]
    assert check_eos(llama3_tokenizer, eos_ids, resolve_chat_template(llama3_tokenizer, "chatml")) is True
    assert capsys.readouterr().err == ""
    assert check_eos(llama3_tokenizer, eos_ids, resolve_chat_template(llama3_tokenizer, "llama3")) is False
    err = " ".join(capsys.readouterr().err.split())
    assert "ends an assistant turn with '<|eot_id|>'" in err and "never stops talking" in err
    assert check_eos(chatml_tokenizer, eos_ids, "{% for m in messages %}{{ m.content }}{% endfor %}") is False
    assert "writes nothing after an assistant answer" in " ".join(capsys.readouterr().err.split())


def examples_of(dataset) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every example (ids, labels) of a dataset, packed rows split by their seq_lengths."""
    out = []
    for row in dataset:
        start = 0
        for length in row.get("seq_lengths") or [len(row["input_ids"])]:
            out.append((tuple(row["input_ids"][start : start + length]), tuple(row["labels"][start : start + length])))
            start += length
        assert start == len(row["input_ids"])
    return out


def test_sft_packing_keeps_every_example_whole(tmp_path, tiny_recipe, chatml_tokenizer) -> None:
    from llmtune.recipe import load_recipe

    plain = prepare(load_recipe(tiny_recipe(data={"packing": False, "max_length": 128})), chatml_tokenizer)
    packed = prepare(load_recipe(tiny_recipe(data={"packing": True, "max_length": 128})), chatml_tokenizer)
    assert packed.train.column_names == ["input_ids", "labels", "seq_lengths"]
    assert len(packed.train) < len(plain.train)
    assert all(len(ids) <= 128 for ids in packed.train["input_ids"])
    assert sorted(examples_of(packed.train)) == sorted(examples_of(plain.train))
    assert packed.stats["packing_efficiency"] > plain.stats["packing_efficiency"]
    print(
        f"sft packing efficiency: {plain.stats['packing_efficiency']:.1%} -> {packed.stats['packing_efficiency']:.1%}"
    )


def test_pt_packing_splits_long_texts_and_loses_no_token(tmp_path, tiny_recipe, chatml_tokenizer) -> None:
    from llmtune.recipe import load_recipe

    whole = prepare(load_recipe(tiny_recipe(stage="pt", data={"packing": False, "max_length": 4096})), chatml_tokenizer)
    packed = prepare(load_recipe(tiny_recipe(stage="pt", data={"max_length": 32})), chatml_tokenizer)
    assert packed.stats["packed"] and packed.stats["truncated"] == 0
    docs = [ids for ids, _ in examples_of(whole.train)]
    fragments = [ids for ids, _ in examples_of(packed.train)]
    assert all(len(ids) <= 32 for ids in packed.train["input_ids"])
    assert Counter(t for doc in docs for t in doc) == Counter(t for frag in fragments for t in frag)
    assert len(fragments) > len(docs)
    as_text = [" ".join(map(str, doc)) + " " for doc in docs]
    assert all(any(" ".join(map(str, frag)) + " " in doc for doc in as_text) for frag in fragments)
    assert all(labels == ids for ids, labels in examples_of(packed.train))


def test_packed_rows_do_not_attend_across_examples(tmp_path, tiny_recipe, tiny_model_dir, chatml_tokenizer) -> None:
    """Fed the way TRL's padding-free collator builds a batch (and with use_cache=False, as SFTTrainer passes), a
    packed row gives each example the same logits as running it alone: sdpa gets a block-diagonal mask."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from llmtune.recipe import load_recipe

    packed = prepare(load_recipe(tiny_recipe(data={"packing": True, "max_length": 128})), chatml_tokenizer).train
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert model.config._attn_implementation == "sdpa"
    rows = sorted(packed, key=lambda row: len(row["seq_lengths"]))[-2:]
    assert len(rows[0]["seq_lengths"]) >= 2
    batch = DataCollatorForLanguageModeling(pad_token_id=chatml_tokenizer.pad_token_id, padding_free=True)(rows)
    assert "attention_mask" not in batch
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids, _ in examples_of(rows)]
    torch.testing.assert_close(logits, torch.cat(alone), rtol=1e-4, atol=1e-5)


def test_packed_rows_collator_keeps_rows_apart_without_leaks(tiny_recipe, tiny_model_dir, chatml_tokenizer) -> None:
    """The batch-keeping collator (the faster one with sdpa) gives every example its solo logits, and the same loss
    as TRL's padding-free batch of the same rows."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from llmtune.data.collate import PackedRowsCollator
    from llmtune.recipe import load_recipe

    packed = prepare(load_recipe(tiny_recipe(data={"packing": True, "max_length": 128})), chatml_tokenizer).train
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = (
        sorted(packed, key=lambda row: len(row["input_ids"]))[:1]
        + sorted(packed, key=lambda row: len(row["seq_lengths"]))[-2:]
    )
    assert len({len(row["input_ids"]) for row in rows}) > 1  # right padding is exercised
    batch = PackedRowsCollator(pad_token_id=chatml_tokenizer.pad_token_id)(rows)
    flat = DataCollatorForLanguageModeling(pad_token_id=chatml_tokenizer.pad_token_id, padding_free=True)(rows)
    with torch.no_grad():
        out = model(**batch, use_cache=False)
        reference = model(
            input_ids=flat["input_ids"], position_ids=flat["position_ids"], labels=flat["labels"], use_cache=False
        )
        for i, row in enumerate(rows):
            start = 0
            for length in row["seq_lengths"]:
                alone = model(input_ids=torch.tensor([row["input_ids"][start : start + length]])).logits[0]
                torch.testing.assert_close(out.logits[i, start : start + length], alone, rtol=1e-4, atol=1e-5)
                start += length
    torch.testing.assert_close(out.loss, reference.loss)


def _mtimes(path: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def test_cache_is_reused_and_invalidated_by_what_changes_the_result(tmp_path, tiny_recipe, chatml_tokenizer) -> None:
    from llmtune.recipe import load_recipe

    recipe_path = tiny_recipe(source="sft_alpaca.jsonl", data={"packing": True, "max_length": 512})
    first = prepare(load_recipe(recipe_path), chatml_tokenizer)
    assert first.stats["cached"] is False
    before = _mtimes(first.cache_dir)
    second = prepare(load_recipe(recipe_path), chatml_tokenizer)
    assert second.stats["cached"] is True and second.cache_dir == first.cache_dir
    assert _mtimes(second.cache_dir) == before
    assert second.train["input_ids"] == first.train["input_ids"]
    assert not [p for p in first.cache_dir.parent.iterdir() if ".partial" in p.name]
    for change in (["data.max_length=256"], ["model.chat_template=llama3"], ["data.loss_on=all"], ["train.seed=1"]):
        changed = prepare(load_recipe(recipe_path, change), chatml_tokenizer)
        assert changed.stats["cached"] is False and changed.cache_dir != first.cache_dir, change


def test_cache_key_follows_the_data_file_contents(tmp_path, tiny_model_dir, chatml_tokenizer) -> None:
    rows = [{"messages": CONVERSATION}]
    first = prepare(make_recipe(tmp_path, tiny_model_dir, rows), chatml_tokenizer)
    same = prepare(make_recipe(tmp_path, tiny_model_dir, rows), chatml_tokenizer)  # rewritten, same bytes
    assert same.stats["cached"] is True and same.cache_dir == first.cache_dir
    edited = [{"messages": [*CONVERSATION[:-1], {"role": "assistant", "content": "Barcelona?"}]}]
    changed = prepare(make_recipe(tmp_path, tiny_model_dir, edited), chatml_tokenizer)
    assert changed.stats["cached"] is False and changed.cache_dir != first.cache_dir


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmtune", *args], capture_output=True, text=True)


def test_tokenize_command_prints_stats_and_marked_examples(tiny_recipe) -> None:
    recipe = tiny_recipe(data={"packing": True})
    result = run_cli("tokenize", "--recipe", str(recipe), "--show", "2")
    assert result.returncode == 0, result.stderr
    for statistic in ("examples", "trained tokens", "length p50 / p90 / p99 / max", "packing efficiency"):
        assert statistic in result.stdout
    assert result.stdout.count("--- example") == 2
    assert "[[" in result.stdout and "<|im_end|>]]" in result.stdout


def test_tokenize_command_names_a_missing_data_file(tmp_path, tiny_recipe) -> None:
    missing = tmp_path / "nowhere" / "train.jsonl"
    result = run_cli("tokenize", "--recipe", str(tiny_recipe(source=[{"path": str(missing)}])))
    assert result.returncode == 2
    assert str(missing) in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
