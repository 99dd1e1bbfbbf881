"""Which site sent a reply: proven by its signature, never taken from what the reply says.

Every reply a site sends carries a statement signed with its Ed25519 identity key over
the run, the node it runs on and the id of the message it answers. The server checks it
against the consortium's key manifest, so a node cannot pose as another site, and then
binds the node to that site for the rest of the run: a node answers for one site only. (A
site whose node restarts answers from a new node; its key, not its node, is what counts.)
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message

from fedmed.errors import FedmedError
from fedmed.federation.messages import Key
from fedmed.secure.secagg import Manifest
from fedmed.secure.statements import StatementError, open_statement, sign_statement

PROTOCOL = "fedmed-reply-v1"


class UnverifiedSite(FedmedError):
    """A reply whose sender could not be verified; the server ignores what it says."""


def identity_record(key: Ed25519PrivateKey, *, site: str, run: int, node: int, request: str) -> ConfigRecord:
    """The signed statement a site adds to every reply it sends."""
    statement = sign_statement(
        key, protocol=PROTOCOL, kind="reply", site=site, run=int(run), node=int(node), request=request
    )
    return ConfigRecord({Key.SITE_ID: site, Key.SIGNATURE: statement})


class SiteRegistry:
    """The server's record of which node is which site, from verified replies only."""

    def __init__(self, manifest: Manifest, sites: Iterable[str]) -> None:
        sites = list(sites)
        missing = sorted(set(sites) - set(manifest))
        if missing:
            raise FedmedError(
                f"site(s) {', '.join(missing)} of this run have no key in the consortium's key manifest; the "
                "server could not tell them from an impostor: add them (fedmed provision) or leave them out"
            )
        self.keys = {site: manifest[site] for site in sites}
        self.node_sites: dict[int, str] = {}

    def identify(self, reply: Message) -> str:
        """The site that signed ``reply``, now bound to the node it came from.

        Raises:
            UnverifiedSite: no statement, a bad one (another site's key, run, node or
                message), or a node answering as a second site.
        """
        node = int(reply.metadata.src_node_id)
        try:
            blob = bytes(reply.content[Key.IDENTITY][Key.SIGNATURE])
        except (KeyError, TypeError):
            raise UnverifiedSite(f"node {node}'s reply carries no signed site identity; ignored") from None
        expect = {"run": int(reply.metadata.run_id), "node": node, "request": reply.metadata.reply_to_message_id}
        try:
            fields = open_statement(blob, self.keys, protocol=PROTOCOL, kind="reply", expect=expect)
        except StatementError as error:
            raise UnverifiedSite(f"node {node}'s reply: {error}; ignored") from None
        site = str(fields["site"])
        bound = self.node_sites.setdefault(node, site)
        if bound != site:
            raise UnverifiedSite(f"node {node} answered as site {bound} before and now as {site}; ignored")
        return site
