"""The broker as it was at a git ref, for measuring beside this tree: a temporary worktree
(`git worktree add --detach`), removed again when the measurement ends."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from harness.broker_process import REPO


def checkout(ref: str, into: Path | None = None) -> Path:
    """The repository at `ref` in a new worktree (inside `into`, else a temporary directory)."""
    path = (
        into / ref.replace("/", "_")
        if into is not None
        else Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    )
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(path), ref],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return path


def remove(trees: Iterable[Path]) -> None:
    """Remove these worktrees (what fails to go is left for `git worktree prune`)."""
    for tree in trees:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
