"""Pictures of runs and trackers: every run draws curves.png, `llmtune report` compares runs on one page, and
`train.report_to` logs to TensorBoard and MLflow (a local file store) under the run's name, with no token."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from cli_runner import run_main as cli

from llmtune.errors import UserError, has_module

SECRET = "hf_" + "llmtuneTestSecretToken" + "0123456789"  # built from parts: no token-shaped string is committed


def load_png(data: bytes):
    import matplotlib.image as mpimg

    return mpimg.imread(io.BytesIO(data), format="png")


def assert_drawn(data: bytes) -> None:
    """A real picture: pixels, and not one flat colour."""
    image = load_png(data)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir: Path, tiny_data_dir: Path) -> tuple[Path, Path, str]:
    """Two short sft runs differing in lr; the first logs to TensorBoard and MLflow with a token in the env."""
    import yaml

    from llmtune.recipe import load_recipe
    from llmtune.training.run import run

    root = tmp_path_factory.mktemp("runs")
    store = f"file://{root / 'mlruns'}"
    env = pytest.MonkeyPatch()
    env.setenv("MLFLOW_TRACKING_URI", store)
    env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the file store only on request
    env.setenv("HF_TOKEN", SECRET)
    try:
        for name, lr, trackers in (("lr-high", 1.0e-2, ["tensorboard", "mlflow"]), ("lr-low", 1.0e-3, [])):
            recipe = {
                "stage": "sft",
                "model": {"name_or_path": str(tiny_model_dir)},
                "method": {"kind": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                "data": {"train": [{"path": str(tiny_data_dir / "sft_messages.jsonl")}], "eval_ratio": 0.25,
                         "max_length": 128, "cache_dir": str(root / "cache")},
                "train": {"max_steps": 6, "batch_size": 4, "lr": lr, "logging_steps": 1, "eval_steps": 3,
                          "save_steps": 1000, "report_to": trackers},
                "output": {"dir": str(root / name)},
            }  # fmt: skip
            (root / f"{name}.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
            run(load_recipe(root / f"{name}.yaml"))
    finally:
        env.undo()
    return root / "lr-high", root / "lr-low", store


def test_every_run_draws_its_curves(runs) -> None:
    from llmtune.report.curves import panels_for, read_metrics

    for run_dir in runs[:2]:
        assert_drawn((run_dir / "curves.png").read_bytes())
        assert set(panels_for(read_metrics(run_dir / "metrics.jsonl"))) >= {"loss", "learning rate", "accuracy"}
    dpo_rows = [{"step": s, "loss": 0.7 - s / 100, "rewards/accuracies": s / 10, "rewards/margins": s / 5,
                 "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s} for s in range(1, 6)]  # fmt: skip
    assert {"accuracy", "reward margin", "rewards"} <= set(panels_for(dpo_rows))
    rm_rows = [{"step": s, "eval_accuracy": 0.5, "eval_margin": 0.1 * s, "mean_reward": 0.2} for s in range(1, 4)]
    assert panels_for(rm_rows) == {"accuracy": ["eval_accuracy"], "reward margin": ["eval_margin"],
                                   "rewards": ["mean_reward"]}  # fmt: skip


def test_a_plotting_failure_is_a_warning(tmp_path, capsys) -> None:
    from llmtune.training.run import _draw_curves

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n', encoding="utf-8")
    (tmp_path / "curves.png").mkdir()  # cannot be written as a file
    _draw_curves(tmp_path)
    assert "could not draw" in capsys.readouterr().err


def test_report_html_embeds_every_run_and_md_writes_pngs(runs, tmp_path, capsys) -> None:
    high, low, _ = runs
    page = tmp_path / "report.html"
    code, _, err = cli(capsys, "report", str(high), str(low), "--out", str(page))
    assert code == 0, err
    text = page.read_text(encoding="utf-8")
    assert "lr-high" in text and "lr-low" in text
    assert re.search(r"<td>train\.lr</td><td>0\.01</td><td>0\.001</td>", text)  # the recipes' difference
    assert "trainable_params" in text and "eval_loss" in text
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) >= 3  # loss, eval_loss, learning_rate at least, one line per run
    for data in images:
        assert_drawn(base64.b64decode(data))

    md = tmp_path / "md" / "report.md"
    code, _, err = cli(capsys, "report", str(high), str(low), "--out", str(md))
    assert code == 0, err
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text(encoding="utf-8"))
    assert "report-loss.png" in linked
    for name in linked:
        assert_drawn((md.parent / name).read_bytes())

    code, _, err = cli(capsys, "report", str(high), "--out", str(tmp_path / "r.pdf"))
    assert code == 2 and ".html" in err
    code, _, err = cli(capsys, "report", str(tmp_path), "--out", str(page))
    assert code == 2 and "not a training run directory" in err


def test_trackers_log_under_the_run_name_without_the_token(runs, monkeypatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    high, _, store = runs
    events = list((high / "runs").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"]

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store)
    logged = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [r.info.run_name for r in logged] == ["lr-high"]
    losses = client.get_metric_history(logged[0].info.run_id, "loss")
    assert len(losses) == 6 and all(m.value > 0 for m in losses)

    for folder in (high, Path(store.removeprefix("file://"))):
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.skipif(has_module("wandb"), reason="wandb is installed")
def test_a_missing_tracker_is_named_before_the_model_loads(tiny_recipe) -> None:
    from llmtune.recipe import load_recipe
    from llmtune.stages.args import common_training_args

    recipe = load_recipe(tiny_recipe(train={"report_to": ["wandb"]}))
    with pytest.raises(
        UserError, match=r"train.report_to: wandb needs the wandb package: pip install 'llmtune\[wandb\]'"
    ):
        common_training_args(recipe)
