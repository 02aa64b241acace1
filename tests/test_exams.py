"""Multiple-choice exams: accuracy against plain transformers forward passes over prompts written out here, the
MMLU / C-Eval / CMMLU layouts, and (with the `harness` extra) lm-evaluation-harness's own scoring of the same
questions through `--harness` and a local task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_runner import run_main as cli

from llmtune.errors import UserError, has_module
from llmtune.eval.exams import read_questions, to_question

LETTERS = "ABCD"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mmlu_prompt(row: dict, shots: list[dict]) -> str:
    """Written out from lm-eval's mmlu/default/_default_template_yaml and a per-subject yaml's description."""

    def body(r: dict) -> str:
        return r["question"].strip() + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(r["choices"])) + "\nAnswer:"

    head = f"The following are multiple choice questions (with answers) about {row['subject']}.\n\n"
    return head + "".join(f"{body(s)} {LETTERS[s['answer']]}\n\n" for s in shots) + body(row)


def choice_logprob(model, tok, prompt: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | prompt), one unpadded forward pass."""
    context, whole = tok(prompt)["input_ids"], tok(prompt + continuation)["input_ids"]
    assert whole[: len(context)] == context  # the prompt's tokens are a prefix, so the split is clean
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
    return sum(logp[t - 1, whole[t]].item() for t in range(len(context), len(whole)))


def test_synthetic_exam_answers_are_right(tiny_data_dir: Path) -> None:
    for row in rows(tiny_data_dir / "eval_mc.jsonl") + rows(tiny_data_dir / "dev_mc.jsonl"):
        expression = row["question"].removeprefix("What is ").removesuffix("?")
        assert int(row["choices"][row["answer"]]) == eval(expression)  # noqa: S307 - our own arithmetic
        assert len(set(row["choices"])) == 4


@pytest.mark.parametrize("score", ["letter", "text"])
def test_exam_accuracy_equals_independent_forward_passes(tiny, tiny_model_dir, tiny_data_dir, tmp_path, capsys, score):
    model, tok = tiny
    out = tmp_path / "exam.json"
    exam_file = str(tiny_data_dir / "eval_mc.jsonl")
    code, stdout, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--data", exam_file,
                            "--shots", "2", "--dev", str(tiny_data_dir / "dev_mc.jsonl"), "--mc-score", score,
                            "--batch-size", "5", "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert "accuracy" in stdout
    result = json.loads(out.read_text())
    assert result["kind"] == "mc"
    metrics, predicted = result["models"][0]["metrics"], result["models"][0]["generations"]

    dev = rows(tiny_data_dir / "dev_mc.jsonl")
    exam = rows(tiny_data_dir / "eval_mc.jsonl")
    expected, by_subject = [], {}
    for row in exam:
        shots = [d for d in dev if d["subject"] == row["subject"]][:2]
        prompt = mmlu_prompt(row, shots)
        scores = []
        for i, choice in enumerate(row["choices"]):
            lp = choice_logprob(model, tok, prompt, f" {LETTERS[i] if score == 'letter' else choice}")
            scores.append(lp if score == "letter" else lp / len(choice))
        pick = max(range(4), key=scores.__getitem__)
        expected.append(LETTERS[pick])
        by_subject.setdefault(row["subject"], []).append(pick == row["answer"])
    assert predicted == expected
    right = [LETTERS[r["answer"]] == p for r, p in zip(exam, expected, strict=True)]
    assert metrics["accuracy"] == pytest.approx(sum(right) / len(right))
    per_subject = {s: sum(v) / len(v) for s, v in by_subject.items()}
    assert metrics["accuracy_macro"] == pytest.approx(sum(per_subject.values()) / len(per_subject))
    assert {k: v for k, v in metrics.items() if k.startswith("accuracy/")} == pytest.approx(
        {f"accuracy/{s}": v for s, v in per_subject.items()}
    )
    assert metrics["questions"] == len(exam)


