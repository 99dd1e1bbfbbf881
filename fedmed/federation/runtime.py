"""Running the ServerApp and ClientApps on Flower's own engines, from Python.

``fedmed simulate`` starts a private SuperLink in simulation mode (Ray runs one virtual
SuperNode per hospital) and submits the app with ``flwr run``: the supported path in
Flower 1.42, and the same one a real consortium uses. Every Flower process gets an
environment that turns off telemetry, the update check and run-time dependency
installation, and a throw-away FLWR_HOME so nothing leaks into the user's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmed.app_bundle import project_root as project_root  # re-exported: fedmed.cli.approval imports it here
from fedmed.app_bundle import stage_app
from fedmed.errors import FedmedError

CONNECTION = "fedmed"


class FlowerRuntimeError(FedmedError):
    """Flower's engine could not start or run the app."""


@dataclass(frozen=True)
class RunStatus:
    run_id: int
    status: str
    """Flower's final status: finished:completed, finished:failed or finished:stopped."""
    details: str

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def flower_environment(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process: no calls home, no installs, private home."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        RAY_TMPDIR=str(flwr_home),
        RAY_DEDUP_LOGS="1",
        # Flower's processes start one another by name: find them beside this Python even
        # when its environment was not activated (`.venv/bin/fedmed ...`).
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    env.update(extra or {})
    return env


def flower_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class FlowerConnection:
    """The ``flwr`` command talking to one SuperLink, from a private FLWR_HOME.

    ``root_certificates`` is the CA that signed the SuperLink's TLS certificate; without
    one the connection is plain HTTP, which only the private simulation engine uses.
    """

    def __init__(self, home: Path, env: dict[str, str], address: str, *, root_certificates: Path | None = None) -> None:
        self.home, self.env = home, env
        security = (
            f"root-certificates = {_toml_string(str(Path(root_certificates).resolve()))}\n"
            if root_certificates else "insecure = true\n"
        )
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n[superlink.{CONNECTION}]\n'
            f"address = {_toml_string(address)}\n{security}",
            encoding="utf-8",
        )

    def flwr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([flower_bin("flwr"), *args], env=self.env, capture_output=True, text=True)

    def run(
        self,
        *,
        run_config: dict[str, str],
        log_path: Path,
        poll: Callable[[], None],
        federation_config: str | None = None,
    ) -> RunStatus:
        """Submit the app, call ``poll`` about twice a second while it runs, return its status."""
        app_dir = stage_app(self.home / "app")
        overrides = self.home / "run-config.toml"
        overrides.write_text(
            "".join(f"{key} = {_toml_string(value)}\n" for key, value in run_config.items()),
            encoding="utf-8",
        )
        extra = ["--federation-config", federation_config] if federation_config else []
        submitted = self.flwr(
            "run", str(app_dir), CONNECTION, "--run-config", str(overrides), *extra, "--format", "json",
        )
        try:
            reply = json.loads(submitted.stdout or "{}")
        except json.JSONDecodeError:
            reply = {}
        if not reply.get("success"):
            reason = reply.get("error-message") or (submitted.stdout + submitted.stderr).strip()
            raise FlowerRuntimeError(f"Flower did not accept the run: {reason}")
        run_id = int(reply["run-id"])

        with open(log_path, "w", encoding="utf-8") as log_file:
            def follow() -> subprocess.Popen:
                return subprocess.Popen(
                    [flower_bin("flwr"), "log", str(run_id), CONNECTION, "--stream"],
                    env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                )

            follower = follow()  # `flwr log --stream` returns when the run ends
            while True:
                poll()
                if follower.poll() is not None:
                    status = self.finished_status(run_id)
                    if status is not None:
                        break
                    follower = follow()  # the stream ended early: follow again
                time.sleep(0.5)
            poll()
        return status

    def finished_status(self, run_id: int) -> RunStatus | None:
        """The run's final status, or None while it runs (``flwr run`` exits 0 either way)."""
        listed = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            run = json.loads(listed.stdout)["runs"][0]
        except (json.JSONDecodeError, KeyError, IndexError):
            return None
        if not str(run.get("status", "")).startswith("finished:"):
            return None
        return RunStatus(run_id, run["status"], run.get("status-details", ""))


