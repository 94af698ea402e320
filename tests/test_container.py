"""The container image (docker/): built with podman and run for real.

One build per test session (session fixture), through docker/build.sh: the Debian base
image is made locally with debootstrap when ``debian:bookworm-slim`` is not present (no
registry needed), then the ddrom image with ``podman build --pull=never``. Later sessions
reuse the base image and the build cache (a rebuild with unchanged sources takes seconds).

podman, runc and debootstrap are installed when missing (root with apt only). Where every
container fails setting rlimits (as on some VMs), /etc/containers/containers.conf is
written with ``default_ulimits = []`` and ``runtime = "runc"`` -- only when that file does
not exist yet; an existing one is never edited (the test skips and says what to add).
Skipped, with the reason, only where podman cannot run.

Not mpi-marked: it runs once, in the 1-rank stage; MPI runs inside the container.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[1]
IMAGE = "localhost/ddrom:test"
BASE = "docker.io/library/debian:bookworm-slim"
CONTAINERS_CONF = Path("/etc/containers/containers.conf")


def _run(*cmd: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _tail(r: subprocess.CompletedProcess, n: int = 1500) -> str:
    return (r.stdout + r.stderr)[-n:]


def test_dockerfile_has_the_install_sh_packages():
    """The image has the HPC stack of the native install: every Debian package of scripts/install.sh."""
    install = (REPO / "scripts" / "install.sh").read_text()
    native = set(re.search(r'DEB_PKGS="([^"]*)"', install).group(1).replace("\\\n", " ").split())
    docker = (REPO / "docker" / "Dockerfile").read_text()
    block = re.search(r"apt-get install[^\n]*\\\n((?:.*\\\n)+)", docker).group(1)
    image = {w for w in block.replace("\\", " ").split() if not w.startswith(("&", "rm", "/"))}
    assert native and native <= image, sorted(native - image)


def _install_podman_or_skip() -> None:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None
               and not Path("/usr/sbin", t).exists()]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{', '.join(missing)} not installed, and not root with apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "podman", "runc", "debootstrap"]
    r = _run(*cmd, env=env, timeout=900)
    if r.returncode != 0:
        _run("apt-get", "update", "-q", env=env)
        r = _run(*cmd, env=env, timeout=900)
    if r.returncode != 0:
        pytest.skip(f"could not install podman with apt-get: {_tail(r, 500)}")


def _podman_runs() -> subprocess.CompletedProcess:
    return _run("podman", "run", "--rm", "--pull=never", BASE, "true", timeout=120)


@pytest.fixture(scope="session")
def image():
    _install_podman_or_skip()
    t0 = time.monotonic()
    r = _run(str(REPO / "docker" / "build.sh"), "--base-only", timeout=1200)
    if r.returncode != 0:
        pytest.skip(f"no base image {BASE} and it could not be made here: {_tail(r, 800)}")
    t_base = time.monotonic() - t0
    r = _podman_runs()
    if r.returncode != 0 and "rlimit" in r.stderr:
        if CONTAINERS_CONF.exists() or os.geteuid() != 0:
            pytest.skip(f"podman cannot start containers (rlimits): add `[containers] default_ulimits = []` "
                        f"to {CONTAINERS_CONF}: {r.stderr[-300:]}")
        CONTAINERS_CONF.parent.mkdir(parents=True, exist_ok=True)
        CONTAINERS_CONF.write_text("# written by ddrom tests/test_container.py: without it every container "
                                   "fails setting rlimits here\n[containers]\ndefault_ulimits = []\n\n"
                                   "[engine]\nruntime = \"runc\"\n")
        print(f"\nwrote {CONTAINERS_CONF} (default_ulimits = [], runtime = runc)")
        r = _podman_runs()
    if r.returncode != 0:
        pytest.skip(f"podman cannot run a container here: {_tail(r, 500)}")
    t1 = time.monotonic()
    r = _run(str(REPO / "docker" / "build.sh"), env=dict(os.environ, IMAGE=IMAGE), timeout=1800)
    assert r.returncode == 0, f"image build failed:\n{_tail(r, 4000)}"
    print(f"\nbase image {t_base:.1f} s, ddrom image build {time.monotonic() - t1:.1f} s")
    return IMAGE


def test_image_runs_ddrom_info(image):
    """Default command = ddrom info, as a non-root user, with the parallel stack; no CA bundle left in it."""
    r = _run("podman", "run", "--rm", image, timeout=120)
    assert r.returncode == 0, _tail(r)
    assert re.search(r"h5py_parallel\s+True", r.stdout) and re.search(r"petsc\s+3\.", r.stdout), r.stdout
    r = _run("podman", "run", "--rm", image, "sh", "-c",
             "id -u; ls /run/secrets 2>/dev/null; env | grep -c PIP_CERT; ddrom info --json -", timeout=120)
    lines = r.stdout.splitlines()
    assert lines[0] != "0", "the image runs as root by default"
    assert lines[1] == "0", f"a build secret or PIP_CERT left in the image: {r.stdout}"
    info = json.loads("\n".join(lines[2:]))
    assert info["h5py_parallel"] is True and info["ranks"] == 1


def test_image_runs_tiny_case_on_2_ranks(image, tmp_path):
    """`mpirun -n 2 ddrom run /cases/tiny.toml` inside the image, outputs bind-mounted to the host."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)          # the image's user (uid 1000) writes there
    t0 = time.monotonic()
    r = _run("podman", "run", "--rm", "-v", f"{out}:/cases/out", image,
             "mpirun", "-n", "2", "ddrom", "run", "/cases/tiny.toml", "--quiet", timeout=300)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, _tail(r, 4000)
    print(f"\ntiny case, 2 ranks in the container: {elapsed:.1f} s")

    import h5py

    s = json.loads((out / "tiny" / "summary.json").read_text())
    assert s["ranks"] == 2 and s["mesh"]["ranks"] == 2
    assert s["n_modes"] >= 1 and s["rel_error_displacement"] < 1e-8 and s["rel_error_stress"] < 1e-8
    for f in ("hf_training.h5", "hf_test.h5", "rom.h5"):
        assert h5py.is_hdf5(out / "tiny" / f), f
    assert (out / "tiny" / "online_test_000.h5").stat().st_size > 0
