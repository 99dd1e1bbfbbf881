"""`fedmed node start`: one hospital's SuperNode, after a look at what will leave the site.

The node trusts only the consortium CA (TLS) and proves who it is with the site's
provisioned key (SuperNode authentication). Everything the ClientApp needs to find the
hospital's data, policy, books and keys travels as node config: it never comes from the
server.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from fedmed.config import SitePolicy
from fedmed.deploy import clientapp
from fedmed.deploy.provision import CONSORTIUM_FILE, Consortium
from fedmed.deploy.wrappers import write_wrappers
from fedmed.errors import ConfigError
from fedmed.federation.messages import Key
from fedmed.federation.node import DECISIONS_LOG
from fedmed.federation.runtime import FlowerRuntimeError, LoggedProcess, flower_bin, flower_environment, free_port
from fedmed.secure.manifest import MANIFEST_FILE


def what_leaves(policy: SitePolicy) -> str:
    """What this site sends under its policy, in words a hospital's IT can check."""
    local_model = (
        "  - once per run, a model trained with DP-SGD on this site's data alone, in the clear,\n"
        "    for cross-site evaluation (the policy's share_local_model allows it);\n"
        if policy.share_local_model else ""
    )
    max_models = policy.max_evaluation_models
    return f"""\
What leaves this site, and nothing else:
  - each round's model update, masked by secure aggregation: the server can decode only the
    sum over at least {policy.min_secure_group} sites and above two thirds of the round's sites (a site
    whose policy requires it refuses a run without secure aggregation);
  - each round's privacy ledger entry (noise, sampling rate, steps, epsilon, a hash of the model
    received, a keyed commitment to the update), signed with this site's key;
  - per-round metrics: example counts, epsilon and delta, and, for a round this site trained in,
    the task's test metrics (AUROC, accuracy and loss; Dice and HD95 per structure), the
    aggregates that pool them (score histograms per class coarsened to bins of at least
    {policy.min_cell_size} patients; per structure the case count and sum of Dice), the number
    of skipped files (the training loss stays here);
{local_model}  - once per run, for at most {max_models} models the server sends and for each sex, age band and
    scanner manufacturer: patient count and the task's cell metrics (prevalence, AUROC with its
    interval, sensitivity, specificity and calibration error; or Dice with its interval and
    HD95), only for groups of at least {policy.min_cell_size} patients
    (min_cell_size); smaller groups are sent as "suppressed".
No image, label, file name or DICOM tag leaves the site."""


@dataclass(frozen=True)
class SiteFolder:
    """A site's provisioned folder: its keys, the CA certificate and the consortium's public files."""

    site: str
    folder: Path

    @classmethod
    def find(cls, consortium_dir: Path, site: str) -> SiteFolder:
        """The site's folder: ``DIR/sites/SITE`` in a coordinator's folder, or DIR itself.

        Raises:
            ConfigError: neither holds that site's SuperNode key.
        """
        for folder in (Consortium(Path(consortium_dir)).site(site), Path(consortium_dir)):
            if (folder / "supernode-auth.key").is_file() and (folder / CONSORTIUM_FILE).is_file():
                sites = json.loads((folder / CONSORTIUM_FILE).read_text(encoding="utf-8"))["sites"]
                if site not in sites:
                    raise ConfigError(
                        f"{folder}: the consortium has no site {site!r} (it has {', '.join(sorted(sites))})"
                    )
                return cls(site, folder.resolve())
        raise ConfigError(
            f"{consortium_dir}: no keys for site {site!r} here; pass the folder the coordinator handed over "
            "(made by `fedmed provision`, with supernode-auth.key)"
        )

    def superlink_address(self) -> str:
        link = json.loads((self.folder / CONSORTIUM_FILE).read_text(encoding="utf-8"))["superlink"]
        return f"{link['host']}:{link['port']}"


def node_config(site: SiteFolder, *, data_dir: Path, policy: Path, state_dir: Path, cache_dir: Path | None) -> str:
    """The ``--node-config`` string: TOML values, so every path is a quoted string."""
    values = {
        Key.SITE_ID: site.site,
        Key.DATA_DIR: str(data_dir.resolve()),
        Key.STATE_DIR: str(state_dir.resolve()),
        Key.POLICY_PATH: str(policy.resolve()),
        Key.MANIFEST_PATH: str(site.folder / MANIFEST_FILE),
        Key.SIGNING_KEY: str(site.folder / "site-ed25519.pem"),
    }
    if cache_dir is not None:
        values[Key.CACHE_DIR] = str(cache_dir.resolve())
    return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


