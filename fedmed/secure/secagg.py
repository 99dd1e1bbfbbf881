"""Secure aggregation: the server learns the sum of the sites' updates and nothing else.

Pairwise masking with dropout recovery (Bonawitz et al., CCS 2017) on a complete graph,
with the signed advertisements and consistency check of its malicious-server variant.
Each round, for participants U1 ⊇ U2 ⊇ U3 and threshold t (a majority of U1):

1. advertise: each site makes two X25519 key pairs, one to encrypt shares and one to
   agree masks, and signs them with its Ed25519 identity key, bound to run and round.
2. share: each site checks every advert against the consortium's key manifest, splits its
   self-mask seed and its mask private key t-of-n among U1 (itself included, as in the
   paper: with three sites that is what lets one drop out) and encrypts each holder's
   shares to that holder.
3. mask: each site in U2 decrypts the shares sent to it and sends
   encode(update) + self mask + pairwise masks, all mod 2^32.
4. confirm: each site in U3 signs the list of sites whose masked inputs the server holds.
5. reveal: shown at least t signatures on that same list, a site reveals, for each peer,
   the self-mask share if the peer is on it or the mask-key share if it dropped: never
   both, and only once per round.

The server then strips the living sites' self masks and the pairwise masks that dropped
sites left behind. Everything a site signs or encrypts names the run, the round and the
sites involved, so nothing replays into another round.

This module is transport-free: plain bytes and numpy arrays in and out; Flower wiring
lives in ``fedmed.federation.secure_rounds``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedmed.errors import FedmedError
from fedmed.secure.ring import RING, add_mask
from fedmed.secure.sharing import SECRET_BYTES, combine_shares, split_secret

PROTOCOL = "fedmed-secagg-v1"
SIGNATURE_BYTES = 64
_RAW = serialization.Encoding.Raw


class SecureAggregationError(FedmedError):
    """A site refuses a protocol step; the message says what was wrong."""


class RoundAbandoned(FedmedError):
    """The server cannot complete the round's sum; nothing was unmasked."""


Manifest = Mapping[str, Ed25519PublicKey]
"""Site id to Ed25519 identity key, from the consortium's key manifest (not from the server)."""


def majority(n_sites: int) -> int:
    """The threshold fedmed uses and sites insist on: more than half the participants."""
    return n_sites // 2 + 1


# --- signed statements -------------------------------------------------------------


def _sign(key: Ed25519PrivateKey, fields: dict) -> bytes:
    payload = json.dumps({"protocol": PROTOCOL, **fields}, sort_keys=True, separators=(",", ":")).encode()
    return key.sign(payload) + payload


def _open(blob: bytes, manifest: Manifest, *, kind: str, run: str, round: int) -> dict:
    """Verify a signed statement and return its fields.

    Raises:
        SecureAggregationError: malformed, unknown signer, bad signature, wrong kind, or
            made for another run or round.
    """
    signature, payload = blob[:SIGNATURE_BYTES], blob[SIGNATURE_BYTES:]
    try:
        fields = json.loads(payload)
        site = str(fields["site"])
    except (ValueError, KeyError, TypeError):
        raise SecureAggregationError(f"a {kind} statement is malformed") from None
    key = manifest.get(site)
    if key is None:
        raise SecureAggregationError(f"a {kind} names site {site!r}, which is not in the consortium's key manifest")
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise SecureAggregationError(f"the signature on site {site}'s {kind} does not verify: it was altered") from None
    if fields.get("protocol") != PROTOCOL or fields.get("kind") != kind:
        raise SecureAggregationError(f"site {site}'s statement is not a {PROTOCOL} {kind}")
    if fields.get("run") != run or fields.get("round") != round:
        raise SecureAggregationError(
            f"site {site}'s {kind} is for run {fields.get('run')} round {fields.get('round')}, "
            f"not run {run} round {round}: replayed or stale, rejected"
        )
    return fields


