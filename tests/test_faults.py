"""Fault injection: the drills of issue 16, run as a hostile user would, through the ``ddrom`` command.

Every drill starts from a copy of one reference run (HF training and test sweeps, ROM,
online results with reconstructed fields, 2 ranks) and asserts the exit code, the
message, a bounded time, and that no good file was damaged:

* ``kill -9`` of one rank during ``ddrom hf``, ``offline`` and ``online``, then the same
  command again: it resumes (hf) or recomputes, and the result is the reference's
  (the same bits: the same inputs on the same number of ranks);
* concurrent writers: a second ``ddrom hf`` (and an ``online``) while one runs exits 2 at
  once naming the holder, the first finishes, its store is sound;
* flipped bytes in the store and in the ROM file: ``offline`` / ``online`` exit 2 naming
  the dataset, nothing new is written from corrupt data, ``ddrom verify`` exits 2;
* a full disk (a tmpfs, root only; skipped otherwise) during ``offline`` and ``online``
  (``hf``: tests/test_disk_full.py): exit 2 on every rank, the words "No space left on
  device" and the file, no crash, no temporary left, the previous outputs intact.

They start their own ``mpirun`` (skipped inside an MPI run of the suite) and are marked
``slow``: together about a minute on a quiet 2-core machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from helpers import PLATE_CASE, clean_mpi_env, flip_byte

pytestmark = pytest.mark.slow

DDROM = str(Path(sys.executable).parent / "ddrom")
NP = 2
#: Wall-clock bound of a command refused at once (a lock held, corrupt input): Python,
#: PETSc and MPI start-up on a loaded 2-core machine, not the work.
REFUSAL_SECONDS = 60



def _skip_inside_mpi() -> None:
    if MPI.COMM_WORLD.size != 1:
        pytest.skip("starts its own mpirun")


def _cmd(*args: str, np_: int = NP) -> list[str]:
    return ["mpirun", "-n", str(np_), "--oversubscribe", DDROM, *args]


def run(folder: Path, *args: str, np_: int = NP, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run(_cmd(*args, np_=np_), cwd=folder, env=clean_mpi_env(), capture_output=True, text=True,
                       timeout=timeout)
    return r, time.perf_counter() - t0


def out(folder: Path) -> Path:
    return folder / "out" / "faults"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content(path: Path, datasets_only: bool = False) -> dict:
    """Every dataset's bytes (and attributes but provenance, version and timestamps) of an
    HDF5 file, as digests: equal for the same computation whatever the file layout."""
    import h5py

    skip = {"provenance", "ddrom_version", "created", "ddrom_attrs_sha256"}
    found = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not datasets_only:
                for k, v in obj.attrs.items():
                    if k not in skip and not k.startswith("meta_hf_seconds"):
                        found[f"{name}@{k}"] = repr(v)
            if isinstance(obj, h5py.Dataset):
                found[name] = hashlib.sha256(np.ascontiguousarray(obj[()]).tobytes()).hexdigest()
        f.visititems(visit)
    return found


def ranks_of(mpirun_pid: int) -> dict[int, int]:
    """MPI rank -> pid of the processes mpirun started (its children)."""
    found = {}
    for child in Path(f"/proc/{mpirun_pid}/task/{mpirun_pid}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                found[int(item.split(b"=", 1)[1])] = int(child)
    return found


def kill_rank_when(folder: Path, args: tuple[str, ...], marker: str, rank: int, timeout: float = 240
                   ) -> tuple[int, str]:
    """Run ``ddrom ARGS`` and, once a line containing ``marker`` is printed, freeze every rank
    (SIGSTOP: the run is caught where it is), ``kill -9`` rank ``rank`` and let the others
    go (mpirun then stops the job). Returns (mpirun's exit status, its output)."""
    p = subprocess.Popen(_cmd(*args), cwd=folder, env=clean_mpi_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lines, killed = [], False
    t0 = time.perf_counter()
    try:
        for line in p.stdout:
            lines.append(line)
            if not killed and marker in line:
                ranks = ranks_of(p.pid)
                assert rank in ranks, (ranks, "".join(lines))
                for pid in ranks.values():
                    os.kill(pid, signal.SIGSTOP)
                os.kill(ranks[rank], signal.SIGKILL)
                for r, pid in ranks.items():
                    if r != rank:
                        try:
                            os.kill(pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass
                killed = True
            assert time.perf_counter() - t0 < timeout, "".join(lines)
        rc = p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
    text = "".join(lines)
    assert killed, f"the marker {marker!r} never appeared:\n{text[-3000:]}"
    return rc, text


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The reference run: HF training and test stores, ROM file, online result and fields."""
    _skip_inside_mpi()
    folder = tmp_path_factory.mktemp("faults_reference")
    (folder / "case.toml").write_text(PLATE_CASE)
    for args in (("hf", "case.toml", "--which", "all", "--quiet"), ("offline", "case.toml", "--quiet"),
                 ("online", "case.toml", "--fields", "--quiet")):
        r, _ = run(folder, *args)
        assert r.returncode == 0, (args, r.stderr[-3000:])
    names = sorted(p.name for p in out(folder).iterdir())
    for want in ("hf_training.h5", "hf_test.h5", "rom.h5", "online_test_000.h5", "online_test_000.json",
                 "rom_fields.h5"):
        assert want in names, names
    return folder


@pytest.fixture
def copy(reference, tmp_path) -> Path:
    """A fresh copy of the reference run."""
    dst = tmp_path / "run"
    shutil.copytree(reference, dst, ignore=shutil.ignore_patterns(".ddrom.lock*"))
    return dst


def no_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or ".tmp" in p.name)


# ------------------------------------------------------------------------ kill -9
def test_kill_a_rank_during_hf_then_resume(copy, reference):
    store = out(copy) / "hf_training.h5"
    store.unlink()
    rc, text = kill_rank_when(copy, ("hf", "case.toml"), "train_000 {", rank=1)
    assert rc != 0, text[-2000:]
    assert not store.exists() and Path(f"{store}.partial").exists()     # nothing incomplete at the final path
    r, secs = run(copy, "hf", "case.toml", "--json", "-", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)["sets"]["training"]
    assert s["complete"] and s["resumed_skipped"] >= 1 and s["computed"] + s["resumed_skipped"] == 4, s
    # the resumed store holds the reference's simulations, bit for bit
    ref = content(out(reference) / "hf_training.h5", datasets_only=True)
    assert content(store, datasets_only=True) == ref
    assert run(copy, "verify", str(store), "--quiet")[0].returncode == 0


def test_kill_rank_0_while_writing_the_rom_file(copy, reference):
    rom = out(copy) / "rom.h5"
    before = sha(rom)
    rc, text = kill_rank_when(copy, ("offline", "case.toml"), "[offline] write_rom", rank=0)
    assert rc != 0, text[-2000:]
    # the final path holds the previous ROM file or a complete new one, never a partial one
    assert sha(rom) == before or content(rom) == content(out(reference) / "rom.h5")
    r, _ = run(copy, "offline", "case.toml", "--quiet")        # the lock of the killed run is taken over
    assert r.returncode == 0, r.stderr[-3000:]
    assert content(rom) == content(out(reference) / "rom.h5")   # the same bits as the reference
    assert no_temporaries(out(copy)) == []                      # the leftover .partial was replaced


def test_kill_a_rank_during_online_then_rerun(copy, reference):
    o = out(copy)
    json_before, fields_before = sha(o / "online_test_000.json"), sha(o / "rom_fields.h5")
    rc, text = kill_rank_when(copy, ("online", "case.toml", "--fields"), "ROM test_000", rank=1)
    assert rc != 0, text[-2000:]
    # each output is the previous file or a complete new one
    assert sha(o / "online_test_000.json") == json_before or json.loads((o / "online_test_000.json").read_text())
    if sha(o / "rom_fields.h5") != fields_before:
        assert content(o / "rom_fields.h5", True) == content(out(reference) / "rom_fields.h5", True)
    r, _ = run(copy, "online", "case.toml", "--fields", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("online_test_000.h5", "rom_fields.h5"):
        assert content(o / name, True) == content(out(reference) / name, True), name
    # the next writer of the folder removes what the killed run left (private temporaries)
    r, _ = run(copy, "calibrate", "case.toml", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert no_temporaries(o) == []


# -------------------------------------------------------------- concurrent writers
def test_second_writer_exits_at_once_naming_the_holder(copy, reference):
    lock = out(copy) / ".ddrom.lock"

    def start_holder():
        a = subprocess.Popen(_cmd("hf", "case.toml", "--which", "all", "--restart", "--quiet"), cwd=copy,
                             env=clean_mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.perf_counter()
        while not (lock.exists() and lock.read_text().strip()):
            assert a.poll() is None and time.perf_counter() - t0 < 120, a.communicate()[1][-2000:]
            time.sleep(0.05)
        return a, json.loads(lock.read_text())

    a = None
    try:
        for args in (("hf", "case.toml", "--quiet"), ("online", "case.toml", "--quiet")):
            for _ in range(3):
                if a is None or a.poll() is not None:
                    if a is not None:
                        assert a.wait() == 0, a.communicate()[1][-3000:]
                    a, holder = start_holder()
                r, secs = run(copy, *args)
                if r.returncode == 0 and a.poll() is not None:
                    continue        # the holder had finished first (a small case): no conflict, retry
                break
            else:
                pytest.fail(f"the holder kept finishing before `ddrom {args[0]}` started (3 tries)")
            assert r.returncode == 2 and secs < REFUSAL_SECONDS, (args, r.returncode, secs, r.stderr[-2000:])
            line = f"ddrom {args[0]}: error: output folder {out(copy)} is in use by 'ddrom hf case.toml --which all"
            assert r.stderr.count(line) == 1 and f"(pid {holder['pid']} on host" in r.stderr, r.stderr[-2000:]
        assert a.wait(300) == 0, a.communicate()[1][-3000:]
    finally:
        if a is not None and a.poll() is None:
            a.kill()
    for name in ("hf_training.h5", "hf_test.h5"):
        assert run(copy, "verify", str(out(copy) / name), "--quiet")[0].returncode == 0
        assert content(out(copy) / name, True) == content(out(reference) / name, True), name
    assert lock.read_text() == ""                               # released


# --------------------------------------------------------------------- flipped bytes
def test_flipped_byte_in_the_rom_file_is_refused_by_online(copy):
    o = out(copy)
    before = {n: sha(o / n) for n in ("online_test_000.json", "online_test_000.h5")}
    flip_byte(str(o / "rom.h5"), "/online/E", (0, 0, 0))
    r, secs = run(copy, "online", "case.toml", "--quiet")
    assert r.returncode == 2 and secs < REFUSAL_SECONDS, (r.returncode, r.stderr[-2000:])
    assert r.stderr.count(f"ddrom online: error: ROM file {o / 'rom.h5'}: dataset /online/E is corrupt "
                          "(Fletcher32 checksum mismatch)") == 1, r.stderr[-2000:]
    assert {n: sha(o / n) for n in before} == before            # nothing written from corrupt data
    v, _ = run(copy, "verify", str(o / "rom.h5"), "--quiet", np_=1)
    assert v.returncode == 2 and "/online/E is corrupt" in v.stderr


def test_flipped_byte_in_the_store_is_refused_by_offline(copy):
    o = out(copy)
    rom_before = sha(o / "rom.h5")
    flip_byte(str(o / "hf_training.h5"), "/simulations/train_002/stress", (3, 0, 0, 0))
    r, secs = run(copy, "offline", "case.toml", "--quiet")
    assert r.returncode == 2 and secs < REFUSAL_SECONDS, (r.returncode, r.stderr[-2000:])
    assert "dataset /simulations/train_002/stress is corrupt (Fletcher32 checksum mismatch)" in r.stderr
    assert r.stderr.count("ddrom offline: error:") == 1 and "Traceback" not in r.stderr
    assert sha(o / "rom.h5") == rom_before and no_temporaries(o) == []


# ------------------------------------------------------------------------ full disk
@pytest.fixture
def tmpfs(tmp_path):
    """A 24 MB tmpfs (root only; skipped otherwise), unmounted afterwards."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int) -> None:
    """Leave ``leave`` bytes free on the file system of ``folder``."""
    free = shutil.disk_usage(folder).free
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, max(0, free - leave))
    finally:
        os.close(fd)


def _full_disk_drill(reference: Path, tmpfs: Path, args: tuple[str, ...], leave: int, *words: str,
                     rewritten: tuple[str, ...] = ()) -> None:
    """``rewritten``: outputs the command legitimately writes anew before it meets the full
    disk (complete files; their content may differ, e.g. timings): checked to be readable."""
    run_dir = tmpfs / "run"
    shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns(".ddrom.lock*", "rom_fields.h5",
                                                                      "rom_fields.xdmf"))
    before = {p.name: sha(p) for p in out(run_dir).iterdir() if p.is_file()}
    fill(tmpfs, leave)
    r, secs = run(run_dir, *args)
    assert r.returncode == 2 and secs < REFUSAL_SECONDS, (r.returncode, secs, r.stderr[-3000:])
    first = [ln for ln in r.stderr.splitlines() if ln.startswith(f"ddrom {args[0]}: error:")]
    assert len(first) == 1 and all(w in first[0] for w in words), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Segmentation" not in r.stderr and "signal" not in r.stderr.lower()
    for name in rewritten:
        json.loads((out(run_dir) / name).read_text())          # complete, not half-written
        before.pop(name)
    after = {p.name: sha(p) for p in out(run_dir).iterdir()
             if p.is_file() and not p.name.startswith(".ddrom") and p.name not in rewritten}
    assert after == {k: v for k, v in before.items() if k in after} and set(before) <= set(after), \
        (sorted(set(after) ^ set(before)))                       # previous outputs intact, nothing new
    assert no_temporaries(out(run_dir)) == []


def test_full_disk_refused_before_offline(reference, tmpfs):
    """The early refusal: the ROM file's estimate does not fit in what is free."""
    _full_disk_drill(reference, tmpfs, ("offline", "case.toml", "--quiet"), 256 << 10,
                     "offline stage: refused before allocating anything", "of disk in", "KiB is free")


def test_full_disk_while_writing_the_rom_file(reference, tmpfs):
    """Past the estimate (--ignore-resources): the ROM file's space is reserved before it is
    written, the refusal names the file; the previous rom.h5 is intact (the new one would
    have replaced it only once complete); no PETSc SEGV (exit 59 before)."""
    _full_disk_drill(reference, tmpfs, ("offline", "case.toml", "--quiet", "--ignore-resources"), 256 << 10,
                     "ROM file", "No space left on device", "MiB free")


def test_full_disk_during_online(reference, tmpfs):
    _full_disk_drill(reference, tmpfs, ("online", "case.toml", "--quiet"), 12 << 10,
                     "online result", "online_test_000.h5: No space left on device")


def test_full_disk_during_calibrate(reference, tmpfs):
    """The calibration is recorded in a copy of rom.h5 renamed over it: on a full disk the
    copy fails, is removed, and rom.h5 is the previous file, bit for bit."""
    _full_disk_drill(reference, tmpfs, ("calibrate", "case.toml", "--quiet"), 384 << 10,
                     "cannot record the indicator calibration", "No space left on device",
                     rewritten=("online_test_000.json",))      # its plain ROM run's summary (timings)


def test_full_disk_during_report(reference, tmpfs):
    _full_disk_drill(reference, tmpfs, ("report", "out/faults", "--quiet"), 8 << 10,
                     "ddrom report", "No space left on device")
