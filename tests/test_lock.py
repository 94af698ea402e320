"""Advisory lock on an output folder (ddrom.io.lock): one writer at a time, the holder named.

The holder is another process (a plain Python started by rank 0, outside MPI); the
collective tests run at 1 and 3 ranks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from mpi4py import MPI

from ddrom.io.lock import LOCK_NAME, acquire, read_holder
from ddrom.parallel import CollectiveError

COMM = MPI.COMM_WORLD

HOLDER = textwrap.dedent("""
    import sys, time
    from mpi4py import MPI
    import ddrom
    from ddrom.io.lock import acquire
    lock = acquire(sys.argv[1], MPI.COMM_SELF, argv=["ddrom", "hf", "case.toml"])
    print("held", flush=True)
    sys.stdin.readline()          # hold until told (or killed)
    lock.release()
""")


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _start_holder(folder):
    """Rank 0 starts a process that holds the lock of ``folder``; returns it (None elsewhere)."""
    proc = None
    if COMM.rank == 0:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=_clean_env())
        assert proc.stdout.readline().strip() == "held"
    COMM.Barrier()
    return proc


@pytest.mark.mpi
def test_second_writer_is_refused_naming_the_holder(shared_tmp):
    folder = shared_tmp / "out"
    proc = _start_holder(folder)
    try:
        with pytest.raises(CollectiveError) as info:
            acquire(folder, COMM)
        msg = str(info.value)
        pid = COMM.bcast(proc.pid if proc else None, root=0)
        assert f"output folder {folder} is in use by 'ddrom hf case.toml' (pid {pid} on host" in msg, msg
        assert info.value.exit_code == 2
    finally:
        if proc is not None:
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.wait(30)
        COMM.Barrier()
    # once the holder has released it, the lock is ours, on every rank
    with acquire(folder, COMM, argv=["ddrom", "offline", "x"]) as lock:
        assert lock.held and lock.previous is None     # released cleanly: nothing stale
        assert lock.holder["argv"] == ["ddrom", "offline", "x"] and lock.holder["ranks"] == COMM.size
        if COMM.rank == 0:
            assert read_holder(folder)["pid"] == os.getpid()
    COMM.Barrier()
    assert read_holder(folder) is None                  # released: the file is empty, not removed
    assert (folder / LOCK_NAME).exists()


@pytest.mark.mpi
def test_lock_of_a_killed_holder_is_taken_over(shared_tmp):
    folder = shared_tmp / "out2"
    proc = _start_holder(folder)
    pid = COMM.bcast(proc.pid if proc else None, root=0)
    if proc is not None:
        proc.kill()                                     # kill -9: no chance to release
        proc.wait(30)
    COMM.Barrier()
    lock = acquire(folder, COMM)
    try:
        assert lock.previous is not None and lock.previous["pid"] == pid
        assert lock.previous["argv"] == ["ddrom", "hf", "case.toml"]
    finally:
        lock.release()


def test_lock_file_left_by_a_dead_process_is_taken_over(tmp_path):
    """A lock file that names a process but is not locked (it died) does not block."""
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 999999, "argv": ["ddrom", "hf"]}))
    with acquire(tmp_path, MPI.COMM_SELF) as lock:
        assert lock.previous["pid"] == 999999 and lock.holder["pid"] == os.getpid()


def test_locking_twice_in_one_process_is_refused(tmp_path):
    """flock is per open file: the same process locking the folder twice is refused too
    (a command must not run two writers on one folder)."""
    with acquire(tmp_path, MPI.COMM_SELF):
        t0 = time.perf_counter()
        with pytest.raises(CollectiveError, match="is in use by"):
            acquire(tmp_path, MPI.COMM_SELF)
        assert time.perf_counter() - t0 < 5            # refused at once, no waiting


def test_unwritable_folder_is_one_clear_error(tmp_path):
    f = tmp_path / "file_not_folder"
    f.write_text("x")
    with pytest.raises(CollectiveError, match="cannot take the lock"):
        acquire(f, MPI.COMM_SELF)


HOLDER_SHARED = HOLDER.replace('argv=["ddrom", "hf", "case.toml"])', 'argv=["ddrom", "online", "case.toml"], shared=True)')


def _start(code: str, folder):
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_clean_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def _stop(proc) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(30)


def test_shared_holders_share_and_keep_writers_out(tmp_path):
    """ddrom online runs share a folder; a writer (exclusive) is refused naming them, and a
    shared holder is refused while a writer holds it."""
    other = _start(HOLDER_SHARED, tmp_path)
    try:
        with acquire(tmp_path, MPI.COMM_SELF, argv=["ddrom", "online", "b"], shared=True) as lock:
            assert lock.shared and lock.held
            with pytest.raises(CollectiveError) as info:
                acquire(tmp_path, MPI.COMM_SELF, argv=["ddrom", "offline", "c"])
            msg = str(info.value)
            assert "2 command(s) sharing it" in msg and f"pid {other.pid}" in msg and "'ddrom online" in msg, msg
    finally:
        _stop(other)
    # the writer now holds it: a shared holder is refused, naming it
    writer = _start(HOLDER, tmp_path)
    try:
        with pytest.raises(CollectiveError, match=rf"in use by 'ddrom hf case.toml' \(pid {writer.pid}"):
            acquire(tmp_path, MPI.COMM_SELF, shared=True)
    finally:
        _stop(writer)
    with acquire(tmp_path, MPI.COMM_SELF, shared=True):
        pass


def test_record_of_a_killed_shared_holder_is_pruned(tmp_path):
    from ddrom.io.lock import shared_holders

    proc = _start(HOLDER_SHARED, tmp_path)
    assert [h["pid"] for h in shared_holders(tmp_path)] == [proc.pid]
    proc.kill()
    proc.wait(30)
    assert shared_holders(tmp_path) == []                 # its record was not locked: removed
    assert not list((tmp_path / ".ddrom.lock.d").glob("*.json"))
    with acquire(tmp_path, MPI.COMM_SELF) as lock:        # nothing left in the way of a writer
        assert not lock.shared


def test_exclusive_holder_removes_temporaries_of_killed_commands(tmp_path):
    """Private temporaries of dead processes go; those of live ones, resumable .partial
    stores and other files stay."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    keep = ["hf_training.h5.partial", "rom.h5", f"online_x.json.tmp.{os.getpid()}", "notes.tmp.txt"]
    gone = [f"online_x.json.tmp.{dead.pid}", f"rom_fields.h5.partial.{dead.pid}", f"report/report.md.tmp.{dead.pid}"]
    (tmp_path / "report").mkdir()
    for name in keep + gone:
        (tmp_path / name).write_text("x")
    with acquire(tmp_path, MPI.COMM_SELF, shared=True) as lock:      # shared holders never clean
        assert lock.removed == []
    with acquire(tmp_path, MPI.COMM_SELF) as lock:
        assert sorted(lock.removed) == sorted(str(tmp_path / n) for n in gone)
    assert all((tmp_path / n).exists() for n in keep) and not any((tmp_path / n).exists() for n in gone)


def test_output_lock_context_manager(tmp_path):
    """The library's lock (ddrom.output_lock) on a case's output folder."""
    import ddrom

    class Case:                                            # anything with an output_dir
        output_dir = tmp_path / "out"

    with ddrom.output_lock(Case(), MPI.COMM_SELF, argv=["notebook"]) as lock:
        assert lock.holder["argv"] == ["notebook"] and read_holder(Case.output_dir)["argv"] == ["notebook"]
        with pytest.raises(CollectiveError, match="in use by 'notebook'"):
            acquire(Case.output_dir, MPI.COMM_SELF)
    assert read_holder(Case.output_dir) is None
