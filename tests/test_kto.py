"""KTO through TRL's real KTOTrainer on the tiny model: preference pairs split into desirable and undesirable rows
raise the held-out chosen-vs-rejected log-prob margin; kto rows (prompt, completion, label) train; full KTO
precomputes the reference instead of copying the model."""

from __future__ import annotations

import json
import math
from pathlib import Path

from llmtune.eval.measure import preference_metrics
from llmtune.recipe import load_recipe
from llmtune.training.run import run

LORA = {"kind": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}}


def kto_recipe(tiny_recipe, source: list[dict], method: dict = LORA, **sections) -> Path:
    train = {"max_steps": 2, "batch_size": 8, "lr": 2e-3, **sections.pop("train", {})}
    return tiny_recipe(stage="kto", method=method, source=source, data={"max_length": 64}, train=train, **sections)


def test_kto_on_split_pairs_raises_the_heldout_margin(tiny_recipe, preference_data_dir) -> None:
    from test_dpo import eval_rows, margin

    source = [{"path": str(preference_data_dir / "preference_chat.jsonl")}]
    result = run(load_recipe(kto_recipe(tiny_recipe, source, train={"max_steps": 30, "logging_steps": 10})))
    trainer = result.trainer
    labels = trainer.train_dataset["label"]  # 128 pairs -> 256 rows, less those over max_length (TRL drops them)
    assert 0 < sum(labels) == len(labels) - sum(labels)  # each pair gave one desirable and one undesirable row
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]

    held_out = eval_rows(preference_data_dir, 96)
    model = trainer.model.eval()
    with model.disable_adapter():
        before = preference_metrics(model, trainer.processing_class, held_out)
    after = preference_metrics(model, trainer.processing_class, held_out)
    print(f"kto held-out margin {margin(before):.3f} -> {margin(after):.3f}")
    assert margin(after) > margin(before) + 0.1, (before, after)  # measured (seed 0 only): -0.50 -> -0.33 nats
    logged = [row for row in trainer.state.log_history if "rewards/margins" in row]
    assert logged and {"kl", "rewards/chosen", "rewards/rejected"} <= set(logged[-1])


def test_kto_rows_train_with_full_weights_and_a_precomputed_reference(tiny_recipe, tmp_path) -> None:
    rows = [{"prompt": f"Add {i} and 1.", "completion": str(i + 1 if i % 2 else i + 2), "label": bool(i % 2)}
            for i in range(16)]  # fmt: skip
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(load_recipe(kto_recipe(tiny_recipe, [{"path": str(tmp_path / "kto.jsonl")}], method={"kind": "full"})))
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert result.trainer.ref_model is None and result.trainer.precompute_ref_logps
