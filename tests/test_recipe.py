"""The recipe schema and loader: extends, --set, and one clear message for every kind of mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmtune.errors import UserError
from llmtune.recipe import deep_merge, dump_recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)

BASE = """\
stage: sft
model: {name_or_path: some/model}
data:
  train: [{path: data/train.jsonl, format: messages}]
output: {dir: runs/x}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(path, overrides)
    return str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.description, f"{path} needs a one-line description for `recipe list`"


def test_shipped_recipes_exist() -> None:
    assert len(SHIPPED) >= 4


def test_defaults_are_filled_and_show_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "r.yaml", BASE))
    assert recipe.method.kind == "lora" and recipe.method.lora.r == 16 and recipe.train.lr == 2e-4
    assert recipe.model.trust_remote_code is False
    again = load_recipe(write(tmp_path, "shown.yaml", dump_recipe(recipe)))
    assert again == recipe


def test_extends_deep_merges_relative_to_the_file(tmp_path: Path) -> None:
    write(tmp_path, "base/sft.yaml", BASE + "train: {lr: 1.0e-3, batch_size: 8}\n")
    child = write(tmp_path, "runs/child.yaml", "extends: ../base/sft.yaml\ntrain: {lr: 5.0e-5}\n")
    recipe = load_recipe(child)
    assert recipe.train.lr == 5e-5 and recipe.train.batch_size == 8


def test_lists_are_replaced_not_concatenated() -> None:
    merged = deep_merge({"a": {"b": [1, 2], "c": 1}}, {"a": {"b": [3]}})
    assert merged == {"a": {"b": [3], "c": 1}}


def test_set_overrides_with_types(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", BASE)
    recipe = load_recipe(path, ["train.lr=1e-4", "method.lora.r=8", "data.train.0.weight=2", "method.kind=qlora"])
    assert recipe.train.lr == 1e-4 and recipe.method.lora.r == 8
    assert recipe.data.train[0].weight == 2.0 and recipe.method.kind == "qlora"
    message = error_of(path, ["train.batch_size=many"])
    assert "train.batch_size" in message and "valid integer" in message and "'many'" in message
    assert "KEY=VALUE" in error_of(path, ["train.lr"])
    assert "not an index" in error_of(path, ["data.train.5.weight=2"])


def test_unknown_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", BASE + "method:\n  kind: lora\n  lora: {r: 8, alpah: 3}\n")
    message = error_of(path)
    assert f"{path}:8" in message
    assert "'method.lora.alpah'" in message and "did you mean 'alpha'?" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "r.yaml", BASE + "trian: {lr: 1}\n"))
    assert "did you mean 'train'?" in message and ":6" in message


def test_wrong_value_says_what_is_allowed(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "r.yaml", BASE.replace("stage: sft", "stage: ppo")))
    allowed = "'pt', 'sft', 'rm', 'dpo', 'kto', 'orpo', 'cpo', 'grpo', 'rloo' or 'cls'"
    assert ":1" in message and "stage" in message and allowed in message


def test_missing_required_key(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "r.yaml", "stage: sft\nmodel: {name_or_path: m}\noutput: {dir: x}\n"))
    assert "missing required key 'data'" in message


def test_yaml_syntax_error_has_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "stage: sft\nmodel:\n  name_or_path: [oops\n")
    message = error_of(path)
    assert message.startswith(f"{path}:") and "YAML syntax error" in message


