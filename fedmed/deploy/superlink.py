"""`fedmed server start`: the consortium's SuperLink, with TLS and SuperNode authentication.

Flower 1.42 serves the Fleet (hospitals), Control (``flwr`` commands) and ServerApp APIs on
one HTTPS port. Only SuperNodes whose key was provisioned for a site are registered, so
no other node can join. The Control API has no authentication of its own in this Flower
version: anyone who trusts the CA and reaches the port can submit a run, so the port
belongs behind a firewall that admits the hospitals and the coordinator only.
"""

from __future__ import annotations

import json
import os
import ssl

from fedmed.deploy.provision import Consortium
from fedmed.deploy.wrappers import write_wrappers
from fedmed.federation.runtime import (
    FlowerConnection,
    FlowerRuntimeError,
    LoggedProcess,
    flower_bin,
    flower_environment,
    wait_healthy,
)

ALREADY_REGISTERED = "[code: 23]"


class SuperLink:
    """flower-superlink for a consortium folder; a context manager that stops it all.

    Its state (registered nodes, runs) lives in a SQLite file under ``server/state``, so a
    restart keeps the hospitals' registrations and running nodes reconnect by themselves.
    """

    def __init__(self, consortium: Consortium, *, bind: str = "127.0.0.1", port: int | None = None) -> None:
        self.consortium = consortium
        self.bind = bind
        self.port = port or int(consortium.read()["superlink"]["port"])
        self.state = consortium.server / "state"
        self.home = self.state / "flwr"
        self.log_path = self.state / "superlink.log"
        self.env = flower_environment(self.home)
        self._link: LoggedProcess | None = None

    @property
    def local_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connection(self) -> FlowerConnection:
        """The ``flwr`` command connected to this SuperLink over TLS (from this machine)."""
        return FlowerConnection(self.home, self.env, self.local_address, root_certificates=self.consortium.ca_cert)

    def __enter__(self) -> SuperLink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start, wait until healthy, register every site's SuperNode key.

        Raises:
            FlowerRuntimeError: the SuperLink did not start, or a key was refused.
        """
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        bin_dir = write_wrappers(self.home / "bin", guard_clientapps=False)  # its SuperExec dies with it
        self.env["PATH"] = os.pathsep.join([str(bin_dir), self.env["PATH"]])
        c = self.consortium
        self._link = LoggedProcess(
            [
                flower_bin("flower-superlink"),
                "--ssl-ca-certfile", str(c.ca_cert), "--ssl-certfile", str(c.server_cert),
                "--ssl-keyfile", str(c.server_key),
                "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                "--host", self.bind, "--port", str(self.port), "--database", str(self.state / "superlink.db"),
            ],
            env=self.env, cwd=self.state, log_path=self.log_path,
        )
        try:
            context = ssl.create_default_context(cafile=str(c.ca_cert))
            wait_healthy(
                self._link.process, f"https://{self.local_address}/health",
                log_path=self.log_path, timeout=60.0, context=context,
            )
            self.register_sites()
        except BaseException:
            self.stop()
            raise

    def register_sites(self) -> list[str]:
        """Register each provisioned site's SuperNode public key; return the new ones."""
        connection, added = self.connection(), []
        for site in self.consortium.sites():
            key = self.consortium.supernode_public_key(site)
            if not key.exists():  # a coordinator that no longer holds a site's folder
                key = self.state / f"{site}.pub"
                key.write_text(self.consortium.read()["sites"][site]["supernode_auth_key"] + "\n", encoding="ascii")
            done = connection.flwr("supernode", "register", str(key), "--name", site, "--format", "json")
            if ALREADY_REGISTERED in done.stdout + done.stderr:
                continue
            try:
                if json.loads(done.stdout).get("success"):
                    added.append(site)
                    continue
            except json.JSONDecodeError:
                pass
            raise FlowerRuntimeError(
                f"the SuperLink refused site {site}'s SuperNode key: {(done.stdout + done.stderr).strip()}"
            )
        return added

    def wait(self) -> int:
        """Block until the SuperLink exits (Ctrl-C stops it); return its exit code."""
        assert self._link is not None
        return self._link.process.wait()

    def stop(self) -> None:
        if self._link is not None:
            self._link, link = None, self._link
            link.stop()
