"""`llmtune tokenize` shows the tokens each source puts into training after its sampling weight, so oversampling a
small source is visible before training."""

from __future__ import annotations

import json

from tests.cli_runner import run_main


def test_tokens_per_source_follow_the_weights(tmp_path, capsys, tiny_recipe, tiny_data_dir):
    small = tmp_path / "small.jsonl"
    lines = (tiny_data_dir / "sft_messages.jsonl").read_text().splitlines()
    small.write_text("\n".join(lines[:8]) + "\n")
    big = tiny_data_dir / "sft_messages.jsonl"
    recipe = tiny_recipe(source=[{"path": str(big)}, {"path": str(small), "weight": 3}], data={"packing": False})
    code, out, err = run_main(capsys, "tokenize", "--recipe", str(recipe))
    assert code == 0, err
    stats = json.loads(next((tmp_path / "cache").rglob("stats.json")).read_text())
    by_path = {s["path"]: s for s in stats["sources"]}
    assert by_path[str(small)]["examples"] == 24 and by_path[str(big)]["examples"] == 32
    assert sum(s["tokens"] for s in stats["sources"]) == stats["tokens"]
    # the small file's 8 rows, three times over: three times their own tokens
    assert by_path[str(small)]["weight"] == 3
    share = by_path[str(small)]["token_share"]
    assert abs(share - by_path[str(small)]["tokens"] / stats["tokens"]) < 1e-9 and 0.2 < share < 0.6
    assert f"{share:.1%}" in out  # printed in the per-source table
