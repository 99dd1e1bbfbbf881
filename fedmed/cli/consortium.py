"""`fedmed provision`, `fedmed server start`, `fedmed node start`, `fedmed run`: a real consortium."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedmed.cli.simulate import follow_run
from fedmed.config import load_config, load_site_policy
from fedmed.data import check_folder, render_report
from fedmed.deploy.budget import budget_report
from fedmed.deploy.provision import DEFAULT_PORT, Consortium, provision
from fedmed.deploy.run import run_on_consortium
from fedmed.deploy.superlink import SuperLink
from fedmed.deploy.supernode import SiteFolder, SuperNode, what_leaves
from fedmed.errors import ConfigError, DataError
from fedmed.federation.node import CACHE_DIR
from fedmed.federation.runtime import interrupt_on_sigterm

console = Console(highlight=False, soft_wrap=True)
server_app = typer.Typer(no_args_is_help=True, help="The consortium's SuperLink (run by the coordinator).")
node_app = typer.Typer(no_args_is_help=True, help="A hospital's SuperNode.")


def provision_consortium(
    consortium_dir: Annotated[Path, typer.Argument(help="Folder for the consortium's keys and certificates.")],
    sites: Annotated[str, typer.Option("--sites", help="Site names, comma-separated: a,b,c.")],
    server_host: Annotated[
        str, typer.Option("--server-host", help="Host name or IP the hospitals reach the SuperLink at.")
    ],
    port: Annotated[int, typer.Option("--port", help="The SuperLink's port.")] = DEFAULT_PORT,
) -> None:
    """Create the consortium CA, the SuperLink's certificate and every site's keys (keeps existing ones)."""
    consortium = provision(
        consortium_dir, sites=[s.strip() for s in sites.split(",") if s.strip()], server_host=server_host,
        port=port, announce=lambda text: console.print(f"[dim]{text}[/]"),
    )
    console.print(f"consortium ready in {consortium.root}; SuperLink at {consortium.address()}")
    console.print("hand each hospital its own folder sites/<site>; keep ca/ca.key with the coordinator only")


@server_app.command("start")
def start_server(
    consortium_dir: Annotated[Path, typer.Argument(help="The folder `fedmed provision` made.")],
    bind: Annotated[str, typer.Option(
        "--bind", help="Address to listen on; default loopback only. For hospitals on other machines give the "
        "address they reach (the Control API that `flwr run` uses shares the port and has no authentication).",
    )] = "127.0.0.1",
) -> None:
    """Run the SuperLink with TLS and SuperNode authentication until Ctrl-C or SIGTERM."""
    interrupt_on_sigterm()
    consortium = Consortium(consortium_dir)
    with SuperLink(consortium, bind=bind) as link:
        console.print(
            f"SuperLink listening on {bind}:{link.port} (TLS, SuperNode authentication) for sites "
            f"{', '.join(consortium.sites())}; log: {link.log_path}"
        )
        if bind in ("127.0.0.1", "localhost", "::1"):
            console.print(
                "[yellow]loopback only:[/] hospitals on other machines cannot reach it; for a real consortium pass "
                "--bind with the address they reach, and let only the hospitals and this machine reach the port"
            )
        else:
            console.print(
                f"[yellow]port {link.port} is open on {bind}:[/] the hospitals need it, and so does `flwr run`, whose "
                "Control API shares the port and has no authentication: let only the hospitals' addresses and "
                "this machine reach it (firewall)"
            )
        console.print(
            "telemetry, update checks and run-time dependency installation are off; Ctrl-C or SIGTERM stops it"
        )
        try:
            link.wait()
        except KeyboardInterrupt:
            console.print("stopping the SuperLink")


@node_app.command("start")
def start_node(
    site: Annotated[str, typer.Option("--site", help="This hospital's site name.")],
    consortium_dir: Annotated[Path, typer.Option("--consortium", help="The site's folder from the coordinator.")],
    data: Annotated[Path, typer.Option("--data", help="The site's DICOM folder with labels.csv.")],
    policy: Annotated[Path, typer.Option("--policy", help="The hospital's privacy policy YAML.")],
    state: Annotated[
        Path | None, typer.Option("--state", help="Privacy books and ledger; default <site folder>/state.")
    ] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Decoded-image cache.")] = None,
    runtime_port: Annotated[
        int | None, typer.Option("--runtime-port", help="Local port for the node's ClientApps; default: any free one.")
    ] = None,
    experiment: Annotated[Path | None, typer.Option(
        "--experiment",
        help="The planned experiment YAML (from the coordinator): say how many such runs the budget fits.",
    )] = None,
) -> None:
    """Check the data, say what will leave the site, then join the consortium until Ctrl-C or SIGTERM."""
    interrupt_on_sigterm()
    folder = SiteFolder.find(consortium_dir, site)
    terms = load_site_policy(policy)  # a bad policy fails here, not at the first round
    if terms.unsafe_accept_reproducible:
        raise ConfigError(
            f"{policy}: unsafe_accept_reproducible is for simulations only (it lets a server that seeds the DP "
            "noise remove it); a hospital's node refuses to start with it: remove the key"
        )
    report = check_folder(data)
    render_report(report, console)
    if not report.summary()["readable"]:
        raise DataError(f"{data}: no usable DICOM image; fix the folder before joining (see the list above)")
    console.print(what_leaves(terms))
    state_dir = state or folder.folder / "state"
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    console.print(budget_report(
        site=site, data_dir=data, cache_dir=cache or state_dir / CACHE_DIR, state_dir=state_dir,
        public_key=folder.folder / "site-ed25519.pub", policy=terms,
        experiment=load_config(experiment) if experiment is not None else None,
    ))
    node = SuperNode(
        folder, data_dir=data, policy=policy, state_dir=state_dir, cache_dir=cache, runtime_port=runtime_port
    )
    node.start(retry_for=75.0)
    console.print(
        f"site {site} joined the SuperLink at {node.superlink}; log: {node.log_path}, decisions: {node.decisions_log}; "
        "Ctrl-C or SIGTERM stops it"
    )
    try:
        node.wait()
    except KeyboardInterrupt:
        console.print("stopping the SuperNode")
    finally:
        node.stop()


def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    consortium_dir: Annotated[
        Path, typer.Option("--consortium", help="The consortium folder (on the SuperLink's machine).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder for results.json, model.pt and ledgers.")],
) -> None:
    """Train a federated model across the consortium's hospitals (DP and secure aggregation)."""
    follow_run(config, out, lambda experiment, on_event: run_on_consortium(
        experiment, config, out, Consortium(consortium_dir), on_event=on_event,
    ))
