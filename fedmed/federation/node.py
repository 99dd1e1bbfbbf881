"""Which hospital a node is, and the protocol steps that need nothing heavier.

In deployment every message starts a fresh ClientApp process. Training needs torch,
MONAI and Opacus; the secure-aggregation steps need only this module, so they answer in
a fraction of the time. The site's training and evaluation live in ``site.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context, Error, Message

from fedmed.config import load_config, load_site_policy
from fedmed.errors import ConfigError, FedmedError, PrivacyError
from fedmed.federation.identity import identity_record
from fedmed.federation.messages import ErrorCode, Key
from fedmed.federation.secure_rounds import site_step
from fedmed.secure.approval import check_code_approval
from fedmed.secure.keys import load_or_create_signing_key, load_signing_key
from fedmed.secure.manifest import MANIFEST_FILE, load_manifest
from fedmed.secure.secagg import Manifest

log = logging.getLogger("fedmed.site")

SIGNING_KEY_FILE = "keys/site-ed25519.pem"
CACHE_DIR = "cache"
DECISIONS_LOG = "node.log"
"""In the site's state folder: every decision the node made (approval, terms, budget, what it sent)."""


@dataclass(frozen=True)
class Site:
    """Where one hospital's data and state live."""

    site_id: str
    data_dir: Path
    state_dir: Path
    """The site's own disk for privacy books, ledger and keys; outlives runs."""
    cache_dir: Path | None
    policy_path: Path | None
    signing_key: Path
    manifest_path: Path | None = None
    """The consortium's key manifest: peers' identity keys for secure aggregation."""
    simulated: bool = False

    @property
    def image_cache(self) -> Path:
        """Decoded images: patient data, so in the site's own state folder unless configured."""
        return self.cache_dir or self.state_dir / CACHE_DIR


def resolve_site(context: Context) -> Site:
    """Identify this node's site from its node config.

    At a hospital the node config names the site and its folders. In simulation each
    virtual node has only a ``partition-id``, which indexes the experiment's site list.

    Raises:
        ConfigError: the node config names neither a site nor a partition.
    """
    node, run = context.node_config, context.run_config
    if Key.SITE_ID in node:
        try:
            state_dir = Path(str(node[Key.STATE_DIR]))
            return Site(
                site_id=str(node[Key.SITE_ID]),
                data_dir=Path(str(node[Key.DATA_DIR])),
                state_dir=state_dir,
                cache_dir=Path(str(node[Key.CACHE_DIR])) if Key.CACHE_DIR in node else None,
                policy_path=Path(str(node[Key.POLICY_PATH])) if Key.POLICY_PATH in node else None,
                signing_key=Path(str(node.get(Key.SIGNING_KEY, state_dir / SIGNING_KEY_FILE))),
                manifest_path=Path(str(node[Key.MANIFEST_PATH])) if Key.MANIFEST_PATH in node else None,
            )
        except KeyError as missing:
            raise ConfigError(f"node config of site {node[Key.SITE_ID]} lacks {missing}") from None
    if Key.PARTITION_ID in node and Key.CONFIG_PATH in run:
        config = load_config(str(run[Key.CONFIG_PATH]))
        site_id = config.data.sites[int(node[Key.PARTITION_ID])]
        state_dir = config.state_root / site_id
        return Site(
            site_id=site_id,
            data_dir=config.data.root / site_id,
            state_dir=state_dir,
            cache_dir=config.data.cache_dir,
            policy_path=config.simulation.policy_for(site_id),
            signing_key=state_dir / SIGNING_KEY_FILE,
            manifest_path=config.state_root / MANIFEST_FILE,
            simulated=True,
        )
    raise ConfigError("node config names no site: set site-id, data-dir and state-dir")


def reply_or_refuse(
    msg: Message, context: Context, handler: Callable[[Message, Context, Site], Message]
) -> Message:
    """Check the code is approved, run ``handler``, sign the reply; a refusal becomes an error reply.

    Every message type passes the same checks: approval first, before the handler reads
    anything, and the reply carries the site's signed identity (fedmed.federation.identity),
    since the server must not take a site's name from what a message says.
    """
    try:
        site = resolve_site(context)
    except FedmedError as error:
        return _refuse(msg, f"unknown site: {error}")
    with _decisions_logged_to(site.state_dir / DECISIONS_LOG):
        try:
            log.info("site %s: %s message for run %s", site.site_id, msg.metadata.message_type, msg.metadata.run_id)
            _check_approved(site)
            reply = handler(msg, context, site)
            reply.content[Key.IDENTITY] = identity_record(
                signing_key(site), site=site.site_id, run=msg.metadata.run_id, node=context.node_id,
                request=msg.metadata.message_id,
            )
            return reply
        except FedmedError as error:
            return _refuse(msg, str(error) if site.site_id in str(error) else f"site {site.site_id}: {error}")


def _refuse(msg: Message, reason: str) -> Message:
    log.error("refusing: %s", reason)
    return Message(Error(code=ErrorCode.SITE_REFUSED, reason=reason), reply_to=msg)


def _check_approved(site: Site) -> None:
    """The hospital approved the code running here (a node without a policy runs nothing)."""
    if site.policy_path is None:
        raise PrivacyError(
            f"site {site.site_id} has no privacy policy: set policy-path in its node config "
            "(simulation: simulation.site_policy); refusing to run"
        )
    policy = load_site_policy(site.policy_path, check_models=False)
    check_code_approval(policy, site=site.site_id, simulated=site.simulated)
    if policy.approved_code is None:  # only a simulated site gets here without approved_code
        log.info("site %s (simulated): its policy lists no approved_code, so the code is not checked", site.site_id)
    else:
        log.info("site %s: the code running here is approved by its policy", site.site_id)


@contextmanager
def _decisions_logged_to(path: Path) -> Iterator[None]:
    """While one message is handled, append fedmed's log lines (info and up) to the site's own log.

    Scoped to the message: a process that serves several simulated sites writes each
    site's lines to that site's file only.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("fedmed")
    level = logger.level
    logger.addHandler(handler)
    if not level or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def signing_key(site: Site) -> Ed25519PrivateKey:
    """The site's Ed25519 key: provisioned at a hospital, made on first use in simulation."""
    if site.simulated:
        return load_or_create_signing_key(site.signing_key)
    return load_signing_key(site.signing_key)


def secure_aggregation_round(msg: Message, context: Context) -> Message:
    """Handle one secure-aggregation step for the update this site holds back."""
    return reply_or_refuse(msg, context, _secure_step)


def _secure_step(msg: Message, context: Context, site: Site) -> Message:
    def manifest() -> Manifest:
        if site.manifest_path is None:
            raise ConfigError(
                f"site {site.site_id} has no consortium key manifest: set manifest-path in its node config"
            )
        return load_manifest(site.manifest_path)

    content = site_step(msg, context.state, identity=signing_key(site), manifest=manifest)
    return Message(content=content, reply_to=msg)