class SuperNode:
    """flower-supernode for one site; a context manager that stops it and its ClientApps."""

    def __init__(
        self, site: SiteFolder, *, data_dir: Path, policy: Path, state_dir: Path, runtime_port: int | None = None,
        cache_dir: Path | None = None, superlink: str | None = None, log_path: Path | None = None,
    ) -> None:
        self.site = site
        self.superlink = superlink or site.superlink_address()
        state_dir = Path(state_dir).expanduser().resolve()  # Flower runs there: relative paths would move
        self.state_dir = state_dir
        self.runtime_port = runtime_port
        self.policy = Path(policy).resolve()
        self.home = state_dir / "flwr"
        self.log_path = log_path or state_dir / "supernode.log"
        self.decisions_log = state_dir / DECISIONS_LOG
        """What the site decided, message by message (written by its ClientApps)."""
        self.command = [
            flower_bin("flower-supernode"),
            "--superlink", self.superlink,
            "--root-certificates", str(site.folder / "ca.crt"),
            "--auth-supernode-private-key", str(site.folder / "supernode-auth.key"),
            "--port", str(runtime_port or 0),  # the port is chosen at start when none is given
            "--node-config",
            node_config(site, data_dir=data_dir, policy=policy, state_dir=state_dir, cache_dir=cache_dir),
        ]
        self._node: LoggedProcess | None = None

    def __enter__(self) -> SuperNode:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, *, settle: float = 60.0, retry_for: float = 0.0) -> None:
        """Start the node; fail with the reason if the SuperLink refuses it.

        Started means the SuperLink accepted the node (Flower logs its node id), or that the
        node is still trying after ``settle`` seconds (a SuperLink not up yet). A fixed short
        wait was not enough: on a busy machine a refused node had not yet heard its refusal.

        A SuperLink refuses a key for about a minute after its node vanished (it waits for
        the heartbeat to lapse), so a restarted node may retry for ``retry_for`` seconds.

        Raises:
            FlowerRuntimeError: the SuperLink refused the node (unregistered key, a TLS
                certificate it does not trust), with the reason.
        """
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._environment = self._guarded_environment()
        self.command[self.command.index("--port") + 1] = str(self._runtime_port())
        give_up = time.monotonic() + retry_for
        while True:
            reason = self._try_start(settle)
            if reason is None:
                return
            if REFUSED_KEY not in reason or time.monotonic() > give_up:
                raise FlowerRuntimeError(f"site {self.site.site}: the SuperNode stopped at start: {reason}")
            time.sleep(5.0)

    def _try_start(self, settle: float) -> str | None:
        node = self._node = LoggedProcess(
            self.command, env=self._environment, cwd=self.state_dir, log_path=self.log_path,
        )
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and node.running:
            if _joined(self.log_path, offset=node.log_offset):
                return None
            time.sleep(0.2)
        if node.running:
            return None
        self.stop()
        return connection_failure(self.log_path, offset=node.log_offset)

    def _runtime_port(self) -> int:
        """The local port for the node's ClientApps: the one asked for, if free, else any free one.

        Raises:
            FlowerRuntimeError: the port asked for is taken (another node on this machine?).
        """
        if self.runtime_port is None:
            return free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", self.runtime_port))
            except OSError:
                raise FlowerRuntimeError(
                    f"site {self.site.site}: local port {self.runtime_port} (--runtime-port) is already in use, "
                    "perhaps by another node on this machine; choose another port or leave --runtime-port out "
                    "to take a free one"
                ) from None
        return self.runtime_port

    def _guarded_environment(self) -> dict[str, str]:
        """Flower's environment with fedmed's wrappers first on PATH (fedmed.deploy.wrappers).

        Flower's SuperExec starts every ClientApp as ``flwr-clientapp``: the guard checks
        the bundle against the hospital's approved_code before any of it is installed.
        """
        bin_dir = write_wrappers(self.home / "bin", guard_clientapps=True)
        env = flower_environment(self.home)
        env.update({
            "PATH": os.pathsep.join([str(bin_dir), env["PATH"]]),
            clientapp.POLICY_ENV: str(self.policy),
            clientapp.SITE_ENV: self.site.site,
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(TASK_POLL_SECONDS),  # Flower's default: 1 s
        })
        return env

    @property
    def running(self) -> bool:
        return self._node is not None and self._node.running

    def wait(self) -> int:
        assert self._node is not None
        return self._node.process.wait()

    def kill(self) -> None:
        """Stop the node at once (SIGKILL), as a crash or a power cut would."""
        assert self._node is not None
        self._node.process.kill()
        self._node.process.wait()

    def stop(self) -> None:
        if self._node is not None:
            self._node, node = None, self._node
            node.stop(grace=10.0)


REFUSED_KEY = "does not know this site's key"
TASK_POLL_SECONDS = 0.1
"""How often the node's SuperExec looks for a message to start a ClientApp for."""


JOINED = "SuperNode ID:"
"""What Flower's SuperNode logs once the SuperLink has accepted it (activated its node id)."""


def _joined(log_path: Path, *, offset: int) -> bool:
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            return JOINED.encode() in log.read()
    except FileNotFoundError:
        return False


def connection_failure(log_path: Path, *, offset: int = 0) -> str:
    """Why a SuperNode could not join, in words, from its log (from ``offset`` on)."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", errors="replace")
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "the SuperLink's TLS certificate is not signed by this site's ca.crt (wrong consortium or CA)"
    if "2004" in text or "No SuperNode found" in text:
        return f"the SuperLink {REFUSED_KEY}: it is not registered (or the node was restarted within a minute)"
    if "2001" in text:
        return "the SuperLink requires SuperNode authentication and this node has no key"
    if "address already in use" in text.lower():
        return "a local port it needs is already in use (another node on this machine?); see " + str(log_path)
    lines = [line for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-3:]) or "no output"
