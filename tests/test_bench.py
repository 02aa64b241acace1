"""The benchmark suite's own logic: the plain-TRL baseline trains on exactly llmtune's batches, the spread-length data
is spread, step windows and MFU's parameter count are right, and bench/gpu.py runs end to end on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gpu  # noqa: E402
from bench.common import spread_conversations, step_durations  # noqa: E402
from bench.run_all import summary  # noqa: E402


def test_trl_baseline_sees_the_same_batches_as_llmtune(tmp_path, tiny_model_dir, tiny_data_dir) -> None:
    """Same training arguments, LoRA config and collator; same token ids, assistant-only labels and order: the
    overhead ratio compares like with like (a steady-step difference can only be noise)."""
    import torch

    from bench.sft_overhead import Settings, llmtune_recipe, trl_order
    from bench.trl_baseline import build_trainer, parse_args
    from llmtune.recipe import load_recipe
    from llmtune.stages import sft
    from llmtune.stages.args import common_training_args

    data, s = tiny_data_dir / "sft_messages.jsonl", Settings(max_length=128, steps=4)
    ordered = trl_order(data, s.seed, tmp_path / "ordered.jsonl")
    trl = build_trainer(parse_args(["--model", str(tiny_model_dir), "--data", str(ordered), "--out",
                                    str(tmp_path / "trl"), "--max-length", "128", "--steps", "4"]))  # fmt: skip
    recipe = load_recipe(llmtune_recipe(tmp_path / "r.yaml", tiny_model_dir, data, s, tmp_path / "c", tmp_path / "o"))
    ours = sft.build(recipe, common_training_args(recipe))
    theirs_args, our_args = trl.args.to_dict(), ours.args.to_dict()
    differ = {k for k in theirs_args.keys() | our_args.keys() if theirs_args.get(k) != our_args.get(k)}
    # none of these changes a training step: TRL's masking option and dataset kwargs only steer its own tokenizing
    # (llmtune tokenizes beforehand, to the same labels), epochs are overridden by max_steps, no save falls in the run;
    # the run name only labels trackers, and bars are drawn only on a terminal
    harmless = {"assistant_only_loss", "dataset_kwargs", "num_train_epochs", "output_dir", "per_device_eval_batch_size",
                "save_steps", "save_strategy", "run_name", "disable_tqdm"}  # fmt: skip
    assert differ <= harmless, differ - harmless
    assert trl.data_collator == ours.data_collator
    assert trl.model.peft_config["default"].to_dict() == ours.model.peft_config["default"].to_dict()
    assert trl.train_dataset["input_ids"] == ours.train_dataset["input_ids"]
    assert trl.train_dataset["labels"] == ours.train_dataset["labels"]
    assert any(-100 in labels for labels in ours.train_dataset["labels"]), "prompts are masked"
    batches = zip(trl.get_train_dataloader(), ours.get_train_dataloader(), strict=False)
    for _, (a, b) in zip(range(3), batches, strict=False):
        for key in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(a[key], b[key]), key


def test_spread_conversations_span_short_and_long(tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = spread_conversations(400, seed=0)
    texts = tokenizer.apply_chat_template([r["messages"] for r in rows], tokenize=False)
    lengths = sorted(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    assert lengths[40] < 40 and lengths[-40] > 8 * lengths[40], lengths[::40]  # p10 short, p90 8x longer
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)


def test_step_durations_cover_steps_first_to_last() -> None:
    ends = [10.0, 11.0, 13.0, 16.0, 20.0, 25.0]
    assert step_durations(ends, first=5) == [4.0, 5.0]
    assert step_durations(ends, first=1) == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("shape", ["1b", "3b", "8b"])
def test_mfu_parameter_count_matches_the_built_model(shape: str) -> None:
    """N = every parameter except the input embedding, plus the LM head's vocab x hidden (tied or not)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**gpu.SHAPES[shape])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    shared_head = config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0
    assert gpu.matmul_params(config) == total - embed + shared_head
    assert gpu.flops_per_token("full", 10) == 60 and gpu.flops_per_token("qlora", 10) == 40
    expected_total = {"1b": 1.24e9, "3b": 3.21e9, "8b": 8.03e9}[shape]  # the published sizes
    assert total == pytest.approx(expected_total, rel=0.01)


def test_gpu_arguments_expand_to_variants_and_refuse_unknown_names(capsys) -> None:
    args = gpu.parse_args([])
    assert len(gpu.variants(args)) == 3 * 3 * 2 * 2
    assert {v.shape for v in gpu.variants(args)} == {"1b", "3b", "8b"}
    one = gpu.variants(gpu.parse_args(["--shapes", "8b", "--methods", "qlora", "--packing", "on", "--liger", "off"]))
    assert [v.name for v in one] == ["8b-qlora-packed"]
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert gpu.peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert gpu.peak_flops("Some GPU", None) is None and gpu.peak_flops("Some GPU", 100.0) == 100e12
    for bad in (["--shapes", "70b"], ["--methods", "dora"], ["--packing", "maybe"]):
        with pytest.raises(SystemExit) as exc:
            gpu.parse_args(bad)
        assert exc.value.code == 2
    assert "70b" in capsys.readouterr().err


def test_gpu_dry_run_trains_through_llmtune_on_the_cpu(tmp_path) -> None:
    work = tmp_path / "gpu"
    argv = [sys.executable, "-m", "bench.gpu", "--dry-run", "--methods", "lora", "--packing", "both", "--liger", "both"]
    proc = subprocess.run([*argv, "--work", str(work)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["variant"]: row for row in json.loads((work / "results.json").read_text())}
    assert set(rows) == {"tiny-lora-padded", "tiny-lora-packed", "tiny-lora-padded-liger", "tiny-lora-packed-liger",
                         "tiny-grpo-lora"}  # fmt: skip
    for name in ("tiny-lora-padded", "tiny-lora-packed"):
        assert rows[name]["tokens_s"] > 0 and rows[name]["mfu"] is None and rows[name]["k"] == 4
        assert (work / "runs" / f"{name}.clock.tokens").is_file()
    liger = rows["tiny-lora-packed-liger"]
    assert liger.get("tokens_s", 0) > 0 or "liger_kernel is not installed" in liger["skipped"]
    assert "anchor: torchtune" in proc.stdout
    grpo = rows["tiny-grpo-lora"]  # the GRPO row: llmtune grpo's step time and its share spent generating
    assert grpo["step_s"] > 0 and 0 < grpo["generate_share"] < 1 and grpo["tokens_s"] > 0


def test_summary_marks_misses() -> None:
    results = [{"bench": "x", "rows": [
        {"metric": "a / b", "value": 1.2, "goal": "<= 1.05", "ok": False, "note": "paired 1.1-1.3"},
        {"metric": "c", "value": 0.5, "goal": "(info)", "ok": None, "note": ""},
    ]}, {"bench": "y", "rows": [], "error": "exit 1"}]  # fmt: skip
    text = summary(results)
    assert "MISS" in text and "1.200" in text and "FAILED" in text


def test_the_trl_grpo_baseline_rewards_as_llmtune_does() -> None:
    """bench/grpo_overhead.py compares like with like: the plain script's reward is llmtune's `length: [0, 20]`."""
    from bench.trl_grpo import length_band
    from llmtune.stages.rewards import length_reward

    completions = [[{"role": "assistant", "content": "x" * n}] for n in (0, 5, 20, 21, 30, 40, 60)]
    assert length_band(completions) == length_reward((0, 20))(completions=completions)
