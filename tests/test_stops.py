"""Stop tokens: every saved causal run carries a generation_config.json whose eos ids include the chat template's
end-of-turn token, even when its base's config does not; at the end of an sft run (and after `export`) greedy
answers to 4 training prompts that run to 32 new tokens without stopping are reported with the numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmtune.recipe import load_recipe
from llmtune.training.run import run


def base_without_end_of_turn_stop(tiny_model_dir: Path, root: Path) -> Path:
    """The tiny model whose generation config stops only on <|endoftext|> (0), not on <|im_end|> (2)."""
    base = root / "base"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "generation_config.json").read_text())
    (base / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": 0}))
    return base


def test_a_run_saves_stop_ids_with_the_end_of_turn_token_and_warns_when_answers_do_not_stop(
    tiny_model_dir, tiny_recipe, tmp_path, capsys
) -> None:
    base = base_without_end_of_turn_stop(tiny_model_dir, tmp_path)
    recipe = tiny_recipe(model={"name_or_path": str(base)}, train={"max_steps": 1, "lr": 1e-5})
    capsys.readouterr()
    result = run(load_recipe(recipe))
    err = capsys.readouterr().err
    saved = json.loads((Path(result.output_dir) / "generation_config.json").read_text())
    assert 2 in saved["eos_token_id"] and 0 in saved["eos_token_id"], saved
    assert saved["pad_token_id"] == 3
    # one step at lr 1e-5 leaves the random base as it was: it never ends a turn
    assert "greedy generation stopped within 32 new tokens on only 0 of 4 training prompts" in " ".join(err.split())
    assert "'<|im_end|>' (2)" in err


def test_a_run_that_learned_to_stop_gets_no_warning(tiny_recipe, capsys) -> None:
    recipe = tiny_recipe(method={"kind": "full"}, train={"max_steps": 40, "lr": 3e-3})
    capsys.readouterr()
    result = run(load_recipe(recipe))
    err = " ".join(capsys.readouterr().err.split())
    assert "greedy generation stopped" not in err, err
    assert 2 in json.loads((Path(result.output_dir) / "generation_config.json").read_text())["eos_token_id"]
