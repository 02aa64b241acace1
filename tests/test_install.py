"""`pip install .` (not editable) ships what a user needs: the recipes and accelerate configs, usable by name from
any directory. Built as a real wheel, installed into a folder of its own and run from a directory outside the
checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "llmtune" / "recipes"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    subprocess.run(pip, check=True, capture_output=True)
    return next(out.glob("llmtune-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into its own folder; put first on PYTHONPATH, it shadows the checkout's package."""
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    return target


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llmtune", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_top_level_recipes_is_the_packaged_folder() -> None:
    assert (ROOT / "recipes").resolve() == SHIPPED.resolve()


def test_the_wheel_contains_every_shipped_recipe_and_accelerate_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [p for p in SHIPPED.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json")]
    assert len(shipped) >= 15
    missing = [str(p) for p in shipped if f"llmtune/recipes/{p.relative_to(SHIPPED).as_posix()}" not in names]
    assert not missing


def test_installed_recipes_list_and_validate_by_name_outside_a_checkout(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    (work / "data" / "builtin").mkdir(parents=True)
    (work / "data" / "builtin" / "sft_messages.jsonl").write_text("{}\n")  # the recipe's data, so validate passes

    probe = run_installed(installed, work, "recipe", "list")
    assert probe.returncode == 0, probe.stderr
    rows = [line.split(None, 1) for line in probe.stdout.splitlines()]
    names = [row[0] for row in rows]
    assert "qwen2.5-0.5b/sft-lora" in names and "demo/sft-lora" in names and len(names) >= 10
    assert not any("accelerate" in n for n in names)
    starts = {line.index(row[1]) for line, row in zip(probe.stdout.splitlines(), rows, strict=True)}
    assert len(starts) == 1, "descriptions start in one column"

    for name in ("qwen2.5-0.5b/sft-lora", "qwen2.5-0.5b/sft-qlora.yaml"):  # sft-qlora `extends:` sft-lora
        ok = run_installed(installed, work, "recipe", "validate", name)
        assert ok.returncode == 0, ok.stderr
        assert "ok (sft" in ok.stdout

    code = "import llmtune, sys; print(llmtune.__file__)"
    where = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(installed)},
                           cwd=work, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.startswith(str(installed)), "the installed copy ran, not the checkout"


def test_extends_and_accelerate_config_take_shipped_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtune.recipe import load_recipe
    from llmtune.training.accelerate import find_accelerate_config, sharding_from_config
    from llmtune.training.launch import LaunchOptions, launch_argv

    monkeypatch.chdir(tmp_path)  # not the checkout: ./recipes does not exist here

    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: qwen2.5-0.5b/sft-lora\ntrain: {lr: 1.0e-5}\n")
    recipe = load_recipe(mine)
    assert recipe.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct" and recipe.train.lr == 1e-5

    local = tmp_path / "qwen2.5-0.5b" / "sft-lora.yaml"  # a local file wins over the shipped one of that name
    local.parent.mkdir()
    local.write_text("extends: ../mine.yaml\ndescription: local\n")
    assert load_recipe(local).description == "local"

    assert find_accelerate_config("accelerate/zero3") == SHIPPED / "accelerate" / "zero3.yaml"
    assert find_accelerate_config("recipes/accelerate/zero2.yaml").is_file()
    offload = sharding_from_config("accelerate/zero3_offload", 2)
    assert offload.kind == "zero3" and offload.offload_optimizer

    sets = ["train.accelerate_config=recipes/accelerate/zero3_offload.yaml", "train.nproc=2", "train.optimizer=null"]
    argv = launch_argv("sft", [], load_recipe("qwen2.5-0.5b/sft-lora", sets), LaunchOptions())
    assert argv[argv.index("--config_file") + 1] == str(SHIPPED / "accelerate" / "zero3_offload.yaml")
    ds_file = Path(argv[argv.index("--deepspeed_config_file") + 1])
    assert ds_file.is_absolute() and ds_file.is_file()


def make_prerequisites() -> dict[str, list[str]]:
    """Each Makefile target's prerequisites as make itself reads them (variables expanded, rules merged)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    database = subprocess.run(["make", "-pRrq", "-f", "Makefile", "__no_such_target__"], cwd=ROOT,
                              capture_output=True, text=True).stdout  # fmt: skip
    rules = (line.split(":", 1) for line in database.splitlines() if ":" in line and not line.startswith(("#", "\t")))
    return {target: prereqs.split() for target, prereqs in rules if " " not in target and "=" not in prereqs}


def closure(graph: dict[str, list[str]], target: str) -> set[str]:
    seen, todo = set(), [target]
    while todo:
        for dep in graph.get(todo.pop(), []):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_only_make_test_builds_the_mirror_venv() -> None:
    graph = make_prerequisites()
    mirror = ".venv-mirror/.installed"
    assert mirror in closure(graph, "test")
    for target in ("demo", "install", "lint", "bench", "docs"):
        assert mirror not in closure(graph, target), target
    assert ".venv/.installed" in closure(graph, "demo")


def test_license_is_an_spdx_string_and_setuptools_reads_it() -> None:
    lines = (ROOT / "pyproject.toml").read_text(encoding="utf-8").splitlines()  # tomllib is 3.11+; 3.10 is supported
    assert 'license = "Apache-2.0"' in lines
    requires = next(line for line in lines if line.startswith("requires = "))
    assert '"setuptools>=77"' in requires


def test_the_wheel_declares_its_license_as_an_spdx_expression(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: Apache-2.0" in archive.read(metadata).decode()
