"""The Dockerfile built and run without a Docker engine: Debian's buildah, daemonless.

No registry image can be pulled here, so the base standing in for `python:3.11-slim` is made
with debootstrap from Debian's own packages (Python 3.11, venv, CA certificates) and kept in
buildah's local storage, so later runs on the same machine reuse it. The Dockerfile is then
built exactly as `docker build` builds it; only `PYTHON_IMAGE` differs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from harness.broker_process import REPO
from tests.fakes.redis_server import require_binary

BASE_IMAGE = "localhost/videodb-token-broker-base:bookworm-py311"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
# The package index is reached through a proxy whose certificate authority is in the host's
# bundle: the base gets that bundle, and pip in the base is told to use it.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def buildah(*args: str, timeout: float = 900, stdin: str | None = None) -> str:
    """Run buildah; its stdout, or an AssertionError with what it printed."""
    result = subprocess.run(
        [require_binary("buildah"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"buildah {args[0]} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def ensure_base_image() -> str:
    """The Debian base, made once per machine (debootstrap takes about a minute)."""
    if buildah("images", "--quiet", "--filter", f"reference={BASE_IMAGE}").strip():
        return BASE_IMAGE
    debootstrap = require_binary("debootstrap")
    work = Path(tempfile.mkdtemp(prefix="broker-base-"))
    try:
        rootfs = work / "rootfs"
        subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        shutil.copy(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        (rootfs / "etc/pip.conf").write_text(f"[global]\ncert = {HOST_CA_BUNDLE}\n")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
        archive = work / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        container = buildah("from", "--quiet", "scratch").strip()
        try:
            buildah("add", "--quiet", container, str(archive), "/")
            buildah("config", "--env", "LANG=C.UTF-8", "--cmd", "python3", container)
            buildah("commit", "--quiet", container, BASE_IMAGE)
        finally:
            buildah("rm", container)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BASE_IMAGE


def build_image(context: Path, tag: str) -> None:
    """`docker build -t tag --build-arg PYTHON_IMAGE=<base> context`, with buildah.

    `--format docker`: the Docker image format, docker's own, which keeps HEALTHCHECK
    (the OCI format has no place for it)."""
    buildah(
        "build",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--build-arg",
        f"PYTHON_IMAGE={ensure_base_image()}",
        "--tag",
        tag,
        str(context),
    )


def image_config(tag: str) -> dict[str, Any]:
    """What `docker inspect` shows of the image: its Docker-format config and history."""
    inspected: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", tag))
    docker: dict[str, Any] = inspected["Docker"]
    return docker


def build_context(destination: Path) -> Path:
    """The files a user's clone holds (tracked by git), copied as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def layer_archives(tag: str, destination: Path) -> list[Path]:
    """Every layer of the image as a tar file (`buildah push` to a directory)."""
    buildah("push", "--quiet", tag, f"dir:{destination}")
    manifest = json.loads((destination / "manifest.json").read_text())
    return [destination / layer["digest"].split(":", 1)[1] for layer in manifest["layers"]]


class Container:
    """A working container of the image; `run` starts a command in it as `docker run` would
    (the image's user, working directory and environment), on the host's network."""

    def __init__(self, tag: str) -> None:
        self.name = buildah("from", "--quiet", tag).strip()

    def command(self, argv: list[str], env: dict[str, str], volumes: dict[Path, str]) -> list[str]:
        """The buildah command line that runs `argv` in this container."""
        options = ["--isolation", "chroot"]
        for key, value in env.items():
            options += ["--env", f"{key}={value}"]
        for host, inside in volumes.items():
            options += ["--volume", f"{host}:{inside}:ro"]
        return [require_binary("buildah"), "run", *options, self.name, "--", *argv]

    def run(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        volumes: dict[Path, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` to its end."""
        return subprocess.run(
            self.command(argv, env or {}, volumes or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def remove(self) -> None:
        buildah("rm", self.name)


def containerised_process(launcher_pid: int) -> int:
    """The pid of the program `buildah run` started: a signal to buildah itself kills the
    program (SIGKILL), where `docker stop` sends the image's STOPSIGNAL to it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    pending = [launcher_pid]
    while pending:
        pid = pending.pop()
        for child in children.get(pid, []):
            pending.append(child)
            try:
                chrooted = Path(f"/proc/{child}/root").resolve() != Path("/")
                program = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue  # ended meanwhile
            if chrooted and not program.startswith(b"buildah"):  # not buildah's own helper
                found.append(child)
    if not found:
        raise AssertionError("no process of the container was found")
    return min(found)  # the image's program, not what it started