def _derive(secret: bytes, *context: object) -> bytes:
    info = "|".join([PROTOCOL, *map(str, context)]).encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _agree(private: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise SecureAggregationError("an advertised X25519 key is invalid (low order or malformed)") from None


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _raw_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def pair_mask_key(private: bytes, public: bytes, *, run: str, round: int, pair: tuple[str, str]) -> bytes:
    low, high = sorted(pair)
    return _derive(_agree(private, public), "pair-mask", run, round, low, high)


def self_mask_key(seed: bytes, *, run: str, round: int, site: str) -> bytes:
    return _derive(seed, "self-mask", run, round, site)


def _share_cipher(private: bytes, public: bytes, *, run: str, round: int, sender: str, recipient: str) -> tuple[ChaCha20Poly1305, bytes]:
    label = (run, round, sender, recipient)
    return ChaCha20Poly1305(_derive(_agree(private, public), "share", *label)), "|".join(map(str, label)).encode()


# --- the site's side ---------------------------------------------------------------


@dataclass
class SiteSession:
    """One site's secrets and progress in one round; survives between messages as bytes."""

    site: str
    run: str
    round: int
    channel_key: bytes
    mask_key: bytes
    self_seed: bytes
    advert: bytes
    stage: str = "advertised"
    threshold: int = 0
    participants: list[str] = field(default_factory=list)
    channel_public: dict[str, bytes] = field(default_factory=dict)
    mask_public: dict[str, bytes] = field(default_factory=dict)
    shares: dict[str, bytes] = field(default_factory=dict)
    """Shares held for each peer: self-mask seed share + mask-key share."""
    survivors: list[str] = field(default_factory=list)

    @classmethod
    def begin(cls, *, site: str, run: str, round: int, identity: Ed25519PrivateKey) -> SiteSession:
        """New round keys and the signed advert (step 1)."""
        channel, mask, seed = X25519PrivateKey.generate(), X25519PrivateKey.generate(), os.urandom(SECRET_BYTES)
        advert = _sign(identity, {
            "kind": "advert", "site": site, "run": run, "round": round,
            "channel": _raw_public(_raw_private(channel)).hex(),
            "mask": _raw_public(_raw_private(mask)).hex(),
            "seed_digest": hashlib.sha256(seed).hexdigest(),
        })
        return cls(site, run, round, _raw_private(channel), _raw_private(mask), seed, advert)

    def _expect(self, stage: str, step: str) -> None:
        if self.stage != stage:
            raise SecureAggregationError(
                f"site {self.site} is at step '{self.stage}' of round {self.round}; "
                f"refusing '{step}', which must follow '{stage}'"
            )

    def share(self, adverts: Iterable[bytes], *, threshold: int, manifest: Manifest) -> dict[str, bytes]:
        """Check the round's adverts; return this site's encrypted shares for each holder (step 2)."""
        self._expect("advertised", "share")
        adverts = list(adverts)
        if self.advert not in adverts:
            raise SecureAggregationError(
                f"site {self.site}'s own advert is missing or altered in the server's list; refusing to share"
            )
        opened = [_open(blob, manifest, kind="advert", run=self.run, round=self.round) for blob in adverts]
        sites = [f["site"] for f in opened]
        if len(set(sites)) != len(sites):
            raise SecureAggregationError(f"the server lists a site twice among {sorted(sites)}; refusing to share")
        n = len(sites)
        if n < 2 or not majority(n) <= threshold <= n:
            raise SecureAggregationError(
                f"the server asks for threshold {threshold} of {n} sites; a site shares only with at least 2 "
                f"sites and a threshold above half of them ({majority(n)}..{n}), so that a server lying about "
                "who dropped cannot collect both secrets of one site"
            )
        self.threshold, self.participants = threshold, sorted(sites)
        for f in opened:
            self.channel_public[f["site"]] = bytes.fromhex(f["channel"])
            self.mask_public[f["site"]] = bytes.fromhex(f["mask"])
        seed_shares = split_secret(self.self_seed, threshold=threshold, holders=n)
        key_shares = split_secret(self.mask_key, threshold=threshold, holders=n)
        sealed = {}
        for holder, seed_share, key_share in zip(self.participants, seed_shares, key_shares, strict=True):
            cipher, aad = _share_cipher(
                self.channel_key, self.channel_public[holder],
                run=self.run, round=self.round, sender=self.site, recipient=holder,
            )
            nonce = os.urandom(12)
            sealed[holder] = nonce + cipher.encrypt(nonce, seed_share + key_share, aad)
        self.stage = "shared"
        return sealed

    def mask(self, sealed: Mapping[str, bytes], encoded: np.ndarray) -> np.ndarray:
        """Keep the shares sent to this site; return its masked input (step 3).

        The senders of ``sealed`` are the sites that completed step 2; this site masks
        against exactly those.
        """
        self._expect("shared", "mask")
        senders = set(sealed)
        if self.site not in senders or not senders <= set(self.participants) or len(senders) < self.threshold:
            raise SecureAggregationError(
                f"the server forwards shares from {sorted(senders)}: not a set of at least {self.threshold} "
                f"of this round's sites that includes {self.site}; refusing to send a masked input"
            )
        for sender in sorted(senders):
            cipher, aad = _share_cipher(
                self.channel_key, self.channel_public[sender],
                run=self.run, round=self.round, sender=sender, recipient=self.site,
            )
            blob = sealed[sender]
            try:
                self.shares[sender] = cipher.decrypt(blob[:12], blob[12:], aad)
            except InvalidTag:
                raise SecureAggregationError(
                    f"the shares from site {sender} do not decrypt: altered, or replayed from another round"
                ) from None
        masked = np.array(encoded, dtype=RING, copy=True)
        add_mask(masked, self_mask_key(self.self_seed, run=self.run, round=self.round, site=self.site))
        for peer in sorted(senders - {self.site}):
            key = pair_mask_key(self.mask_key, self.mask_public[peer], run=self.run, round=self.round, pair=(self.site, peer))
            add_mask(masked, key, subtract=self.site > peer)
        self.stage = "masked"
        return masked

    def confirm(self, survivors: Iterable[str], *, identity: Ed25519PrivateKey) -> bytes:
        """Sign the list of sites whose masked inputs the server says it holds (step 4)."""
        self._expect("masked", "confirm")
        survivors = sorted(set(survivors))
        if self.site not in survivors or not set(survivors) <= set(self.shares) or len(survivors) < self.threshold:
            raise SecureAggregationError(
                f"the survivor list {survivors} is not a set of at least {self.threshold} sites that sent "
                f"shares to {self.site} and includes it; refusing to confirm"
            )
        self.survivors, self.stage = survivors, "confirmed"
        return _sign(identity, {"kind": "confirm", "site": self.site, "run": self.run, "round": self.round, "survivors": survivors})

    def reveal(self, *, alive: Iterable[str], dropped: Iterable[str], confirmations: Iterable[bytes], manifest: Manifest) -> dict[str, bytes]:
        """This site's share for each peer: self-mask share if alive, mask-key share if dropped (step 5).

        Raises:
            SecureAggregationError: a site listed both alive and dropped, lists that differ from
                what this site confirmed, fewer than t valid confirmations, or a second request.
        """
        self._expect("confirmed", "reveal")
        alive, dropped = list(alive), list(dropped)
        if both := set(alive) & set(dropped):
            raise SecureAggregationError(
                f"the server lists {sorted(both)} as both alive and dropped; revealing nothing"
            )
        if sorted(set(alive)) != self.survivors or len(alive) != len(set(alive)):
            raise SecureAggregationError(
                f"the server's alive list {sorted(alive)} differs from the survivors {self.survivors} "
                f"site {self.site} confirmed; revealing nothing"
            )
        if sorted(set(dropped)) != sorted(set(self.shares) - set(alive)) or len(dropped) != len(set(dropped)):
            raise SecureAggregationError(
                f"the server's dropped list {sorted(dropped)} is not the sites that shared but did not "
                f"survive ({sorted(set(self.shares) - set(alive))}); revealing nothing"
            )
        signers = set()
        for blob in confirmations:
            fields = _open(blob, manifest, kind="confirm", run=self.run, round=self.round)
            if fields["survivors"] != self.survivors:
                raise SecureAggregationError(
                    f"site {fields['site']} confirmed survivors {fields['survivors']}, not {self.survivors}: "
                    "the server told sites different stories; revealing nothing"
                )
            signers.add(fields["site"])
        if not signers <= set(self.survivors) or len(signers) < self.threshold:
            raise SecureAggregationError(
                f"only {len(signers & set(self.survivors))} survivor(s) confirmed the list, fewer than the "
                f"threshold {self.threshold}; revealing nothing"
            )
        self.stage = "revealed"
        half = SECRET_BYTES
        return {peer: self.shares[peer][:half] for peer in alive} | {peer: self.shares[peer][half:] for peer in dropped}

    def to_bytes(self) -> bytes:
        """The session as JSON bytes, to keep in the site's Flower context between messages."""
        def encode(value: object) -> object:
            if isinstance(value, bytes):
                return {"hex": value.hex()}
            if isinstance(value, dict):
                return {k: encode(v) for k, v in value.items()}
            return value
        return json.dumps({k: encode(v) for k, v in asdict(self).items()}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SiteSession:
        def decode(value: object) -> object:
            if isinstance(value, dict):
                return bytes.fromhex(value["hex"]) if set(value) == {"hex"} else {k: decode(v) for k, v in value.items()}
            return value
        return cls(**{k: decode(v) for k, v in json.loads(data).items()})


# --- the server's side -------------------------------------------------------------


class ServerSession:
    """The server's view of one round: it relays, counts, and unmasks only the sum."""

    def __init__(self, *, run: str, round: int, manifest: Manifest, min_sites: int = 2) -> None:
        self.run, self.round, self.manifest, self.min_sites = run, round, manifest, min_sites
        self.adverts: dict[str, dict] = {}
        self.threshold = 0
        self.shared: list[str] = []
        self.survivors: list[str] = []
        self.masked_sum: np.ndarray | None = None

    def _enough(self, sites: Iterable[str], step: str) -> list[str]:
        sites = sorted(sites)
        if len(sites) < self.threshold:
            raise RoundAbandoned(
                f"round {self.round}: only {len(sites)} site(s) {step}, fewer than the secure-aggregation "
                f"threshold {self.threshold}; the round is abandoned and nothing was unmasked"
            )
        return sites

    def accept_adverts(self, adverts: Mapping[str, bytes]) -> dict[str, str]:
        """Keep the sites whose adverts verify; return the others with the reason.

        Sets the round's threshold: a majority of the accepted sites, and never fewer than
        the run's minimum, so a round never aggregates fewer sites than the run allows.
        """
        rejected = {}
        for site, blob in adverts.items():
            try:
                fields = _open(blob, self.manifest, kind="advert", run=self.run, round=self.round)
            except SecureAggregationError as error:
                rejected[site] = str(error)
                continue
            if fields["site"] != site:
                rejected[site] = f"the advert from site {site} is signed as site {fields['site']}"
                continue
            self.adverts[site] = fields
        self.threshold = max(2, self.min_sites, majority(len(self.adverts)))
        self._enough(self.adverts, "advertised valid keys")
        return rejected

    def route_shares(self, sealed: Mapping[str, Mapping[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """Turn each sender's shares-by-holder into each holder's shares-by-sender."""
        self.shared = self._enough((s for s in sealed if s in self.adverts), "sent their shares")
        return {holder: {sender: sealed[sender][holder] for sender in self.shared if holder in sealed[sender]} for holder in self.shared}

    def accept_masked(self, masked: Mapping[str, np.ndarray]) -> list[str]:
        """Add up the masked inputs; return the survivors (U3) for the sites to confirm."""
        in_ring = (s for s in masked if s in self.shared and masked[s].dtype == RING)
        survivors = self._enough(in_ring, "sent masked inputs")
        lengths = {masked[s].size for s in survivors}
        if len(lengths) != 1:
            raise RoundAbandoned(f"round {self.round}: masked inputs differ in length {sorted(lengths)}; abandoned")
        total = np.zeros(lengths.pop(), dtype=RING)
        for site in survivors:
            total += masked[site]
        self.survivors, self.masked_sum = survivors, total
        return survivors

    def accept_confirmations(self, confirmations: Mapping[str, bytes]) -> list[bytes]:
        """The valid confirmations of the survivor list, to show every survivor."""
        valid = {}
        for site, blob in confirmations.items():
            try:
                fields = _open(blob, self.manifest, kind="confirm", run=self.run, round=self.round)
            except SecureAggregationError:
                continue
            if fields["site"] == site and fields["survivors"] == self.survivors:
                valid[site] = blob
        return [valid[site] for site in self._enough(valid, "confirmed the survivor list")]

    @property
    def dropped(self) -> list[str]:
        return sorted(set(self.shared) - set(self.survivors))

    def unmask(self, revealed: Mapping[str, Mapping[str, bytes]]) -> np.ndarray:
        """The sum of the survivors' encoded updates, from at least t sites' revealed shares."""
        index = {site: i + 1 for i, site in enumerate(sorted(self.adverts))}
        revealers = self._enough((s for s in revealed if s in self.survivors), "revealed their shares")
        total = self.masked_sum.copy()
        for owner in self.survivors:
            seed = self._rebuild(owner, revealed, revealers, index)
            if hashlib.sha256(seed).hexdigest() != self.adverts[owner]["seed_digest"]:
                raise RoundAbandoned(f"round {self.round}: shares of site {owner}'s self-mask seed do not rebuild it")
            add_mask(total, self_mask_key(seed, run=self.run, round=self.round, site=owner), subtract=True)
        for gone in self.dropped:
            key = self._rebuild(gone, revealed, revealers, index)
            if _raw_public(key).hex() != self.adverts[gone]["mask"]:
                raise RoundAbandoned(f"round {self.round}: shares of dropped site {gone}'s mask key do not rebuild it")
            for site in self.survivors:  # take back what each survivor added for its pair with `gone`
                peer_key = bytes.fromhex(self.adverts[site]["mask"])
                pair_key = pair_mask_key(key, peer_key, run=self.run, round=self.round, pair=(site, gone))
                add_mask(total, pair_key, subtract=site < gone)
        return total

    def _rebuild(self, owner: str, revealed: Mapping[str, Mapping[str, bytes]], revealers: list[str], index: dict[str, int]) -> bytes:
        shares = {index[r]: revealed[r][owner] for r in revealers if owner in revealed[r]}
        if len(shares) < self.threshold:
            raise RoundAbandoned(
                f"round {self.round}: only {len(shares)} share(s) of site {owner}'s secret came back, "
                f"fewer than {self.threshold}; abandoned"
            )
        return combine_shares(dict(list(shares.items())[: self.threshold]))