def test_extends_cycle_and_missing_parent_are_named(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    assert "cycle: a.yaml -> b.yaml -> a.yaml" in error_of(tmp_path / "a.yaml")
    message = error_of(write(tmp_path, "c.yaml", "extends: nowhere.yaml\n"))
    assert "extends: nowhere.yaml" in message and "not found" in message


def test_impossible_combinations_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", BASE)
    assert "a 4-bit base cannot be trained directly" in error_of(
        path, ["method.kind=full", "method.qlora.quant_type=nf4"]
    )
    assert "stage 'dpo' cannot train on" in error_of(path, ["stage=dpo"])
    assert "the dpo block is set but stage is 'sft'" in error_of(path, ["dpo.beta=0.2"])


def test_recipe_that_is_not_a_mapping(tmp_path: Path) -> None:
    assert "must be a mapping" in error_of(write(tmp_path, "r.yaml", "- a\n- b\n"))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmtune", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_validate_show_and_list(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", BASE)
    write(tmp_path, "data/train.jsonl", "{}\n")  # BASE's data file, relative to the working directory
    ok = run_cli("recipe", "validate", str(path), cwd=tmp_path)
    assert ok.returncode == 0 and "ok (sft, lora" in ok.stdout
    assert "model.name_or_path: some/model is a Hub id, not fetched" in ok.stdout
    shown = run_cli("recipe", "show", str(path), "--set", "train.lr=3e-4")
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout)["train"]["lr"] == 3e-4
    listed = run_cli("recipe", "list", cwd=tmp_path)
    assert listed.returncode == 0
    names = {line.split()[0] for line in listed.stdout.splitlines()}
    assert names == {p.relative_to(ROOT / "recipes").with_suffix("").as_posix() for p in SHIPPED}


def test_cli_bad_recipe_exits_2_with_one_message_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", BASE + "train: {lr: fast}\n")
    result = run_cli("recipe", "validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    assert "train.lr" in result.stderr and f"{path}:6" in result.stderr
    missing = run_cli("recipe", "validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "recipe file not found" in missing.stderr


def test_validate_names_each_missing_local_path_and_reports_hub_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli_runner import run_main

    monkeypatch.chdir(tmp_path)
    write(tmp_path, "data/train.jsonl", "{}\n")
    (tmp_path / "model").mkdir()
    dpo = BASE.replace("stage: sft", "stage: dpo").replace("format: messages", "format: preference")
    good = write(tmp_path, "dpo.yaml", dpo + "dpo: {reference: org/ref-model}\n")
    code, out, err = run_main(capsys, "recipe", "validate", str(good), "--set", "model.adapter=model")
    assert code == 0, err
    assert "some/model is a Hub id" in out and "dpo.reference: org/ref-model is a Hub id" in out

    cases = {
        "data.train.0.path=data/nope.jsonl": "data.train[0].path: data/nope.jsonl does not exist",
        "data.eval=[{path: held/out/eval.jsonl}]": "data.eval[0].path: held/out/eval.jsonl does not exist",
        "model.name_or_path=./missing-model": "model.name_or_path: ./missing-model does not exist",
        "model.adapter=runs/sft/adapter": "model.adapter: runs/sft/adapter does not exist (an earlier run's",
        "model.chat_template=templates/mine.jinja": "model.chat_template: templates/mine.jinja does not exist",
        "dpo.reference=/no/such/ref": "dpo.reference: /no/such/ref does not exist",
        "data.train.0.path=data/builtin/sft_messages.jsonl": "`llmtune synth-data data/builtin` writes",
    }
    for assignment, message in cases.items():
        code, out, err = run_main(capsys, "recipe", "validate", str(good), "--set", assignment)
        assert code == 2 and message in err and err.count("error:") == 1, (assignment, err)
        assert "ok" not in out

    write(tmp_path, "two.yaml", BASE.replace("data/train.jsonl", "data/a.jsonl"))
    code, _, err = run_main(capsys, "recipe", "validate", "two.yaml", "--set", "model.adapter=./x")
    assert code == 2 and "model.adapter: ./x does not exist" in err and "data.train[0].path: data/a.jsonl" in err


def test_gradient_checkpointing_takes_a_share_of_the_layers(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", BASE)
    assert load_recipe(path, ["train.gradient_checkpointing=0.5"]).train.checkpoint_share == 0.5
    assert load_recipe(path, ["train.gradient_checkpointing=true"]).train.checkpoint_share == 1.0
    assert load_recipe(path).train.gradient_checkpointing == "auto"
    message = error_of(path, ["train.gradient_checkpointing=1.5"])
    assert "train.gradient_checkpointing" in message and "above 0 and at most 1" in message
