"""Fixtures for the fault suite: docker, the base image, the compose cluster.

pytest-docker brings the compose project up (docker-compose v1: no --wait)
and down; readiness is waited for here: one writable primary, the other node
a streaming synchronous standby, the arbiter agreeing.

Environment:
  PGHA_KEEP_CLUSTER=1      leave the cluster running after the session
  PGHA_COMPOSE_PROJECT     compose project name (default pghafaults)
  PGHA_TEST_CACHE          where the base image tarball is cached
"""
import os
import time

import pytest

from harness import docker as de
from testsuite import helpers

TIMINGS = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: needs docker; brings up the compose cluster")
    config.addinivalue_line("markers", "soak: randomised fault soak")


@pytest.fixture(scope="session")
def docker_prerequisites():
    """dockerd, the base image, the subnet free; and the suite's machine-wide
    lock, held until the session's "down -v" is done (pytest tears this fixture
    down after docker_services, which depends on it)."""
    if not de.have_docker():
        pytest.skip("docker and docker-compose are not installed")
    with de.exclusive(log=lambda m: print(f"\n[faults] {m}", flush=True)):
        TIMINGS["dockerd_start"] = de.ensure_dockerd()
        how, seconds = de.ensure_base_image()
        TIMINGS["base_image"] = (how, seconds)
        de.free_subnet()
        print(f"\n[faults] dockerd start {TIMINGS['dockerd_start']:.1f} s; base image {how} {seconds:.1f} s")
        yield TIMINGS


@pytest.fixture(scope="session")
def docker_compose_command():
    return "docker-compose"     # Debian ships compose v1; "docker compose" (v2) is not there


@pytest.fixture(scope="session")
def docker_compose_file():
    return str(de.COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name():
    return de.PROJECT


@pytest.fixture(scope="session")
def docker_setup(docker_prerequisites):
    # "down -v" first: leftovers of an interrupted run must not carry state over.
    return ["down -v --remove-orphans", "up --build -d"]


@pytest.fixture(scope="session")
def docker_cleanup():
    if os.environ.get("PGHA_KEEP_CLUSTER"):
        return []
    return ["down -v --remove-orphans"]


@pytest.fixture(scope="session")
def cluster(docker_services):
    c = de.suite_cluster()
    wait_ready(c, time.monotonic(), "cluster_ready", "startup", "cluster healthy {:.1f} s after docker-compose up")
    return c


def wait_ready(c, started, timing, log_name, said):
    """Wait for a compose cluster just brought up to be healthy: its logs
    saved as `log_name` if it is not; TIMINGS[timing] the seconds since
    `started` (monotonic), printed through `said`."""
    try:
        c.wait_healthy(timeout=300)
    except AssertionError:
        _save_logs(c, log_name)
        raise
    TIMINGS[timing] = time.monotonic() - started
    print("\n[faults] " + said.format(TIMINGS[timing]))


@pytest.fixture
def healthy_cluster(cluster, request):
    """The cluster healed and healthy before the test; logs saved if it fails."""
    try:
        cluster.heal()
        cluster.wait_healthy(timeout=150)
    except Exception as exc:
        _save_logs(cluster, f"{request.node.name}-before")
        print(f"\n[faults] cluster broken before {request.node.name} ({exc}); restarting the project")
        cluster.restart_project()
        cluster.wait_healthy(timeout=300)
    yield cluster
    if helpers.failed(request.node, unknown=True):
        _save_logs(cluster, request.node.name)


def _save_logs(cluster, name):
    try:
        de_out = de.ROOT / "out" / "faults"
        de_out.mkdir(parents=True, exist_ok=True)
        path = de_out / f"{name}.log"
        path.write_text(cluster.logs(tail=2000))
        print(f"\n[faults] docker-compose logs saved to {path}")
    except Exception as exc:   # never hide the test's own failure
        print(f"\n[faults] could not save logs: {exc}")
