"""A private Ray head on 127.0.0.1, started with the real `ray start` CLI, for tests.

    from ray_head import RayHead

    with RayHead(num_cpus=6) as head:
        out = head.submit("my-job", "python", "ray_jobs/train.py", "--config", "tiny.yaml")
        assert out.returncode == 0 and head.job_status("my-job") == "SUCCEEDED"
        # or any CLI: subprocess.run(["ray", "status"], env=head.env)

What it guarantees:
- every port (GCS, dashboard, agents, client server, workers) is a free port or chosen
  by the OS, and every address is 127.0.0.1, so it neither collides with other Ray
  clusters on the machine nor listens on or talks to any other address;
- Ray's token authentication is on, with a fresh token in the head's own temp dir
  (never ~/.ray/auth_token); `env` carries what a client needs to use it;
- `stop()` kills only the processes this head started (found by session id, process
  tree and temp dir, never by name) and raises if any survives. It never runs
  `ray stop`, which would kill every Ray process on the machine.

API
- `RayHead(num_cpus, resources=None, autoscaling_config=None, extra_env=None, port=None)`;
  `extra_env` reaches every Ray process of the cluster (e.g. PYTHONPATH for test modules,
  RAY_FAKE_CLUSTER=1 for the fake multi-node provider); `port` is the GCS port (default: free).
- `.start()` / `.stop()`, or `with RayHead(...) as head:`.
- `gcs_address` ("127.0.0.1:PORT"), `dashboard_url` ("http://127.0.0.1:PORT"), `temp_dir`, `log_path`.
- `env`: the environment for client subprocesses (`ray job ...`, `ray status`, `lam train`
  joining the cluster): token settings, RAY_ADDRESS (GCS) and RAY_API_SERVER_ADDRESS (jobs).
- `.ray(*args)`: run the `ray` CLI against this cluster, output captured.
- `.submit(job_id, *entrypoint, wait=True)`: `ray job submit` this checkout with ray_jobs/runtime_env.yaml
  and wait for the job to end (or only for it to be submitted); `.job_status(job_id)`: "SUCCEEDED",
  "FAILED", ...; `.job_logs(job_id)`: what it printed so far.
- `.pids()`: its live processes; `listen_addresses(head)`: the TCP addresses they listen on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from helpers import ROOT, free_port  # ROOT: the checkout `ray job submit --working-dir .` uploads

RAY = str(Path(sys.executable).with_name("ray"))  # the venv's `ray`, whatever PATH says


class RayHead:
    def __init__(
        self,
        num_cpus: int = 4,
        resources: dict | None = None,
        autoscaling_config: str | Path | None = None,
        extra_env: dict | None = None,
        object_store_mb: int = 256,
        startup_timeout: float = 120,
        port: int | None = None,
    ):
        self.port = port  # the GCS port; a free one by default
        self.num_cpus, self.resources, self.autoscaling_config = num_cpus, resources, autoscaling_config
        self.extra_env, self.object_store_mb, self.startup_timeout = extra_env or {}, object_store_mb, startup_timeout
        self.gcs_address = self.dashboard_url = self.temp_dir = self.log_path = None
        self.env: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None

    # -------------------------------------------------------------------------
    # start

    def start(self) -> RayHead:
        # Short: Ray's Unix socket paths live under it and must stay < 108 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="lamh_", dir="/tmp")
        token_path = Path(self.temp_dir, "auth_token")
        token_path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        token_path.chmod(0o600)

        gcs_port, dash_port = self.port or free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{dash_port}"

        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(
            # Off, Ray keeps 127.0.0.1 as the node address; on (the Linux default) it
            # replaces loopback with the machine's routable address (services.resolve_ip_for_localhost).
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            # `ray start` leaves auth off unless asked (or ~/.ray/auth_token exists); ask,
            # and point every process (raylet, dashboard, job drivers, clients) at our token.
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(token_path),
            RAY_USAGE_STATS_ENABLED="0",  # no usage report to anywhere
            # On SIGTERM a node first drains until idle; detached actors (Ray Train's state
            # actor) keep it busy, so stop() would wait out the whole drain timeout.
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),  # job entrypoints' `python`
            # Ray's own state-API clients inside the cluster (Ray Train's placement-group
            # cleaner) find the dashboard through this; without it they look for a cluster
            # in the default /tmp/ray and, seeing several on this machine, give up.
            RAY_API_SERVER_ADDRESS=self.dashboard_url,
            **{k: str(v) for k, v in self.extra_env.items()},
        )
        if self.autoscaling_config:
            env.setdefault("AUTOSCALER_UPDATE_INTERVAL_S", "1")  # react in a second, not five

        cmd = [
            RAY, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
            "--temp-dir", self.temp_dir,
            "--num-cpus", str(self.num_cpus), "--num-gpus", "0",
            "--object-store-memory", str(self.object_store_mb * 1024 * 1024),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
            # Every other listening port: free ones, not Ray's fixed defaults (52365, 10001, ...).
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
            "--ray-client-server-port", str(free_port()),
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--min-worker-port", "0", "--max-worker-port", "0",  # workers: OS-chosen ports
        ]  # fmt: skip
        if self.resources:
            cmd += ["--resources", json.dumps(self.resources)]
        if self.autoscaling_config:
            cmd += ["--autoscaling-config", str(self.autoscaling_config)]

        self.log_path = os.path.join(self.temp_dir, "ray_start.log")
        with open(self.log_path, "w") as log:
            # Its own session: every process it starts carries this session id, which is
            # how stop() finds them even after they are re-parented.
            self._proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env = {**env, "RAY_ADDRESS": self.gcs_address}  # clients: ray.init / ray status; jobs CLI: RAY_API_SERVER_ADDRESS
        try:
            self._wait_ready(token_path.read_text())
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, token: str) -> None:
        """Until the job API answers an authenticated request (it also proves the token works)."""
        deadline = time.monotonic() + self.startup_timeout
        request = urllib.request.Request(f"{self.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"`ray start` exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray head not ready after {self.startup_timeout}s:\n{self.log_tail()}")
            time.sleep(1)

    # -------------------------------------------------------------------------
    # the `ray` CLI against this cluster

    def ray(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray ARGS...` from the repo root with this cluster's env (addresses, token); output captured."""
        return subprocess.run([RAY, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)

    NO_AGENT_YET = "No available agent to submit job"  # the head answers before its node's agent has registered

    def submit(self, job_id: str, *entrypoint: str, timeout: float = 600, wait: bool = True) -> subprocess.CompletedProcess:
        """Submit this checkout as a job and wait: the CLI tails the job's logs and exits 1 if the job failed
        (`wait=False`: return once the job is submitted; `job_status` and `job_logs` follow it).
        A submission refused because the node's job agent has not registered yet (a loaded machine)
        created no job, so it is tried again, for up to `startup_timeout` seconds."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            out = self.ray("job", "submit", "--address", self.dashboard_url, "--log-color", "false", "--submission-id", job_id,
                           *([] if wait else ["--no-wait"]), "--working-dir", ".", "--runtime-env", "ray_jobs/runtime_env.yaml", "--", *entrypoint,
                           timeout=timeout)  # fmt: skip
            if out.returncode == 0 or self.NO_AGENT_YET not in out.stdout + out.stderr or time.monotonic() > deadline:
                return out
            time.sleep(2)

    def job_status(self, job_id: str) -> str:
        """SUCCEEDED, FAILED or STOPPED as `ray job status` reports it; else the CLI's output, for assertion messages."""
        out = self.ray("job", "status", "--address", self.dashboard_url, "--log-color", "false", job_id, timeout=60)
        text = out.stdout + out.stderr
        for phrase, status in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("was stopped", "STOPPED")):
            if f"Job '{job_id}' {phrase}" in text:
                return status
        return text

    def job_logs(self, job_id: str) -> str:
        """Everything the job has printed so far."""
        out = self.ray("job", "logs", "--address", self.dashboard_url, "--log-color", "false", job_id, timeout=60)
        return out.stdout + out.stderr

    def log_tail(self, chars: int = 4000) -> str:
        return Path(self.log_path).read_text()[-chars:] if self.log_path and os.path.exists(self.log_path) else ""

    # -------------------------------------------------------------------------
    # stop

    def pids(self) -> set[int]:
        """Live processes of this cluster: our session, anything under our temp dir, their descendants."""
        table = _process_table()
        sid = self._proc.pid  # start_new_session made `ray start` the session leader
        ours = {pid for pid, (_, s, cmd) in table.items() if s == sid or self.temp_dir in cmd}
        ours.add(self._proc.pid)
        # Job drivers (and their watchers) start their own sessions: follow the tree as well.
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(ours)
        while todo:
            for c in children.get(todo.pop(), []):
                if c not in ours:
                    ours.add(c)
                    todo.append(c)
        return {pid for pid in ours if pid in table}

    def stop(self, timeout: float = 30) -> None:
        """Stop this cluster's processes, and only those; raise if any survives."""
        if self._proc is None:
            return
        pids = self.pids()  # taken before anything dies, so re-parented processes stay known
        if self._proc.poll() is None:
            self._proc.terminate()  # `ray start --block` shuts its node down on SIGTERM
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            alive = (pids | self.pids()) & set(_process_table())
            alive.discard(os.getpid())
            for pid in alive:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while alive and time.monotonic() < deadline:
                time.sleep(0.2)
                alive &= set(_process_table())
            if not alive:
                break
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        left = (pids | self.pids()) & set(_process_table())
        self._proc = None
        if left:
            raise RuntimeError(f"Ray head processes still alive after stop: {sorted(left)}")
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def listen_addresses(head: RayHead) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket the head's processes listen on, from /proc/net/tcp{,6}."""
    inodes = set()
    for pid in head.pids():
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # exited meanwhile
            continue
        inodes |= {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()  # sl local_address rem_address st ... inode
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ip_hex, port_hex = fields[1].split(":")
                    raw = bytes.fromhex(ip_hex)  # the kernel prints each 32-bit word little-endian
                    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    ip = socket.inet_ntop(family, raw).removeprefix("::ffff:")  # IPv4-mapped: the IPv4 address
                    found.add((ip, int(port_hex, 16)))
    return found


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of every live, non-zombie process (from /proc)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
        if fields[0] in ("Z", "X"):  # zombies are dead; their parent (maybe not us) reaps them
            continue
        table[int(name)] = (int(fields[1]), int(fields[3]), cmd)
    return table
