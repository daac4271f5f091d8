"""Where model repos come from: the Hugging Face Hub, or local git mirrors of it.

A hub answers two questions: which commit does a ref point at now (`resolve`), and
what files does that commit hold (`fetch`). Everything after `resolve` uses the sha,
so a run is reproducible even if the branch moves under it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from resources.errors import ModelpubError

SHA_LEN = 40


class HubError(ModelpubError):
    """The hub could not answer; `transient` says whether a retry may help."""


class Hub(ABC):
    @abstractmethod
    def resolve(self, repo_id: str, ref: str) -> str:
        """The commit sha that `ref` points at now."""

    @abstractmethod
    def fetch(self, repo_id: str, sha: str, dest: Path) -> None:
        """Write the files of `repo_id` at `sha` into the empty directory `dest`."""

    def snapshot(self, repo_id: str, sha: str, cache_dir: Path) -> Path:
        """A local copy of the repo at `sha`, fetched once and then reused."""
        if len(sha) != SHA_LEN:
            raise HubError(f"{repo_id}: {sha!r} is not a full commit sha")
        final = cache_dir / "snapshots" / repo_id / sha
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".fetch-"))
        try:
            self.fetch(repo_id, sha, tmp)
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # else another run fetched the same sha first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


class GitMirrorHub(Hub):
    """Local git clones of Hub repos at `<root>/<repo_id>`, as air-gapped sites keep them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _repo(self, repo_id: str) -> Path:
        path = self.root / repo_id
        if not (path / ".git").exists() and not (path / "HEAD").exists():
            raise HubError(f"{repo_id}: no git mirror at {path}; clone the repo there first")
        return path

    def _git(self, repo_id: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(self._repo(repo_id)), *args], capture_output=True, check=False
        )

    def resolve(self, repo_id: str, ref: str) -> str:
        done = self._git(repo_id, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        if done.returncode != 0:
            raise HubError(f"{repo_id}: revision {ref!r} not found in the mirror at {self.root}")
        return done.stdout.decode().strip()

    def fetch(self, repo_id: str, sha: str, dest: Path) -> None:
        """`git archive` streamed into `dest`: a pipe's worth of memory, not the commit's."""
        cmd = ["git", "-C", str(self._repo(repo_id)), "archive", "--format=tar", sha]
        with (
            tempfile.TemporaryFile() as err,
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err) as proc,
        ):
            try:
                with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                    tar.extractall(dest, filter="data")
            except tarfile.ReadError:
                if proc.wait() == 0:
                    raise
            if proc.wait() != 0:
                err.seek(0)
                message = err.read().decode().strip()
                raise HubError(f"{repo_id}: cannot read commit {sha}: {message}")


class HuggingFaceHub(Hub):
    """The Hugging Face Hub (or anything that speaks its API), through huggingface_hub."""

    def __init__(
        self, endpoint: str | None = None, token: str | None = None, timeout_s: float | None = None
    ):
        self.endpoint = endpoint or None
        self.token = token or None
        self.timeout_s = timeout_s  # for `resolve`; None: huggingface_hub's default

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    def resolve(self, repo_id: str, ref: str) -> str:
        import httpx2
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = self.endpoint or "the Hugging Face Hub"
        try:
            return self._api().model_info(repo_id, revision=ref, timeout=self.timeout_s).sha
        except RevisionNotFoundError:
            raise HubError(f"{repo_id}: revision {ref!r} not found on {where}") from None
        except GatedRepoError:
            raise HubError(
                f"{repo_id}: gated on {where}; set HF_TOKEN to a token with access"
            ) from None
        except RepositoryNotFoundError:
            raise HubError(
                f"{repo_id}: repository not found on {where} (or private: set HF_TOKEN)"
            ) from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 500
            raise HubError(
                f"{repo_id}: {where} answered {exc}", transient=status >= 500 or status == 429
            ) from None
        except (OSError, httpx2.TransportError) as exc:
            raise HubError(f"{repo_id}: cannot reach {where}: {exc}", transient=True) from None

    def fetch(self, repo_id: str, sha: str, dest: Path) -> None:
        import httpx2
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(
                repo_id, revision=sha, local_dir=dest, endpoint=self.endpoint, token=self.token
            )
        except (OSError, httpx2.TransportError) as exc:
            raise HubError(f"{repo_id}@{sha}: download failed: {exc}", transient=True) from None
        shutil.rmtree(dest / ".cache", ignore_errors=True)


def make_hub(
    kind: str, root: str | None = None, endpoint: str | None = None, token: str | None = None
) -> Hub:
    if kind == "git_mirror":
        return GitMirrorHub(root or ".")
    if kind == "huggingface":
        return HuggingFaceHub(endpoint=endpoint, token=token)
    raise ValueError(f"unknown hub kind {kind!r}")
