"""The SLURM job scripts (jobscripts/) on a real single-node SLURM.

A module fixture installs SLURM and MUNGE if they are missing (only as root with a working
apt), writes a private configuration into a temporary folder (own MUNGE socket and key, own
ports, spool and state folders), starts munged, slurmctld and slurmd in the foreground as
children of this process, and stops exactly those processes, by PID, at teardown. Nothing
is shared with a SLURM that may already run on the machine.

Choice: the SLURM packages are installed by this test (root + apt) rather than by
scripts/install.sh, which installs what ddrom itself needs; a cluster brings its own SLURM.

Not mpi-marked: it runs once, in the 1-rank stage, and launches its own MPI jobs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[1]
JOBSCRIPTS = REPO / "jobscripts"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "squeue", "scancel"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
PIPELINE_TIMEOUT = 300.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of this process without the traces of an MPI singleton (which
    sbatch would carry into the jobs and confuse their mpirun), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_COMM", "PMIX_", "OMPI_MCA_ess", "OMPI_MCA_orte", "OMPI_FILE", "SLURM_"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **extra)
    return env


def _missing() -> list[str]:
    return [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]


def _install_or_skip() -> None:
    if not _missing():
        return
    if os.geteuid() != 0:
        pytest.skip(f"SLURM not installed ({', '.join(_missing())} missing) and not root to apt-get install it")
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM not installed and no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:   # stale package lists: refresh once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or _missing():
        pytest.skip(f"could not install SLURM with apt-get: {(r.stdout + r.stderr)[-500:]}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class Slurm:
    """A private single-node SLURM: its configuration, environment and daemons."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = clean_env(SLURM_CONF=str(self.conf))

    def write_config(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(mode=0o700, exist_ok=True)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        mem_mb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        self.conf.write_text(f"""\
ClusterName=ddromtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=kill_invalid_depend
ReturnToService=2
MinJobAge=3600
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={int(mem_mb * 0.9)} State=UNKNOWN
PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")

    def _start(self, *cmd: str, log: str) -> subprocess.Popen:
        f = open(self.root / "log" / log, "w")
        p = subprocess.Popen(cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        f.close()
        self.procs.append(p)
        return p

    def start(self) -> None:
        m = self.root / "munge"
        self._start(_sbin("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                    f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                    f"--seed-file={m / 'munged.seed'}", f"--log-file={m / 'munged.log'}", log="munged.out")
        self._wait(lambda: self.munge_socket.exists(), 20, "munged did not create its socket")
        self._start(_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf), log="slurmctld.out")
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, 30,
                   "slurmctld does not answer")
        self._start(_sbin("slurmd"), "-D", "-f", str(self.conf), log="slurmd.out")
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout, 60,
                   "the node did not become idle")

    def _wait(self, ok, timeout: float, what: str) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}): {what}\n{self.logs()}")
            if ok():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} after {timeout} s\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if f.exists():
                out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def run(self, *cmd: str, check: bool = True, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, env=env or self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` of a job (one record per array task), as key -> value."""
        r = self.run("scontrol", "-o", "show", "job", job_id)
        return [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in r.stdout.splitlines()
                if line.strip()]

    def wait_terminal(self, job_ids: list[str], timeout: float) -> dict[str, list[dict[str, str]]]:
        t0 = time.monotonic()
        while True:
            recs = {j: self.jobs(j) for j in job_ids}
            if all(r["JobState"] in TERMINAL for rs in recs.values() for r in rs):
                return recs
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"jobs not finished after {timeout} s: "
                                     f"{ {j: [r['JobState'] for r in rs] for j, rs in recs.items()} }\n"
                                     + self.logs())
            time.sleep(1.0)

    def stop(self) -> None:
        """Cancel this controller's jobs, then stop the daemons this object started, by PID."""
        if any(p.poll() is None for p in self.procs):
            self.run("scancel", "--user", str(os.geteuid()), check=False)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30 and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for p in reversed(self.procs):     # slurmd, slurmctld, munged
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    _install_or_skip()
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root (SlurmUser=root in this test's configuration)")
    s = Slurm(tmp_path_factory.mktemp("slurm"))
    s.write_config()
    try:
        t0 = time.monotonic()
        s.start()
        print(f"\nSLURM up in {time.monotonic() - t0:.1f} s (ports {s.ctld_port}/{s.slurmd_port})")
        yield s
    finally:
        s.stop()


def ddrom_venv() -> Path:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "ddrom").exists():
        pytest.skip(f"no ddrom executable in {venv}/bin (run scripts/install.sh)")
    return venv


def submit_pipeline(slurm: Slurm, work: Path, case: Path, **variables: str) -> list[tuple[str, str]]:
    env = {**slurm.env, "DDROM": str(ddrom_venv()), "LAUNCHER": "mpirun", "LOG_DIR": str(work / "logs"),
           **variables}
    r = slurm.run(str(JOBSCRIPTS / "pipeline.sh"), str(case), cwd=work, env=env)
    jobs = [tuple(line.split()) for line in r.stdout.splitlines() if line.strip()]
    assert jobs and all(len(j) == 2 and j[1].isdigit() for j in jobs), r.stdout
    return jobs


def test_pipeline_on_slurm(slurm, tmp_path):
    """hf (split over 2 resumed jobs) -> offline -> online job array, 2 ranks each, all complete."""
    case = tmp_path / "tiny.toml"
    shutil.copy(REPO / "cases" / "tiny.toml", case)
    params = tmp_path / "params.txt"
    params.write_text("# online points\nu_max=0.003\n\nu_max=0.007\n")
    t0 = time.monotonic()
    jobs = submit_pipeline(slurm, tmp_path, case, NTASKS="2", HF_JOBS="2", MAX_SIMULATIONS="1",
                           PARAM_FILE=str(params), PETSC_OPTIONS="-ksp_type cg -ksp_rtol 1e-10")
    assert [s for s, _ in jobs] == ["hf", "hf", "offline", "online"]
    ids = [j for _, j in jobs]
    recs = slurm.wait_terminal(ids, PIPELINE_TIMEOUT)
    elapsed = time.monotonic() - t0
    logs = tmp_path / "logs"

    def show(name: str) -> str:
        f = logs / name
        return f.read_text() if f.exists() else f"(no {name})"

    for (stage, j) in jobs:
        for rec in recs[j]:
            log = (f"ddrom-online-{j}_{rec.get('ArrayTaskId')}.out" if stage == "online"
                   else f"ddrom-{stage}-{j}.out")
            assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", \
                f"{stage} {j}: {rec['JobState']} {rec['ExitCode']}\n{show(log)}"
            assert (logs / log).exists(), log
    assert len(recs[ids[3]]) == 2                        # one array task per parameter line
    print(f"\npipeline (4 jobs + 2 array tasks, 2 ranks) done in {elapsed:.1f} s")

    # the HF sweep really was split: the second job resumed the store of the first
    hf1 = json.loads((logs / f"ddrom-hf-{ids[0]}.json").read_text())["sets"]["training"]
    hf2 = json.loads((logs / f"ddrom-hf-{ids[1]}.json").read_text())["sets"]["training"]
    assert (hf1["computed"], hf1["complete"]) == (1, False)
    assert (hf2["computed"], hf2["resumed_skipped"], hf2["complete"]) == (1, 1, True)
    assert "sweep not complete yet" in show(f"ddrom-hf-{ids[0]}.out")
    assert "2 rank(s)" in show(f"ddrom-hf-{ids[0]}.out")

    import h5py

    out = tmp_path / "out" / "tiny"
    for f in ("hf_training.h5", "rom.h5"):
        assert h5py.is_hdf5(out / f), f
    off = json.loads((logs / f"ddrom-offline-{ids[2]}.json").read_text())
    assert off["n_modes"] >= 1 and off["ecm_converged"] and off["rom"] == str(out / "rom.h5")

    # each array task ran its own line of the parameter file
    for k, u in ((1, 0.003), (2, 0.007)):
        res = json.loads((logs / "online-results" / f"point_{k:04d}.json").read_text())["runs"]
        assert len(res) == 1 and res[0]["params"] == {"u_max": u}
        assert res[0]["newton_iterations"] >= 1
    for u in (0.003, 0.007):          # one trajectory per point (named by its values)
        with h5py.File(out / f"online_param_u_max_{u:g}.h5", "r") as traj:
            assert np.all(np.isfinite(traj["q"][...])) and json.loads(traj.attrs["params"])["u_max"] == u
        summary = json.loads((out / f"online_param_u_max_{u:g}.json").read_text())
        assert summary["params"] == {"u_max": u} and summary["n_enrichments"] == 0


def test_failing_job_stops_the_pipeline(slurm, tmp_path):
    """A bad case file: the HF job ends FAILED with ddrom's exit status, the later stages never run."""
    case = tmp_path / "bad.toml"
    case.write_text((REPO / "cases" / "tiny.toml").read_text().replace('law = "elastic"', 'law = "no_such_law"'))
    jobs = submit_pipeline(slurm, tmp_path, case, NTASKS="2")
    assert [s for s, _ in jobs] == ["hf", "offline", "online"]
    recs = slurm.wait_terminal([j for _, j in jobs], 120)
    hf = recs[jobs[0][1]][0]
    log = (tmp_path / "logs" / f"ddrom-hf-{jobs[0][1]}.out").read_text()
    assert hf["JobState"] == "FAILED" and hf["ExitCode"] == "2:0", (hf["JobState"], hf["ExitCode"], log)
    assert "no_such_law" in log
    for stage, j in jobs[1:]:
        rec = recs[j][0]
        assert rec["JobState"] == "CANCELLED" and "Dependency" in rec.get("Reason", ""), (stage, rec)
        assert not list((tmp_path / "logs").glob(f"*-{j}*.out")), f"{stage} ran"


def test_job_script_needs_a_case(tmp_path):
    """Outside SLURM too: a job script without CASE stops at once with a non-zero status and says why."""
    r = subprocess.run(["bash", str(JOBSCRIPTS / "hf.sbatch")], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "CASE"}, timeout=30)
    assert r.returncode != 0 and "CASE" in r.stderr
    r = subprocess.run([str(JOBSCRIPTS / "pipeline.sh"), str(tmp_path / "missing.toml")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no case file" in r.stderr


def test_online_packed_in_one_allocation(slurm, tmp_path):
    """Packed online mode: 3 independent 1-rank ROM runs side by side in one 2-task allocation,
    launched with srun where SLURM has a PMIx plugin (else mpirun)."""
    case = tmp_path / "tiny.toml"
    shutil.copy(REPO / "cases" / "tiny.toml", case)
    params = tmp_path / "params.txt"
    params.write_text("u_max=0.002\nu_max=0.005\nu_max=0.009\n")
    launcher = {}
    r = slurm.run("srun", "--mpi=list", check=False)
    if "pmix" in r.stdout + r.stderr:
        launcher = dict(LAUNCHER="srun", SRUN_FLAGS="--mpi=pmix")
    jobs = submit_pipeline(slurm, tmp_path, case, NTASKS="2", PARAM_FILE=str(params), ONLINE_MODE="packed",
                           NTASKS_ONLINE="2", RANKS_PER_RUN="1", **launcher)
    recs = slurm.wait_terminal([j for _, j in jobs], PIPELINE_TIMEOUT)
    logs = tmp_path / "logs"
    for stage, j in jobs:
        rec = recs[j][0]
        log = logs / f"ddrom-{stage}-{j}.out"
        assert rec["JobState"] == "COMPLETED", (stage, launcher, rec["ExitCode"],
                                                log.read_text() if log.exists() else "(no log)")
    # under srun too, the HF job is one 2-rank MPI run (not two singletons)
    assert "81 DOFs on 2 rank(s)" in (logs / f"ddrom-hf-{jobs[0][1]}.out").read_text()
    text = (logs / f"ddrom-online-{jobs[-1][1]}.out").read_text()
    assert "3 points, 2 run(s) of 1 rank(s) at a time" in text
    for k, u in ((1, 0.002), (2, 0.005), (3, 0.009)):
        res = json.loads((logs / "online-results" / f"point_{k:04d}.json").read_text())["runs"]
        assert res[0]["params"] == {"u_max": u}
        assert (logs / "online-results" / f"point_{k:04d}.rc").read_text().strip() == "0"
    print(f"\npacked online with {launcher.get('LAUNCHER', 'mpirun')}: ok")
