"""What the package tests share (test_package.py, test_guide.py): the wheel
and the .deb built from a copy of this checkout with the usual tools, and
clean Debian containers of the fault suite's base image (harness/docker.py)
to install them in. The build itself is the session fixture `built` in
testsuite/integration/conftest.py, made once for both."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import docker as de

ROOT = Path(__file__).resolve().parents[1]
# Not part of a build: VCS data, caches, earlier build output.
NOT_SOURCE = {".git", ".venv", "out", "local-cluster", "__pycache__", ".pytest_cache", ".mypy_cache",
              "build", "dist"}
DEB_OUTPUT = {"pgha", ".debhelper", "files", "debhelper-build-stamp"}   # in debian/, from a build there


def source_copy(dest):
    """The checkout's files, copied where a build may write (dpkg-buildpackage
    puts the .deb beside the source folder)."""
    def ignore(folder, names):
        skip = {n for n in names if n in NOT_SOURCE or n.endswith((".pyc", ".egg-info"))}
        if Path(folder) == ROOT / "debian":
            skip |= {n for n in names if n in DEB_OUTPUT or n.endswith((".substvars", ".debhelper.log"))}
        return skip
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def run(cmd, cwd=None, timeout=300, env=None):
    """A build or install step; its output is in the failure's message."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def need(*commands):
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing (bin/setup installs them)")


def build(work):
    """(wheel, .deb) built from a copy of the checkout in the folder `work`."""
    need("dpkg-buildpackage", "dh", "dh_python3")
    src = source_copy(work / "pgha")
    # The wheel: the pyproject.toml build, with Debian's setuptools and wheel (no PyPI).
    run(["/usr/bin/python3", "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work), "."], cwd=src)
    # The .deb: its Build-Depends checked without build-essential (no compiler
    # is needed for an Architecture: all package), then built.
    run(["dpkg-checkbuilddeps", "-I"], cwd=src)
    run(["dpkg-buildpackage", "-us", "-uc", "-b", "-d"], cwd=src)
    wheels, debs = list(work.glob("pgha-*.whl")), list(work.glob("pgha_*_all.deb"))
    assert len(wheels) == 1 and len(debs) == 1, sorted(p.name for p in work.iterdir())
    return wheels[0], debs[0]


def docker_ready(label):
    """dockerd answering and the base image present (skip without docker)."""
    if not de.have_docker():
        pytest.skip("docker is not installed (bin/setup installs docker.io)")
    de.ensure_dockerd()
    if not de.image_exists(de.BASE_IMAGE):
        with de.exclusive(log=lambda m: print(f"\n[{label}] {m}", flush=True)):
            de.ensure_base_image()


class Container:
    """One clean Debian container; sh() runs a shell script in it as root."""

    def __init__(self, name):
        self.name = name

    def sh(self, script, check=True, timeout=120, user=None):
        cmd = ["docker", "exec"] + (["-u", user] if user else []) + [self.name, "sh", "-c", script]
        proc = de.run(cmd, check=False, timeout=timeout)
        assert not check or proc.returncode == 0, f"in {self.name}: `{script}` exited {proc.returncode}:\n" \
                                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def wait_for(self, script, timeout=30):
        """Wait until `script` exits 0; return its output."""
        deadline = time.monotonic() + timeout
        while True:
            proc = de.run(["docker", "exec", self.name, "sh", "-c", script], check=False, timeout=30)
            if proc.returncode == 0:
                return proc.stdout
            if time.monotonic() >= deadline:
                pytest.fail(f"in {self.name}: `{script}` did not succeed within {timeout} s: "
                            f"{proc.stdout[-2000:]} {proc.stderr[-2000:]}")
            time.sleep(0.2)


def start_container(name, hostname, deb, options=()):
    """A container of the base image (removed first if left over), running
    nothing but an init and a sleep, with the .deb copied into /root."""
    de.run(["docker", "rm", "-f", name], check=False, timeout=60)
    de.run(["docker", "run", "-d", "--init", "--name", name, "--hostname", hostname, *options, de.BASE_IMAGE,
            "sleep", "infinity"], timeout=120)
    de.run(["docker", "cp", str(deb), f"{name}:/root/"], timeout=60)
    return Container(name)


def remove_container(name):
    de.run(["docker", "rm", "-f", name], check=False, timeout=60)


def unique(prefix):
    return f"{prefix}-{os.getpid()}"
