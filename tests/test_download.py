"""`llmtune download` and `ensure_local` against a real Hub mirror (olah) holding repos built here.

A fault proxy sits in front of the mirror for the tests that need a hostile network: cut connections,
5xx answers, flipped bytes, a token check, a malicious file listing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hubmirror import Fault, FaultProxy, OlahServer, SourceRepo, build_repo, olah_cli

from llmtune.errors import UserError
from llmtune.hub import RetryPolicy, download_repo, ensure_local, project_endpoint, resolve_endpoint
from llmtune.hub.files import check_repo_path

MODEL, DATASET = "acme/tiny-llama", "acme/tiny-chat"
BIG = "big.bin"
BIG_SIZE = 3 * 1024 * 1024
TOKEN = "hf_" + "TESTMARKERq8ZrX2vLpN4kWc7JtY5bHs3DfG"  # split: no token-shaped string in the repo


@dataclass
class Hub:
    url: str
    proxy: FaultProxy
    model: SourceRepo
    dataset: SourceRepo


def chat_rows(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        msgs = [{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]
        rows.append(json.dumps({"messages": msgs}))
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Hub]:
    exe, why = olah_cli()
    if exe is None:
        pytest.skip(f"the olah mirror server cannot be installed: {why}")
    root = tmp_path_factory.mktemp("mirror")
    model_files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    model_files |= {BIG: random.Random(0).randbytes(BIG_SIZE), "notes/a.txt": b"", "notes/b.txt": b""}
    model = build_repo(root / "mirrors", "model", MODEL, [
        ("v1", model_files | {"README.md": b"# tiny llama v1\n"}),
        ("main", model_files | {"README.md": b"# tiny llama v2\n", "notes/changelog.txt": b"v2: notes\n"}),
    ])  # fmt: skip
    readme = b"---\nlicense: mit\n---\n# tiny chat\n"
    dataset = build_repo(root / "mirrors", "dataset", DATASET, [
        ("v1", {"README.md": readme, "data/train.jsonl": chat_rows(8, 1)}),
        ("main", {"README.md": readme, "data/train.jsonl": chat_rows(24, 2), "data/test.jsonl": chat_rows(4, 3)}),
    ])  # fmt: skip
    server = OlahServer(exe, root / "mirrors", root)
    try:
        server.wait_ready(f"/api/models/{MODEL}/revision/main")
        proxy = FaultProxy(server.url)
        yield Hub(server.url, proxy, model, dataset)
        proxy.close()
    finally:
        server.stop()


@pytest.fixture
def proxy(hub: Hub) -> Iterator[FaultProxy]:
    hub.proxy.reset()
    yield hub.proxy
    hub.proxy.reset()


Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    """Run `llmtune ARGS` in a subprocess with its own HF_HOME and no Hub settings inherited from this shell."""
    hidden = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN_PATH")
    base = {k: v for k, v in os.environ.items() if k not in hidden}
    base |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "llmtune", *args]
        return subprocess.run(cmd, env=base | (env or {}), cwd=cwd, capture_output=True, text=True, timeout=120)

    run.env = base  # type: ignore[attr-defined]
    return run


def flat(text: str) -> str:
    return " ".join(text.split())


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr


def test_full_download_is_byte_identical_and_a_rerun_skips_everything(hub: Hub, proxy: FaultProxy, cli: Run,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "out"
    first = cli("download", MODEL, "--endpoint", proxy.url, "--local-dir", str(out))
    assert_ok(first)
    assert tree(out) == hub.model.revisions["main"]
    assert f"Endpoint: {proxy.url} (from --endpoint)" in first.stderr
    files = len(hub.model.revisions["main"])
    assert f"fetched {files} files" in flat(first.stderr) and f"verified all {files} files" in flat(first.stderr)
    assert first.stdout.strip() == str(out)
    gets = len(proxy.requests("/resolve/"))
    assert gets == files - 1  # notes/a.txt and notes/b.txt have the same (empty) content: fetched once

    again = cli("download", MODEL, "--endpoint", proxy.url, "--local-dir", str(out))
    assert_ok(again)
    assert "fetched 0 files" in flat(again.stderr) and f"{files} already present" in flat(again.stderr)
    assert len(proxy.requests("/resolve/")) == gets
    assert tree(out) == hub.model.revisions["main"]


def test_revisions_land_in_the_hf_cache_and_reuse_blobs(hub: Hub, proxy: FaultProxy, cli: Run, tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    v1 = cli("download", DATASET, "--repo-type", "dataset", "--revision", "v1", "--endpoint", proxy.url)
    assert_ok(v1)
    snapshot = Path(v1.stdout.strip())
    assert snapshot.name == hub.dataset.commits["v1"] and tree(snapshot) == hub.dataset.revisions["v1"]
    storage = tmp_path / "hf" / "hub" / "datasets--acme--tiny-chat"
    assert (storage / "refs" / "v1").read_text() == hub.dataset.commits["v1"]
    found = snapshot_download(DATASET, repo_type="dataset", revision="v1", cache_dir=tmp_path / "hf" / "hub",
                              local_files_only=True)  # fmt: skip
    assert Path(found) == snapshot

    main = cli("download", DATASET, "--repo-type", "dataset", "--endpoint", proxy.url)
    assert_ok(main)
    assert tree(Path(main.stdout.strip())) == hub.dataset.revisions["main"]
    assert [r.path.rsplit("/", 1)[-1] for r in proxy.requests("README.md")] == ["README.md"]  # same blob, reused
    assert "1 already present" in flat(main.stderr)

    dev = cli("download", MODEL, "--revision", "dev", "--endpoint", proxy.url, "--include", "README.md")
    assert_ok(dev)
    assert (Path(dev.stdout.strip()) / "README.md").read_bytes() == b"# tiny llama v1\n"


def test_include_exclude_and_dry_run(hub: Hub, proxy: FaultProxy, cli: Run, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--include", "*.json", "--include", "notes/*", "--exclude", "tokenizer*", "--local-dir", str(out)]
    expected = {
        name: data
        for name, data in hub.model.revisions["main"].items()
        if (name.endswith(".json") or name.startswith("notes/")) and not name.startswith("tokenizer")
    }
    assert "config.json" in expected and "notes/changelog.txt" in expected

    dry = cli("download", MODEL, "--endpoint", proxy.url, "--dry-run", *args)
    assert_ok(dry)
    listed = [line.split()[-1] for line in dry.stdout.splitlines()[1:-1]]
    assert listed == sorted(expected)
    total = sum(len(d) for d in expected.values())
    assert f"{total:,}  total: {len(expected)} files" in dry.stdout
    assert not out.exists() and proxy.requests("/resolve/") == []

    assert_ok(cli("download", MODEL, "--endpoint", proxy.url, *args))
    assert tree(out) == expected


def test_endpoint_comes_from_flag_then_env_then_project_config(proxy: FaultProxy, cli: Run, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert resolve_endpoint(None, None) == ("https://huggingface.co", "default")
    assert resolve_endpoint(None, "http://proj/") == ("http://proj", "project config")
    monkeypatch.setenv("HF_ENDPOINT", "http://env")
    assert resolve_endpoint(None, "http://proj") == ("http://env", "HF_ENDPOINT")
    assert resolve_endpoint("http://flag", "http://proj") == ("http://flag", "--endpoint")
    with pytest.raises(UserError, match="not an http"):
        resolve_endpoint("hf-mirror.example", None)

    project = tmp_path / "project"
    project.mkdir()
    (project / "llmtune.yaml").write_text(f"hub:\n  endpoint: {proxy.url}\n")
    assert project_endpoint(project / "llmtune.yaml") == proxy.url
    from_config = cli("download", MODEL, "--include", "config.json", "--local-dir", "out", cwd=project)
    assert_ok(from_config)
    assert f"Endpoint: {proxy.url} (from project config)" in from_config.stderr
    assert (project / "out" / "config.json").exists()

    (project / "llmtune.yaml").write_text("hub:\n  endpoint: http://127.0.0.1:9\n")
    from_env = cli("download", MODEL, "--include", "config.json", "--dry-run", cwd=project,
                   env={"HF_ENDPOINT": proxy.url})  # fmt: skip
    assert_ok(from_env)
    assert "(from HF_ENDPOINT)" in from_env.stderr

    (project / "llmtune.yaml").write_text("hub: [oops\n")
    broken = cli("download", MODEL, "--dry-run", cwd=project)
    assert broken.returncode == 2 and "llmtune.yaml" in broken.stderr and "Traceback" not in broken.stderr


def test_transient_5xx_answers_are_retried(hub: Hub, proxy: FaultProxy, cli: Run, tmp_path: Path) -> None:
    proxy.faults = [Fault("/revision/main", "status", times=1, status=503),
                    Fault(f"/resolve/{hub.model.commits['main']}/{BIG}", "status", times=2, status=502)]  # fmt: skip
    result = cli("download", MODEL, "--include", BIG, "--endpoint", proxy.url, "--local-dir", str(tmp_path / "o"))
    assert_ok(result)
    assert (tmp_path / "o" / BIG).read_bytes() == hub.model.revisions["main"][BIG]
    assert [r.status for r in proxy.requests(BIG)] == [502, 502, 200]
    assert [r.status for r in proxy.requests("/revision/main")] == [503, 200]
    assert "HTTP 503; retry 1/5" in result.stderr and "HTTP 502; retry 2/5" in result.stderr


def test_retries_are_bounded(proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.faults = [Fault(f"/{BIG}", "status", times=100, status=503)]
    with pytest.raises(UserError, match=r"gave up after 3 attempts \(HTTP 503\)"):
        download_repo(MODEL, endpoint=proxy.url, include=[BIG], local_dir=tmp_path / "o",
                      retry=RetryPolicy(attempts=3, backoff=0.01))  # fmt: skip
    assert len(proxy.requests(BIG)) == 3


def test_a_connection_cut_mid_file_resumes_where_it_stopped(hub: Hub, proxy: FaultProxy, cli: Run,
                                                            tmp_path: Path) -> None:  # fmt: skip
    proxy.faults = [Fault(f"/{BIG}", "cut", at=1_000_000)]
    result = cli("download", MODEL, "--include", BIG, "--endpoint", proxy.url, "--local-dir", str(tmp_path / "o"))
    assert_ok(result)
    assert (tmp_path / "o" / BIG).read_bytes() == hub.model.revisions["main"][BIG]
    first, second = proxy.requests(BIG)
    assert first.range is None and first.sent == 1_000_000
    assert second.range == "bytes=1000000-"  # asked for the rest; olah ignores ranges on local repos and resends it


def test_an_interrupted_run_resumes_the_partial_file_next_time(hub: Hub, proxy: FaultProxy, cli: Run,
                                                               tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "o"
    args = [sys.executable, "-m", "llmtune", "download", MODEL, "--include", BIG, "--endpoint", proxy.url,
            "--local-dir", str(out)]  # fmt: skip
    proxy.faults = [Fault(f"/{BIG}", "stall", at=1_500_000)]
    # Ctrl-C as a user's terminal sends it: a test run started in the background (a shell without job control)
    # passes SIGINT down ignored, and the child would then finish the download instead.
    child = subprocess.Popen(args, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,  # type: ignore[attr-defined]
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert proxy.stalled.wait(60)
    partials: list[Path] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        partials = list((out / ".cache" / "llmtune").glob("*.incomplete"))
        if partials and partials[0].stat().st_size == 1_500_000:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 130 and "run the same command again" in flat(stderr)
    assert [p.stat().st_size for p in partials] == [1_500_000] and not (out / BIG).exists()
    proxy.release.set()

    result = cli("download", MODEL, "--include", BIG, "--endpoint", proxy.url, "--local-dir", str(out))
    assert_ok(result)
    assert proxy.requests(BIG)[-1].range == "bytes=1500000-"
    assert (out / BIG).read_bytes() == hub.model.revisions["main"][BIG] and not (out / ".cache").exists()


def test_a_corrupted_transfer_is_detected_deleted_and_fetched_again(hub: Hub, proxy: FaultProxy, cli: Run,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    proxy.faults = [Fault(f"/{BIG}", "flip", at=123_456)]
    result = cli("download", MODEL, "--include", BIG, "--endpoint", proxy.url, "--local-dir", str(tmp_path / "o"))
    assert_ok(result)
    assert (tmp_path / "o" / BIG).read_bytes() == hub.model.revisions["main"][BIG]
    assert len(proxy.requests(BIG)) == 2
    text = flat(result.stderr)
    assert "downloaded data has sha256" in text and "1 did not match the server and were fetched again" in text


def test_a_corrupted_local_file_is_repaired_on_the_next_run(hub: Hub, proxy: FaultProxy, cli: Run,
                                                            tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "o"
    args = ["download", MODEL, "--include", "*.json", "--endpoint", proxy.url, "--local-dir", str(out)]
    assert_ok(cli(*args))
    config = out / "config.json"
    data = bytearray(config.read_bytes())
    data[5] ^= 0x01
    config.write_bytes(bytes(data))
    gets = len(proxy.requests("/resolve/"))
    result = cli(*args)
    assert_ok(result)
    assert "config.json: the local copy does not match the server (git sha1" in flat(result.stderr)
    assert config.read_bytes() == hub.model.revisions["main"]["config.json"]
    assert len(proxy.requests("/resolve/")) == gets + 1


def test_missing_repo_and_missing_revision_say_so(hub: Hub, proxy: FaultProxy, cli: Run) -> None:
    repo = cli("download", "acme/nope", "--endpoint", proxy.url)
    assert repo.returncode == 2 and "Traceback" not in repo.stderr
    assert "refused model 'acme/nope' (HTTP 401): it does not exist there" in flat(repo.stderr)
    assert proxy.url in flat(repo.stderr)
    wrong_type = cli("download", MODEL, "--repo-type", "dataset", "--endpoint", proxy.url)
    assert wrong_type.returncode == 2 and f"dataset '{MODEL}'" in flat(wrong_type.stderr)
    revision = cli("download", MODEL, "--revision", "nope", "--endpoint", proxy.url)
    assert revision.returncode == 2
    assert f"Revision 'nope' does not exist in model '{MODEL}' on {proxy.url}" in flat(revision.stderr)


def test_a_token_is_asked_for_used_and_never_shown(hub: Hub, proxy: FaultProxy, cli: Run, tmp_path: Path) -> None:
    proxy.require_token = TOKEN
    out = tmp_path / "o"
    args = ["-v", "download", MODEL, "--include", "config.json", "--endpoint", proxy.url, "--local-dir", str(out)]
    missing = cli(*args)
    assert missing.returncode == 2
    assert "needs a token" in flat(missing.stderr) and "HF_TOKEN" in missing.stderr and "--token-file" in missing.stderr
    wrong = cli(*args, env={"HF_TOKEN": "hf_" + "WRONGtokenWRONGtokenWRONGtoken00"})
    assert wrong.returncode == 2 and "with the token provided" in flat(wrong.stderr)

    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")
    env_run = cli(*args, env={"HF_TOKEN": TOKEN})
    file_run = cli(*args, "--token-file", str(token_file))
    (tmp_path / "hf").mkdir(exist_ok=True)
    (tmp_path / "hf" / "token").write_text(TOKEN)
    store_run = cli(*args)
    for run, source in ((env_run, "HF_TOKEN"), (file_run, "--token-file"), (store_run, "login store")):
        assert_ok(run)
        assert f"token: from {source}" in run.stderr
    assert (out / "config.json").read_bytes() == hub.model.revisions["main"]["config.json"]
    for run in (missing, wrong, env_run, file_run, store_run):
        assert TOKEN not in run.stdout + run.stderr and "TESTMARKER" not in run.stdout + run.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in (token_file, tmp_path / "hf" / "token")]
    assert written and not [p for p in written if b"TESTMARKER" in p.read_bytes()]


def test_unsafe_file_names_from_the_server_are_refused(proxy: FaultProxy, cli: Run, tmp_path: Path) -> None:
    for bad in ("../escape.txt", "/etc/escape.txt", "a/../../escape.txt", "a\\..\\escape.txt", "C:/escape.txt", ""):
        with pytest.raises(UserError, match="unsafe file name"):
            check_repo_path(bad)
    assert check_repo_path("a/b.c/d.safetensors") == "a/b.c/d.safetensors"

    proxy.extra_tree_entries = [{"type": "file", "oid": "a" * 40, "size": 6, "path": "../escape.txt"}]
    work = tmp_path / "work"
    result = cli("download", MODEL, "--endpoint", proxy.url, "--local-dir", str(work / "out"))
    assert result.returncode == 2 and "unsafe file name '../escape.txt'" in flat(result.stderr)
    assert not work.exists() and not list(tmp_path.rglob("escape.txt"))
    assert proxy.requests("/resolve/") == []


def test_ensure_local_fetches_a_loadable_model_and_dataset(hub: Hub, proxy: FaultProxy, tmp_path: Path,
                                                           tiny_model_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    cache = tmp_path / "cache"
    assert ensure_local(str(tiny_model_dir)) == tiny_model_dir
    snapshot = ensure_local(MODEL, "main", "model", proxy.url, cache_dir=cache)
    assert snapshot == cache / "models--acme--tiny-llama" / "snapshots" / hub.model.commits["main"]
    model = AutoModelForCausalLM.from_pretrained(snapshot)
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    assert model.config.vocab_size == len(tokenizer) and model.num_parameters() > 0
    gets = len(proxy.requests("/resolve/"))
    assert ensure_local(MODEL, "main", "model", proxy.url, cache_dir=cache) == snapshot
    assert len(proxy.requests("/resolve/")) == gets  # already cached: listed, not fetched again

    data = ensure_local(DATASET, "v1", "dataset", proxy.url, cache_dir=cache)
    assert (data / "data" / "train.jsonl").read_bytes() == hub.dataset.revisions["v1"]["data/train.jsonl"]
    with pytest.raises(UserError, match="'acme/nope' is not a local path; as a Hub id: .* does not exist there"):
        ensure_local("acme/nope", "main", "model", proxy.url, cache_dir=cache)
    with pytest.raises(UserError, match="no such file or directory"):
        ensure_local("./runs/missing-model")

    offline = subprocess.run(
        [sys.executable, "-c", "import sys; from llmtune.hub import ensure_local;"
         f"print(ensure_local({MODEL!r}, 'main', 'model', 'http://127.0.0.1:9', cache_dir={str(cache)!r}))"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.strip() == str(snapshot) and "using the cached copy" in offline.stderr


def _registered_commands() -> set[str]:
    import typer.main

    from llmtune.cli import app

    return set(typer.main.get_command(app).commands)


@pytest.mark.skipif("sft" not in _registered_commands(), reason="sft stage not available yet")
def test_sft_trains_through_the_mirror_from_hub_ids(hub: Hub, proxy: FaultProxy, cli: Run, tmp_path: Path) -> None:
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        "stage: sft\n"
        f"model: {{name_or_path: {MODEL}}}\n"
        "method: {kind: full}\n"
        f"data: {{train: [{{path: {DATASET}, format: messages}}], max_length: 64}}\n"
        "train: {max_steps: 2, batch_size: 2, logging_steps: 1, save_steps: 1000}\n"
        f"hub: {{endpoint: {proxy.url}}}\n"
        f"output: {{dir: {tmp_path / 'run'}}}\n"
    )
    result = cli("sft", "--recipe", str(recipe))
    assert_ok(result)
    assert "done: 2 steps" in result.stdout
    fetched = {r.path.rsplit("/", 1)[-1] for r in proxy.requests("/resolve/")}
    assert {"model.safetensors", "config.json", "train.jsonl"} <= fetched
