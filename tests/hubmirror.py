"""Test infrastructure for downloads: local git repos served by a real Hub mirror (olah, offline), and a fault proxy.

olah runs from its own virtualenv (.venv-mirror, made by `make mirror-env`; built here on first use if missing),
because its dependencies (an old psutil, fastapi, ...) must not leak into the project's environment.
Large files are stored the way git-lfs stores them (a pointer in git, the object under .git/lfs/objects), so the
mirror lists them with their sha256 like the Hub does; git-lfs itself is not needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
MIRROR_VENV = REPO_ROOT / ".venv-mirror"
OLAH = "olah==0.5.4"
LFS_MIN_SIZE = 100_000
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull}  # fmt: skip


def olah_cli() -> tuple[Path | None, str]:
    """The olah-cli executable, installing olah into .venv-mirror if needed; (None, why) if that fails."""
    exe = MIRROR_VENV / "bin" / "olah-cli"
    if exe.exists():
        return exe, ""
    try:
        if not (MIRROR_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(MIRROR_VENV)], check=True, capture_output=True)
        pip = [str(MIRROR_VENV / "bin" / "python"), "-m", "pip", "install", "-q", OLAH]
        done = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot create {MIRROR_VENV}: {exc}"
    if done.returncode != 0 or not exe.exists():
        return None, f"`pip install {OLAH}` into {MIRROR_VENV} failed: {done.stderr.strip()[-500:]}"
    return exe, ""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def commit_files(repo: Path, files: dict[str, bytes], message: str) -> str:
    """Replace the work tree with `files` and commit; big files become LFS pointers. Returns the commit sha."""
    for child in repo.iterdir():
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for name, data in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(data) >= LFS_MIN_SIZE:
            oid = hashlib.sha256(data).hexdigest()
            obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data)
            data = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
        path.write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


@dataclass
class SourceRepo:
    """A repo on the mirror and the exact bytes of every file at each of its revisions."""

    repo_id: str
    repo_type: str
    path: Path
    revisions: dict[str, dict[str, bytes]] = field(default_factory=dict)
    commits: dict[str, str] = field(default_factory=dict)


def build_repo(mirrors: Path, repo_type: str, repo_id: str, history: list[tuple[str, dict[str, bytes]]]) -> SourceRepo:
    """A git repo under mirrors/<type>s/<org>/<name>; history is [(tag or branch name, files)], oldest first.

    The first names become tags, the last one is `main`; a `dev` branch points at the first commit.
    """
    path = mirrors / f"{repo_type}s" / repo_id
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    repo = SourceRepo(repo_id, repo_type, path)
    for i, (name, files) in enumerate(history):
        sha = commit_files(path, files, f"revision {name}")
        if i < len(history) - 1:
            git(path, "tag", name)
        repo.revisions[name], repo.commits[name] = dict(files), sha
    git(path, "branch", "dev", repo.commits[history[0][0]])
    repo.revisions["dev"], repo.commits["dev"] = repo.revisions[history[0][0]], repo.commits[history[0][0]]
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OlahServer:
    """olah in offline mode on 127.0.0.1, serving the git repos under `mirrors`."""

    def __init__(self, exe: Path, mirrors: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        config = workdir / "olah.toml"
        config.write_text(
            f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\nrepos-path = "{workdir / "cache"}"\n'
            f'mirrors-path = ["{mirrors}"]\n[accessibility]\noffline = true\n'
        )
        self.log = workdir / "olah.out"
        with self.log.open("wb") as out:
            cmd = [str(exe), "--config", str(config), "--log-path", str(workdir / "logs")]
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)

    def wait_ready(self, probe: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", probe)
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"olah did not answer {probe} in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Fault:
    """What the proxy does to the next `times` requests whose path contains `match`.

    kind: "status" answers `status` without asking the mirror; "cut" sends `at` body bytes then drops the
    connection; "stall" sends `at` bytes then hangs until released; "flip" inverts the body byte at `at`.
    """

    match: str
    kind: str
    times: int = 1
    status: int = 503
    at: int = 0
    method: str = "GET"


@dataclass
class Record:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0


class FaultProxy:
    """A threaded HTTP proxy in front of the mirror that injects faults, checks tokens and records requests."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.faults: list[Fault] = []
        self.log: list[Record] = []
        self.require_token: str | None = None
        self.extra_tree_entries: list[dict] = []
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self.server.daemon_threads = True
        self.server.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.faults, self.log, self.require_token, self.extra_tree_entries = [], [], None, []
        self.stalled.clear()
        self.release.set()
        self.release = threading.Event()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.match in path:
                    fault.times -= 1
                    return fault
        return None

    def requests(self, match: str, method: str = "GET") -> list[Record]:
        with self.lock:
            return [r for r in self.log if r.method == method and match in r.path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        record = Record(method, self.path, self.headers.get("Range"), 0)
        with proxy.lock:
            proxy.log.append(record)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if proxy.require_token and self.headers.get("Authorization") != f"Bearer {proxy.require_token}":
            return self._reply(record, 401, json.dumps({"error": "Invalid or missing token"}).encode())
        fault = proxy.take_fault(method, self.path)
        if fault and fault.kind == "status":
            return self._reply(record, fault.status, b"busy")
        status, headers, data = self._forward(proxy, method, body)
        if "/tree/" in self.path and status == 200 and proxy.extra_tree_entries:
            data = json.dumps(json.loads(data) + proxy.extra_tree_entries).encode()
        if fault and fault.kind == "flip":
            data = bytearray(data)
            data[fault.at] ^= 0xFF
        record.status = status
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(name, value)
        length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
        self.send_header("Content-Length", length if method == "HEAD" else str(len(data)))
        self.end_headers()
        if fault and fault.kind in ("cut", "stall"):
            self._send(record, data[: fault.at])
            if fault.kind == "stall":
                proxy.stalled.set()
                proxy.release.wait(60)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(record, data)

    def _forward(self, proxy: FaultProxy, method: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
        # The client's Host header is kept, so that redirects built from it (olah sends some) come back here.
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn.request(method, self.path, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, response.getheaders(), data

    def _reply(self, record: Record, status: int, data: bytes) -> None:
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self._send(record, data)

    def _send(self, record: Record, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
            record.sent += len(data)
        except OSError:
            self.close_connection = True
