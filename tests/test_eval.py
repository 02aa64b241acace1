"""`llmtune eval` against independent computations with plain transformers on the tiny model.

Text perplexity and bits per char/byte are recomputed window by window, one unpadded forward pass each; chat
perplexity comes from the training pipeline's own tokenized eval split and the model's built-in loss; reward and
DPO numbers from per-pair forward passes. The shipped `evaluate` metric modules load with the network off.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_runner import run_main as cli

from llmtune.eval.measure import sequence_logprobs, text_windows


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def lora_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (non-zero) weights, so the policy differs from its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    get_peft_model(base, config).save_pretrained(out)
    return out


def test_text_windows_predict_every_token_but_the_first_once() -> None:
    ids = list(range(10))
    windows = text_windows(ids, 4)
    assert windows == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert sum(len(w) - 1 for w in windows) == len(ids) - 1
    assert text_windows(ids[:3], 4) == [[0, 1, 2]]


def test_text_perplexity_equals_an_independent_computation(tiny, tiny_model_dir, tmp_path, capsys) -> None:
    model, tokenizer = tiny
    texts = ["Add the numbers 3 and 4: the answer is 7.", "Ünïcödé text — 日本語 too.", "word " * 60]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "eval.json"
    code, _, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--data", str(data), "--context", "16",
                       "--batch-size", "3", "--out", str(out))  # fmt: skip
    assert code == 0, err
    metrics = load_json(out)["models"][0]["metrics"]

    nll = tokens = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
            for start in range(0, len(ids) - 1, 15):
                window = torch.tensor([ids[start : start + 16]])
                logits = model(window).logits[0, :-1]
                nll += F.cross_entropy(logits, window[0, 1:], reduction="sum").item()
                tokens += window.shape[1] - 1
    assert metrics["tokens"] == tokens == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert metrics["bits_per_char"] == pytest.approx(nll / math.log(2) / sum(map(len, texts)), rel=1e-4)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    assert metrics["bits_per_byte"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-4)
    assert metrics["bits_per_byte"] < metrics["bits_per_char"], "the non-ASCII text has more bytes than characters"


def test_chat_perplexity_uses_the_training_masks(tiny, tiny_model_dir, tiny_recipe, tiny_data_dir, tmp_path, capsys):
    from llmtune.data.tokenize import prepare
    from llmtune.recipe import load_recipe

    model, tokenizer = tiny
    recipe_path = tiny_recipe(data={"eval": [{"path": str(tiny_data_dir / "eval_messages.jsonl")}]})
    out = tmp_path / "eval.json"
    code, _, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--recipe", str(recipe_path),
                       "--no-generate", "--out", str(out))  # fmt: skip
    assert code == 0, err
    metrics = load_json(out)["models"][0]["metrics"]

    evals = prepare(load_recipe(recipe_path), tokenizer).eval
    total = count = 0.0
    with torch.no_grad():
        for row in evals:
            labels = torch.tensor([row["labels"]])
            n = int((labels[0, 1:] != -100).sum())
            total += model(torch.tensor([row["input_ids"]]), labels=labels).loss.item() * n
            count += n
    assert 0 < count < sum(len(row["input_ids"]) for row in evals), "only assistant tokens are scored"
    assert metrics["tokens"] == count
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_generation_metrics_score_greedy_answers(tiny, tiny_model_dir, tiny_data_dir, tmp_path, capsys) -> None:
    from llmtune.infer.generate import DecodeOptions, generate

    model, tokenizer = tiny
    rows = [json.loads(line) for line in (tiny_data_dir / "eval_messages.jsonl").read_text().splitlines()][:6]
    prompts = [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]
    greedy = [outs[0] for outs in generate(model, tokenizer, prompts, DecodeOptions(max_new_tokens=5))]
    # Half the references are the model's own greedy answers (plus a period, which exact match forgives).
    data = tmp_path / "answers.jsonl"
    answers = [g.strip() + "." if i % 2 == 0 else "no such answer" for i, g in enumerate(greedy)]
    data.write_text(
        "".join(json.dumps({"messages": p, "answer": a}) + "\n" for p, a in zip(prompts, answers, strict=True))
    )
    out = tmp_path / "eval.json"
    code, _, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "5",
                       "--out", str(out))  # fmt: skip
    assert code == 0, err
    result = load_json(out)["models"][0]
    assert result["generations"] == greedy
    assert result["metrics"]["exact_match"] == pytest.approx(0.5)
    assert 0.5 <= result["metrics"]["rougeL"] < 1.0


def test_shipped_metrics_load_with_the_network_off(tmp_path: Path) -> None:
    code = (
        "from llmtune.eval.metrics import load_metric\n"
        "em = load_metric('exact_match').compute(predictions=['8.', ' cat', 'x'], references=['8', 'cat', 'y'])\n"
        "rouge = load_metric('rouge').compute(predictions=['the cat sat'], references=['the cat ran'])\n"
        "print(round(em['exact_match'], 4), round(rouge['rougeL'], 4))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.6667", "0.6667"]


def test_sequence_logprobs_on_a_padded_batch_match_single_rows(tiny) -> None:
    model, _ = tiny
    rows = [[5, 17, 99, 250, 3, 41], [7, 8, 9]]
    labels = [[-100, -100, 99, 250, 3, 41], [-100, 8, 9]]
    ids = torch.tensor([rows[0], rows[1] + [0, 0, 0]])
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    lab = torch.tensor([labels[0], labels[1] + [-100] * 3])
    with torch.no_grad():
        batched = sequence_logprobs(model, ids, mask, lab)
        for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
            logp = model(torch.tensor([row])).logits[0, :-1].log_softmax(-1)
            expected = sum(logp[t - 1, label[t]].item() for t in range(1, len(row)) if label[t] != -100)
            assert batched[i].item() == pytest.approx(expected, abs=1e-4)


def answer_logprob(model, tokenizer, prompt: list[dict], answer: list[dict]) -> float:
    """log p(answer tokens through the end-of-turn token | prompt), one unpadded forward pass."""
    prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    end = full.rindex(tokenizer.eos_token) + len(tokenizer.eos_token)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full[:end], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(prefix_ids), len(ids)))


def test_dpo_accuracy_against_the_base_and_compare_columns(tiny, tiny_model_dir, lora_adapter, tiny_data_dir,
                                                          tmp_path, capsys) -> None:  # fmt: skip
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, tokenizer = tiny
    data = tiny_data_dir / "eval_preference.jsonl"
    out = tmp_path / "eval.json"
    code, shown, err = cli(capsys, "eval", "--adapter", str(lora_adapter), "--compare", str(tiny_model_dir),
                           "--data", str(data), "--out", str(out))  # fmt: skip
    assert code == 0, err
    policy_result, base_result = load_json(out)["models"]
    assert "dpo_accuracy" not in base_result["metrics"], "a plain model has no reference"
    assert "dpo_accuracy" in shown and "logp_accuracy" in shown

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    policy = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), lora_adapter
    ).eval()
    margins = []
    for line in data.read_text().splitlines():
        row = json.loads(line)
        prompt = [{"role": "user", "content": row["prompt"]}]
        chosen, rejected = ([{"role": "assistant", "content": row[k]}] for k in ("chosen", "rejected"))
        delta = [answer_logprob(policy, tokenizer, prompt, a) - answer_logprob(base, tokenizer, prompt, a)
                 for a in (chosen, rejected)]  # fmt: skip
        margins.append(delta[0] - delta[1])
    metrics = policy_result["metrics"]
    assert metrics["dpo_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    assert metrics["dpo_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))

    explicit = tmp_path / "explicit.json"
    code, _, err = cli(capsys, "eval", "--model", str(lora_adapter), "--reference", str(tiny_model_dir),
                       "--data", str(data), "--out", str(explicit))  # fmt: skip
    assert code == 0, err
    assert load_json(explicit)["models"][0]["metrics"]["dpo_margin"] == pytest.approx(metrics["dpo_margin"], abs=1e-5)


def test_reward_accuracy_and_margin_of_a_reward_model(tiny, tiny_model_dir, tiny_data_dir, tmp_path, capsys) -> None:
    from transformers import AutoModelForSequenceClassification

    _, tokenizer = tiny
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm_dir = tmp_path / "rm"
    rm.save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)
    data = tiny_data_dir / "eval_preference.jsonl"
    out = tmp_path / "eval.json"
    code, _, err = cli(capsys, "eval", "--model", str(rm_dir), "--data", str(data), "--out", str(out))
    assert code == 0, err
    metrics = load_json(out)["models"][0]["metrics"]

    margins = []
    with torch.no_grad():
        for line in data.read_text().splitlines():
            row = json.loads(line)
            scores = []
            for answer in (row["chosen"], row["rejected"]):
                conv = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answer}]
                ids = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
                scores.append(rm.eval()(torch.tensor([ids])).logits[0, 0].item())
            margins.append(scores[0] - scores[1])
    assert metrics["reward_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    assert metrics["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))


def test_eval_input_errors_exit_2(tiny_model_dir, tmp_path, capsys) -> None:
    code, _, err = cli(capsys, "eval", "--model", str(tiny_model_dir))
    assert code == 2 and "exactly one of --data FILE or --recipe" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "hi"}\n')
    code, _, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--data", str(bad))
    assert code == 2 and "bad.jsonl:1" in err and "cannot tell the format" in err


def test_compare_columns_start_with_the_recipes_run(tiny_recipe, tmp_path) -> None:
    from llmtune.errors import UserError
    from llmtune.eval.job import plan_specs
    from llmtune.recipe import load_recipe

    recipe = load_recipe(tiny_recipe())
    with pytest.raises(UserError, match="does not exist yet"):
        plan_specs(None, None, [], recipe)
    assert plan_specs(None, None, ["base"], recipe) == [("base", None)]
    Path(recipe.output.dir).mkdir()
    assert plan_specs(None, None, ["base"], recipe) == [(recipe.output.dir, None), ("base", None)]
    assert plan_specs("m", "a", ["base"], recipe) == [("m", "a"), ("base", None)]
