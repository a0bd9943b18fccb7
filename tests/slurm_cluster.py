"""A real single-node SLURM cluster on localhost for the test suite (no mocks).

``LocalSlurm(directory).start()`` installs Debian's ``slurmctld slurmd slurm-client munge`` when
they are missing (root only), writes a configuration under ``directory``, starts ``munged`` (unless
one already answers), ``slurmctld`` and a configless ``slurmd``, and waits until the node is idle.
``stop()`` cancels the jobs, then ends only the daemons it started, by their recorded process ids.

Facts the set-up relies on (Slurm 22.05, snakemake-executor-plugin-slurm 2.8):
- no cgroups: ``proctrack/linuxproc`` + ``task/none``; no slurmdbd, so ``sacct`` does not work and
  the Snakemake profile must use ``slurm-status-command: squeue`` (MinJobAge keeps finished jobs
  visible to squeue);
- the plugin's job step removes every ``SLURM_*`` variable (``SLURM_CONF`` too) before calling
  ``srun`` inside a job, so ``slurmd`` runs configless and publishes the config at
  ``/run/slurm/conf``, where Slurm commands look when ``SLURM_CONF`` is unset;
- the node advertises two stand-in GPUs (``gres/gpu`` backed by /dev/null-like device nodes) so
  that the workflow profile's GPU requests can be scheduled; nothing uses a real GPU here.

Command line, for trying the pipeline by hand (as root)::

    python tests/slurm_cluster.py start /tmp/alphastomics-slurm   # prints `export SLURM_CONF=...`
    python tests/slurm_cluster.py stop /tmp/alphastomics-slurm
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/bin/squeue", "/usr/bin/scontrol",
            "/usr/bin/srun", "/usr/sbin/munged", "/usr/bin/munge", "/usr/bin/unmunge"]
RUN_CONF_LINK = Path("/run/slurm/conf")
PARTITION = "debug"
FAKE_GPUS = 2


def is_root() -> bool:
    return os.geteuid() == 0


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not Path(b).exists()]


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    if sys.platform != "linux":
        return "a local SLURM cluster needs Linux"
    if not is_root():
        if missing_binaries():
            return "SLURM/munge not installed and not root (run as root, or apt-get install " + " ".join(PACKAGES) + ")"
        return "starting slurmctld/slurmd/munged needs root"
    if missing_binaries() and not shutil.which("apt-get"):
        return "SLURM/munge not installed and no apt-get to install them"
    return None


def install_packages(log=print) -> None:
    """apt-get install the Debian packages when a binary is missing; keeps their services stopped."""
    if not missing_binaries():
        return
    log(f"installing {' '.join(PACKAGES)} with apt-get")
    # Debian's standard guard against postinst scripts starting services; added only if absent.
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = not policy.exists()
    if added_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, text=True)
        result = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                                env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(PACKAGES)} failed:\n{result.stderr[-3000:]}")
    finally:
        if added_policy:
            policy.unlink(missing_ok=True)
    if missing_binaries():
        raise RuntimeError(f"still missing after install: {missing_binaries()}")


def alive(pid: int | None, comm: str | None = None) -> bool:
    """True when pid runs (zombies excluded) and, if given, its command name matches."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
        return comm is None or Path(f"/proc/{pid}/comm").read_text().strip() == comm
    except (OSError, IndexError):
        return False


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class LocalSlurm:
    """One slurmctld + one slurmd on 127.0.0.1, state and logs under ``directory``."""

    def __init__(self, directory: str | Path, log=print):
        self.dir = Path(directory).resolve()
        self.log = log
        self.conf = self.dir / "slurm.conf"
        self.pids_file = self.dir / "pids.json"

    # -- environment ----------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm client commands and snakemake run against this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def pids(self) -> dict[str, int]:
        try:
            return json.loads(self.pids_file.read_text())
        except (OSError, ValueError):
            return {}

    def _record(self, name: str, pid: int) -> None:
        pids = self.pids()
        pids[name] = pid
        self.pids_file.write_text(json.dumps(pids))

    # -- configuration --------------------------------------------------------------------------
    def write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        topology = subprocess.run(["/usr/sbin/slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        fields = dict(re.findall(r"(\w+)=(\S+)", topology.splitlines()[0]))
        memory = int(fields["RealMemory"]) * 9 // 10
        self.ctld_port, self.slurmd_port = free_port(), free_port()
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
# single-node test cluster on localhost, written by tests/slurm_cluster.py
ClusterName=alphastomics-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmctldParameters=enable_configless
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self.dir}/state
SlurmdSpoolDir={self.dir}/spool
SlurmctldPidFile={self.dir}/slurmctld.pid
SlurmdPidFile={self.dir}/slurmd.pid
SlurmctldLogFile={self.dir}/log/slurmctld.log
SlurmdLogFile={self.dir}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.dir}/log/jobcomp.txt
NodeName={host} NodeAddr=127.0.0.1 CPUs={fields['CPUs']} Boards=1 SocketsPerBoard={fields['SocketsPerBoard']} CoresPerSocket={fields['CoresPerSocket']} ThreadsPerCore={fields['ThreadsPerCore']} RealMemory={memory} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        # Stand-in GPUs: character devices like /dev/null (Slurm 22.05 counts no gres/gpu without
        # a File=), so GPU requests can be scheduled; nothing ever opens them.
        for i in range(FAKE_GPUS):
            device = self.dir / f"fakegpu{i}"
            device.unlink(missing_ok=True)
            try:
                os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            except OSError:  # no CAP_MKNOD: a plain file still counts (slurmd logs an error)
                device.touch()
        (self.dir / "gres.conf").write_text(f"NodeName={host} Name=gpu File={self.dir}/fakegpu[0-{FAKE_GPUS - 1}]\n")
        self.host = host

    # -- daemons --------------------------------------------------------------------------------
    @staticmethod
    def munge_ok() -> bool:
        try:
            cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
            return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=5).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def start_munge(self) -> None:
        if self.munge_ok():
            self.log("munged already running (not started here); using it")
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists() or key.stat().st_size == 0:
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(os.urandom(1024))
            shutil.chown(key.parent, "munge", "munge")
            shutil.chown(key, "munge", "munge")
            key.parent.chmod(0o700)
            key.chmod(0o400)
        for d, mode in (("/run/munge", 0o755), ("/var/log/munge", 0o700), ("/var/lib/munge", 0o700)):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
            Path(d).chmod(mode)
        Path("/run/munge/munged.pid").unlink(missing_ok=True)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, capture_output=True, text=True)
        if not wait_for(self.munge_ok, 10):
            raise RuntimeError("munged did not come up (see /var/log/munge/munged.log)")
        self._record("munged", read_pid(Path("/run/munge/munged.pid")))

    def node_state(self) -> str:
        r = self.run("sinfo", "-h", "-N", "-o", "%t", check=False)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else ""

    def start(self, timeout: float = 60) -> "LocalSlurm":
        if not is_root():
            raise RuntimeError("starting a local SLURM cluster needs root")
        install_packages(self.log)
        if RUN_CONF_LINK.exists() or RUN_CONF_LINK.is_symlink():
            target = os.readlink(RUN_CONF_LINK) if RUN_CONF_LINK.is_symlink() else str(RUN_CONF_LINK)
            raise RuntimeError(f"{RUN_CONF_LINK} exists ({target}): another configless slurmd runs on this machine")
        if Path("/etc/slurm/slurm.conf").exists():
            raise RuntimeError("/etc/slurm/slurm.conf exists: srun inside jobs would use it, not this test cluster")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        started = time.monotonic()
        self.start_munge()
        subprocess.run(["/usr/sbin/slurmctld", "-f", str(self.conf)], check=True, capture_output=True, text=True)
        wait_for(lambda: read_pid(self.dir / "slurmctld.pid") is not None, 10)
        self._record("slurmctld", read_pid(self.dir / "slurmctld.pid"))
        if not wait_for(lambda: self.run("scontrol", "ping", check=False).returncode == 0, 20):
            self.stop()
            raise RuntimeError(f"slurmctld did not answer: {self._tail('slurmctld.log')}")
        # configless: slurmd fetches slurm.conf + gres.conf from slurmctld and publishes them at
        # /run/slurm/conf, where srun inside a job finds them without SLURM_CONF
        subprocess.run(["/usr/sbin/slurmd", "--conf-server", f"127.0.0.1:{self.ctld_port}"], check=True,
                       capture_output=True, text=True)
        wait_for(lambda: read_pid(self.dir / "slurmd.pid") is not None, 10)
        self._record("slurmd", read_pid(self.dir / "slurmd.pid"))
        if not wait_for(lambda: self.node_state() == "idle", timeout, 0.2):
            state = self.node_state()
            self.stop()
            raise RuntimeError(f"node not idle after {timeout}s (state {state!r}):\n{self._tail('slurmctld.log')}\n{self._tail('slurmd.log')}")
        self.log(f"SLURM cluster up in {time.monotonic() - started:.1f}s: {self.pids()}")
        return self

    def _tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "log" / name).read_text().splitlines()[-lines:])
        except OSError:
            return f"(no {name})"

    def stop(self) -> None:
        pids = self.pids()
        if alive(pids.get("slurmctld"), "slurmctld"):
            self.run("scancel", "--quiet", "--user", "root", check=False)
        for name in ("slurmd", "slurmctld", "munged"):  # only what start() recorded
            pid = pids.get(name)
            if not alive(pid, name):
                continue
            os.kill(pid, 15)
            if not wait_for(lambda: not alive(pid, name), 5):
                os.kill(pid, 9)
                wait_for(lambda: not alive(pid, name), 5)
        if RUN_CONF_LINK.is_symlink() and os.readlink(RUN_CONF_LINK).startswith(str(self.dir)):
            RUN_CONF_LINK.unlink()
        self.pids_file.unlink(missing_ok=True)

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: python tests/slurm_cluster.py start|stop DIRECTORY")
    cluster = LocalSlurm(sys.argv[2], log=lambda m: print(m, file=sys.stderr))
    if sys.argv[1] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
