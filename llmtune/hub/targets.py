"""Where downloaded files go: the huggingface_hub cache layout, or a plain directory (--local-dir)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from llmtune.hub.files import RemoteFile, safe_join


class CacheTarget:
    """The huggingface_hub cache layout: blobs/<etag>, snapshots/<commit>/<path> -> blob, refs/<revision>.

    transformers, datasets and `snapshot_download(local_files_only=True)` find files placed here.
    """

    def __init__(self, cache_dir: Path, repo_id: str, repo_type: str, commit: str) -> None:
        from huggingface_hub.file_download import repo_folder_name

        self.storage = Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
        self.root = self.storage / "snapshots" / commit
        self.commit = commit

    def path_of(self, remote: RemoteFile) -> Path:
        return safe_join(self.root, remote.path)

    def blob(self, etag: str) -> Path:
        return self.storage / "blobs" / etag

    def partial(self, etag: str) -> Path:
        return self.storage / "blobs" / f"{etag}.incomplete"

    def reusable(self, etag: str) -> Path | None:
        blob = self.blob(etag)
        return blob if blob.is_file() else None

    def discard(self, path: Path) -> None:
        """Remove a bad file; a bad snapshot link takes its blob with it."""
        if path.is_symlink() and path.resolve().is_relative_to(self.storage.resolve()):
            path.resolve().unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def place(self, files: Sequence[RemoteFile], content: Path) -> None:
        blob = self.blob(files[0].etag)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if content != blob:
            os.replace(content, blob)
        for remote in files:
            link = self.path_of(remote)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            try:
                link.symlink_to(os.path.relpath(blob, link.parent))
            except OSError:
                shutil.copyfile(blob, link)

    def finish(self, revision: str) -> None:
        if revision != self.commit:
            ref = safe_join(self.storage / "refs", revision)
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(self.commit)


class LocalDirTarget:
    """A plain directory holding the repo's files; partial files wait in <dir>/.cache/llmtune/."""

    def __init__(self, local_dir: Path) -> None:
        self.root = Path(local_dir)
        self.parts = self.root / ".cache" / "llmtune"

    def path_of(self, remote: RemoteFile) -> Path:
        return safe_join(self.root, remote.path)

    def partial(self, etag: str) -> Path:
        return self.parts / f"{etag}.incomplete"

    def reusable(self, etag: str) -> Path | None:
        return None

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def place(self, files: Sequence[RemoteFile], content: Path) -> None:
        for i, remote in enumerate(files):
            dest = self.path_of(remote)
            if dest == content:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if i == len(files) - 1 and content.is_relative_to(self.parts):
                os.replace(content, dest)
            else:
                shutil.copyfile(content, dest)

    def finish(self, revision: str) -> None:
        for folder in (self.parts, self.parts.parent):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
