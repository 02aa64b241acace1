"""Online RL (grpo, rloo) through TRL's real trainers on the tiny model: GRPO from the SFT run raises a learnable
reward on held-out prompts, a reward model trained by `llmtune rm` works as a reward, rloo and QLoRA run, the
reference is the starting model without a second copy, runs resume, and reward code needs its opt-in."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llmtune.errors import UserError
from llmtune.recipe import load_recipe
from llmtune.training.run import run

LORA = {"kind": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
NUMERIC_TASKS = ("add", "subtract", "count")  # every answer is a whole number
WHOLE_NUMBER = r"^\d+$"
SEEDS = [int(s) for s in os.environ.get("LLMTUNE_RL_SEEDS", "0").split(",")]


def rl_recipe(tiny_recipe, data: Path, rewards: list[dict], stage: str = "grpo", **sections) -> Path:
    rl = {"num_generations": 4, "max_new_tokens": 16, "rewards": rewards, **sections.pop("rl", {})}
    train = {"max_steps": 2, "batch_size": 8, "lr": 3e-3, **sections.pop("train", {})}
    source = sections.pop("source", [{"path": str(data / "sft_messages.jsonl")}])
    return tiny_recipe(stage=stage, method=sections.pop("method", LORA), source=source, rl=rl, train=train, **sections)


def metrics(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def numeric_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prompt rows of the synthetic arithmetic and counting tasks: 64 to train on, 48 held out (train.jsonl,
    heldout.jsonl)."""
    from llmtune.data.synth import held_out_examples, make_examples

    out = tmp_path_factory.mktemp("numeric-prompts")
    train = make_examples(64, 0, NUMERIC_TASKS)
    heldout = held_out_examples(48, 0, {ex.prompt for ex in train}, NUMERIC_TASKS)
    for name, examples in (("train", train), ("heldout", heldout)):
        rows = [json.dumps({"prompt": ex.prompt, "answer": ex.answer}) + "\n" for ex in examples]
        (out / f"{name}.jsonl").write_text("".join(rows), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def sft_run_with_head(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_data_dir: Path) -> Path:
    """An `sft` LoRA run like tiny_sft_adapter's (8 steps at lr 1e-2), with lm_head trained as well
    (method.lora.modules_to_save). The tiny model is random, its output head nearly uniform: adapters on the linear
    layers alone hardly move it (GRPO from tiny_sft_adapter, 40 steps at lr 5e-3 to 5e-2, kept its training reward
    flat and its KL under 0.05), while a trained head learns in 8 steps to give short answers and stop."""
    import yaml

    root = tmp_path_factory.mktemp("sft-head")
    lora = {**LORA["lora"], "modules_to_save": ["lm_head"]}
    recipe = {
        "stage": "sft",
        "model": {"name_or_path": str(tiny_model_dir)},
        "method": {"kind": "lora", "lora": lora},
        "data": {"train": [{"path": str(tiny_data_dir / "sft_messages.jsonl")}], "max_length": 128,
                 "cache_dir": str(root / "cache")},
        "train": {"max_steps": 8, "batch_size": 4, "lr": 1e-2, "scheduler": "constant", "save_steps": 1000, "seed": 0},
        "output": {"dir": str(root / "sft")},
    }  # fmt: skip
    (root / "sft.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return Path(run(load_recipe(root / "sft.yaml")).output_dir)


def heldout_reward(run_dir: Path, prompts: Path, reward: Callable[..., list], seed: int) -> float:
    """Mean reward of 8 completions sampled for each held-out prompt as GRPO samples them: temperature 1 over the
    whole vocabulary (generate's default: no top-k cut)."""
    from llmtune.data.load import read_rows
    from llmtune.infer.generate import DecodeOptions, generate
    from llmtune.infer.load import load_for_inference
    from llmtune.schema import DataSource

    rows = read_rows([DataSource(path=str(prompts))], kind="prompt").train
    loaded = load_for_inference(str(run_dir))
    options = DecodeOptions(max_new_tokens=8, temperature=1.0, num_return_sequences=8, seed=seed)
    outputs = [text for group in generate(loaded.model, loaded.tokenizer, [r["prompt"] for r in rows], options)
               for text in group]  # fmt: skip
    rewards = reward(completions=outputs)
    return sum(rewards) / len(rewards)


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_from_the_sft_run_raises_the_heldout_reward(
    seed, tiny_recipe, tiny_data_dir, numeric_prompts, sft_run_with_head
) -> None:
    """The verifiable reward: an answer to the synthetic arithmetic and counting prompts is a whole number (regex
    ^\\d+$), as every reference answer there is. GRPO from the SFT run, 40 steps of 4 prompts x 4 completions at
    lr 5e-3. Share of whole-number answers on 48 held-out prompts (8 samples each), before -> after, over train.seed
    0-9: 0.13->0.89, 0.16->0.60, 0.13->0.64, 0.14->0.88, 0.15->0.74, 0.13->0.81, 0.13->0.77, 0.14->0.86,
    0.11->0.84, 0.13->0.88: gains +0.43 to +0.76, mean +0.65. With 2 prompts a step, seeds 2 and 8 drifted to empty
    answers (gains -0.13 and 0.00). The test runs seed 0 (LLMTUNE_RL_SEEDS=0,1,...,9 runs the others) and asks for
    +0.2, half the smallest gain measured."""
    from llmtune.stages.rewards import regex_reward

    source = [{"path": str(numeric_prompts / "train.jsonl")}]
    rewards = [{"regex": WHOLE_NUMBER, "name": "number"}]
    path = rl_recipe(tiny_recipe, tiny_data_dir, rewards, source=source, model={"adapter": str(sft_run_with_head)},
                     rl={"max_new_tokens": 8}, train={"max_steps": 40, "batch_size": 16, "lr": 5e-3, "seed": seed,
                     "logging_steps": 5})  # fmt: skip
    result = run(load_recipe(path))
    reward = regex_reward(WHOLE_NUMBER)
    heldout = numeric_prompts / "heldout.jsonl"
    before = heldout_reward(sft_run_with_head, heldout, reward, 100 + seed)
    after = heldout_reward(Path(result.output_dir), heldout, reward, 100 + seed)
    print(f"seed {seed}: held-out whole-number answers {before:.3f} -> {after:.3f}")
    assert after >= before + 0.2, (before, after)
    rows = metrics(result.output_dir)
    for key in ("reward", "reward_std", "rewards/number/mean", "rewards/number/std", "kl", "completions/mean_length",
                "completions/clipped_ratio"):  # fmt: skip
        assert all(key in row for row in rows if "loss" in row), key


def test_a_reward_model_scores_completions_and_the_sft_adapter_is_the_reference(
    tiny_recipe, tiny_data_dir, preference_data_dir, tiny_sft_adapter
) -> None:
    import torch

    from llmtune.infer.score import load_scorer, score
    from llmtune.stages.preference import REF_ADAPTER

    rm_path = tiny_recipe(stage="rm", method=LORA, source=[{"path": str(preference_data_dir / "preference.jsonl"),
                          "max_samples": 16}], train={"max_steps": 2}, name="rm")  # fmt: skip
    rm_dir = run(load_recipe(rm_path)).output_dir
    rewards = [{"reward_model": rm_dir, "name": "rm"}, {"match": "exact", "weight": 0.5}]
    path = rl_recipe(tiny_recipe, tiny_data_dir, rewards, model={"adapter": str(tiny_sft_adapter)})
    result = run(load_recipe(path))
    trainer = result.trainer
    assert trainer.ref_model is None and set(trainer.model.peft_config) == {"default", REF_ADAPTER}
    assert not (Path(result.output_dir) / REF_ADAPTER).exists()
    assert trainer.reward_weights.tolist() == [1.0, 0.5]
    rows = [r for r in metrics(result.output_dir) if "loss" in r]
    assert all("rewards/rm/mean" in r and "rewards/exact/mean" in r for r in rows)
    # the reward function is the scorer itself: the same numbers as `llmtune eval --model RM` would give
    fn = trainer.reward_funcs[0]
    prompts, completions = [[{"role": "user", "content": "Add 2 and 3."}]], [[{"role": "assistant", "content": "5"}]]
    scorer = load_scorer(rm_dir)
    expected = score(scorer.model, scorer.tokenizer, [prompts[0] + completions[0]])
    assert torch.allclose(torch.tensor(fn(prompts=prompts, completions=completions)), expected, atol=1e-5)
    # `llmtune eval --reward RM` (make demo's before/after): the reward model's mean score of the generated answers
    from llmtune.eval import job
    from llmtune.infer.generate import DecodeOptions

    data = job.read_eval_file(str(tiny_data_dir / "eval_messages.jsonl"), None, 4, None)
    options = job.EvalOptions(decode=DecodeOptions(max_new_tokens=8), reward=rm_dir)
    (found,) = job.run_eval([(None, result.output_dir)], data, options)
    assert math.isfinite(found.metrics["reward"]) and "exact_match" in found.metrics


def test_rloo_on_qlora_runs_with_the_adapter_off_base_as_reference(tiny_recipe, tiny_data_dir) -> None:
    method = {**LORA, "kind": "qlora", "qlora": {"compute_dtype": "float32"}}
    path = rl_recipe(tiny_recipe, tiny_data_dir, [{"regex": r"^\S+$"}, {"length": [1, 8]}], stage="rloo",
                     method=method)  # fmt: skip
    result = run(load_recipe(path))
    assert type(result.trainer).__name__ == "LlmtuneRLOOTrainer" and result.steps == 2
    assert result.trainer.ref_model is None and list(result.trainer.model.peft_config) == ["default"]
    assert any(type(p).__name__ == "Params4bit" for p in result.trainer.model.parameters())
    rows = [r for r in metrics(result.output_dir) if "loss" in r]
    assert rows and all(math.isfinite(r["loss"]) and "rewards/regex/mean" in r and "kl" in r for r in rows)


def test_grpo_resumes_from_its_checkpoint(tiny_recipe, tiny_data_dir) -> None:
    path = rl_recipe(tiny_recipe, tiny_data_dir, [{"length": [0, 20]}], train={"save_steps": 2}, rl={"beta": 0.0})
    first = run(load_recipe(path))
    assert first.trainer.ref_model is None and (Path(first.output_dir) / "checkpoint-2").is_dir()
    resumed = run(load_recipe(path, ["train.max_steps=4"]), resume=True)
    assert resumed.steps == 4
    assert [r["step"] for r in metrics(resumed.output_dir) if "loss" in r] == [1, 2, 3, 4]
    assert all("kl" not in r for r in metrics(resumed.output_dir))  # beta 0: no reference, no KL term


def test_grpo_resumes_after_a_kill_as_the_uninterrupted_run(tiny_recipe, tiny_data_dir, tmp_path) -> None:
    """`llmtune grpo` killed (SIGKILL) once checkpoint-4 is sealed, in its second epoch (6 prompts, 2 a step), then
    run with --resume, ends as an uninterrupted run ends: one metrics row per step, sealed checkpoints, the same
    adapter bit for bit. Completions are sampled from torch's generator, which the checkpoint's rng_state restores;
    the prompt order of epoch 2 is replayed by llmtune.stages.grpo.replay_epochs (without it the resumed run trained
    steps 5 and 6 on epoch 1's prompts, and its adapter differed)."""
    import torch
    from freeze import step_until
    from safetensors.torch import load_file

    from llmtune.training.checkpoints import is_complete

    sections = {
        "source": [{"path": str(tiny_data_dir / "sft_messages.jsonl"), "max_samples": 6}],
        "train": {"max_steps": 6, "save_steps": 2, "logging_steps": 1},
        "rl": {"max_new_tokens": 8},
    }
    rewards = [{"length": [0, 20]}]
    a = run(load_recipe(rl_recipe(tiny_recipe, tiny_data_dir, rewards, name="a", **sections)))
    b_path = rl_recipe(tiny_recipe, tiny_data_dir, rewards, name="b", **sections)
    b_out = Path(load_recipe(b_path).output.dir)

    command = [sys.executable, "-m", "llmtune", "grpo", "--recipe", str(b_path)]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (b_out / "metrics.jsonl").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "run B ended before its first step"
        time.sleep(0.02)
    assert step_until(proc, (b_out / "checkpoint-4" / "checkpoint_complete.json").is_file), "run B ended first"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (b_out / "summary.json").exists()

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in b_out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # the last two
    assert all(is_complete(p) for p in b_out.glob("checkpoint-*"))
    rows_a = [r for r in metrics(a.output_dir) if "loss" in r]
    rows_b = [r for r in metrics(b_out) if "loss" in r]
    assert [r["step"] for r in rows_b] == list(range(1, 7)), "one row per step, none repeated after the resume"
    for key in ("loss", "reward", "kl", "completions/mean_length"):
        assert [r[key] for r in rows_b] == pytest.approx([r[key] for r in rows_a], abs=1e-6), key
    weights_a = load_file(Path(a.output_dir) / "adapter_model.safetensors")
    weights_b = load_file(b_out / "adapter_model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_reward_code_needs_the_opt_in_and_then_runs(tiny_recipe, tiny_data_dir, tmp_path) -> None:
    code = tmp_path / "my_rewards.py"
    code.write_text("def short(completions, **kw):\n    return [1.0 if len(c[0]['content']) < 10 else 0.0"
                    " for c in completions]\n")  # fmt: skip
    rewards = [{"function": f"{code}:short"}]
    with pytest.raises(UserError, match="set rl.allow_code: true"):
        load_recipe(rl_recipe(tiny_recipe, tiny_data_dir, rewards))
    result = run(load_recipe(rl_recipe(tiny_recipe, tiny_data_dir, rewards, rl={"allow_code": True})))
    assert all("rewards/short/mean" in r for r in metrics(result.output_dir) if "loss" in r)


def test_prompts_come_from_chat_preference_and_prompt_rows(tmp_path) -> None:
    from llmtune.data.load import read_rows
    from llmtune.schema import DataSource

    files = {
        "p.jsonl": [{"prompt": "Add 1 and 2.", "answer": "3"}, {"prompt": [{"role": "user", "content": "Hi"}]}],
        "c.jsonl": [{"messages": [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "3"}]}],
        "r.jsonl": [{"prompt": "Add 1 and 2.", "responses": ["3", "4", "5"], "scores": [2, 1, 0]}],
    }
    for name, rows in files.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = [read_rows([DataSource(path=str(tmp_path / n))], kind="prompt").train for n in files]
    user = [{"role": "user", "content": "Add 1 and 2."}]
    assert sorted((r["answer"] or "") for r in got[0]) == ["", "3"]
    assert [(r["prompt"], r["answer"]) for r in got[1]] == [(user, "3")]
    assert [(r["prompt"], r["answer"]) for r in got[2]] == [(user, "3")]  # one prompt per ranked row, not per pair
    kto = read_rows([DataSource(path=str(tmp_path / "r.jsonl"))], kind="kto").train
    assert sorted((r["completion"][0]["content"], r["label"]) for r in kto) == [("3", True), ("4", False),
                                                                             ("5", False)]  # fmt: skip


def test_sampling_stops_at_the_end_of_turn(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtune.data.templates import end_of_turn_ids
    from llmtune.stages.grpo import stop_on_end_of_turn

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.generation_config.eos_token_id = 0  # a model whose config stops only on another token
    stop_on_end_of_turn(model, tokenizer)
    assert end_of_turn_ids(tokenizer, tokenizer.chat_template)[-1] in model.generation_config.eos_token_id