def test_exam_layouts_and_bad_rows(tmp_path: Path) -> None:
    mmlu = {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}
    ceval = {"id": 0, "question": "1+1?", "A": "1", "B": "3", "C": "2", "D": "0", "answer": "C", "explanation": ""}
    cmmlu = {"Question": "3-1?", "A": "2", "B": "1", "C": "0", "D": "4", "Answer": "A"}
    by_text = {"question": "Capital of France?", "choices": ["Rome", "Paris"], "answer": "Paris"}
    assert [to_question(r, "row").answer for r in (mmlu, ceval, cmmlu, by_text)] == [1, 2, 0, 1]
    assert to_question(ceval, "row").choices == ("1", "3", "2", "0")
    csv = tmp_path / "ceval_val.csv"
    csv.write_text("id,question,A,B,C,D,answer,explanation\n0,1+1?,1,3,2,0,C,\n1,2*3?,6,5,4,9,A,\n", encoding="utf-8")
    assert [(q.answer, q.origin) for q in read_questions(str(csv))] == [(2, f"{csv}:2"), (0, f"{csv}:3")]
    with pytest.raises(UserError, match=r"row 7: answer 'E' is not a letter A-D"):
        to_question({**mmlu, "answer": "E"}, "row 7")
    with pytest.raises(UserError, match="1 choices; an exam question needs 2 to 10"):
        to_question({**mmlu, "choices": ["4"], "answer": 0}, "row 1")


def test_exam_user_errors(tiny_model_dir, tiny_data_dir, capsys) -> None:
    exam = str(tiny_data_dir / "eval_mc.jsonl")
    code, _, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--data", exam, "--shots", "1")
    assert code == 2 and "--dev FILE" in err
    code, _, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--data", exam, "--shots", "9",
                       "--dev", str(tiny_data_dir / "dev_mc.jsonl"))  # fmt: skip
    assert code == 2 and "only 5 for subject 'addition'" in err
    code, _, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--data", exam, "--mc-score", "x")
    assert code == 2 and "--mc-score 'x'" in err


TASK = {
    "task": "tiny_exam",
    "dataset_path": "json",
    "test_split": "test",
    "output_type": "multiple_choice",
    "description": "The following are multiple choice questions (with answers) about arithmetic.\n\n",
    "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}"
    "\nAnswer:",
    "doc_to_choice": ["A", "B", "C", "D"],
    "doc_to_target": "answer",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    "metadata": {"version": 1.0},
}
"""lm-eval's MMLU template (mmlu/default) with a fixed subject, reading a local JSON-lines file."""


@pytest.mark.skipif(not has_module("lm_eval"), reason="needs the harness extra (lm-eval)")
def test_accuracy_equals_lm_eval_harness_on_a_local_task(tiny_model_dir, tiny_data_dir, tmp_path, capsys) -> None:
    """One `llmtune eval` call scores the same questions ourselves (--data) and through lm-eval (--harness); an
    adapter is evaluated beside the base (--compare) the same way."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    adapter = tmp_path / "adapter"
    get_peft_model(base, lora).save_pretrained(adapter)

    data = tmp_path / "exam.jsonl"
    questions = [{**row, "subject": "arithmetic"} for row in rows(tiny_data_dir / "eval_mc.jsonl")]
    data.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    task = {**TASK, "dataset_kwargs": {"data_files": {"test": str(data)}}}
    (tasks / "tiny_exam.yaml").write_text(yaml.safe_dump(task), encoding="utf-8")
    out = tmp_path / "both.json"
    code, _, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--compare", str(adapter), "--data", str(data),
                       "--harness", "tiny_exam", "--harness-include", str(tasks), "--out", str(out))  # fmt: skip
    assert code == 0, err
    models = json.loads(out.read_text())["models"]
    assert len(models) == 2
    for model in models:
        assert model["metrics"]["tiny_exam/acc"] == pytest.approx(model["metrics"]["accuracy"])
    assert models[0]["generations"] != models[1]["generations"]  # the adapter changes the answers