def wait_healthy(
    process: subprocess.Popen | None, url: str, *, log_path: Path | None, timeout: float, context: object = None,
) -> None:
    """Wait for a SuperLink's ``/health`` to answer 200, or its process (when it is ours) to die."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise FlowerRuntimeError(
                f"flower-superlink exited at start (code {process.returncode}); see {log_path}"
            )
        try:
            with urllib.request.urlopen(url, timeout=0.5, context=context) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    where = (
        f"; see {log_path}" if log_path else " (is `fedmed server start` running, and its port reachable from here?)"
    )
    raise FlowerRuntimeError(f"the SuperLink at {url.rsplit('/', 1)[0]} did not answer in {timeout:.0f} s{where}")


class LoggedProcess:
    """A Flower process in a session of its own, its output appended to a log file.

    ``stop`` ends it and every process group it started, then closes the log. If the fedmed
    process dies without stopping it (SIGKILL, a crash), the kernel sends it SIGTERM
    (Linux's parent-death signal), and Flower's own processes follow their parents, so no
    SuperLink or SuperNode lives on, still joined, with nobody to stop it.
    """

    def __init__(self, command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, mode: str = "a") -> None:
        self.log_path = log_path
        self._log = open(log_path, mode, encoding="utf-8")  # noqa: SIM115 - kept open for the process, closed by stop()
        self.log_offset = self._log.tell()
        """Where this start's output begins in the log."""
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - fedmed's CLI starts its Flower processes from one thread
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, grace: float = 15.0) -> None:
        try:
            stop_process_tree(self.process, grace=grace)
        finally:
            self._log.close()


class SimulationEngine:
    """A private SuperLink in simulation mode, stopped with everything it started."""

    def __init__(self, workdir: Path, *, env_extra: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.home = Path(tempfile.mkdtemp(prefix="fedmed-flwr-"))
        self.env = flower_environment(self.home, env_extra)
        self.port = free_port()
        self._link: LoggedProcess | None = None

    def __enter__(self) -> SimulationEngine:
        log_path = self.workdir / "superlink.log"
        self._link = LoggedProcess(
            [
                flower_bin("flower-superlink"), "--insecure", "--simulation",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.port),
            ],
            env=self.env, cwd=self.workdir, log_path=log_path, mode="w",
        )
        try:
            wait_healthy(self._link.process, f"http://127.0.0.1:{self.port}/health", log_path=log_path, timeout=60.0)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.connection = FlowerConnection(self.home, self.env, f"127.0.0.1:{self.port}")
        return self

    def run(
        self,
        *,
        run_config: dict[str, str],
        num_supernodes: int,
        cpus_per_node: int,
        gpus_per_node: float,
        poll: Callable[[], None],
        log_path: Path | None = None,
    ) -> RunStatus:
        """Submit the app to the simulation engine and follow it (see FlowerConnection.run).

        One engine takes several runs, one after another; each logs to ``log_path``
        (default: flower.log in the engine's folder).
        """
        federation = (
            f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_node} "
            f"client-resources-num-gpus={float(gpus_per_node)}"
        )
        return self.connection.run(
            run_config=run_config, log_path=log_path or self.workdir / "flower.log", poll=poll,
            federation_config=federation,
        )

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._link is not None:
                self._link.stop()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux for SIGTERM when this process's parent dies (elsewhere: nothing); it survives exec."""
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (a container stop, systemd, ``kill PID``) stop a command as Ctrl-C does.

    The command's ``except KeyboardInterrupt`` and ``with`` blocks then stop its Flower
    processes cleanly, instead of leaving them running.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def stop_process_tree(process: subprocess.Popen, *, grace: float = 15.0) -> None:
    """Stop a SuperLink and every process group under it (SuperExec, flwr-simulation, Ray).

    SuperExec runs in a session of its own that flwr-simulation and Ray inherit; a
    SIGTERM to the SuperLink alone would orphan a simulation still in flight. The
    process's own group (it leads a session of its own) is swept too: a SuperNode's
    SuperExec shares it and would outlive the SuperNode.
    """
    groups = {_pgid(pid) for pid in _descendants(process.pid)} - {None}
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = False
        for group in groups:
            try:
                os.killpg(group, sig)
                alive = True
            except (ProcessLookupError, PermissionError):
                pass
        if not alive:
            return
        time.sleep(1.0)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
