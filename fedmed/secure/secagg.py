"""Secure aggregation: the server learns the sum of the sites' updates and nothing else.

Pairwise masking with dropout recovery (Bonawitz et al., CCS 2017) on a complete graph,
with the signed advertisements and consistency check of its malicious-server variant.
Each round, for participants U1 ⊇ U2 ⊇ U3 and threshold t:

1. advertise: each site makes two X25519 key pairs, one to encrypt shares and one to
   agree masks, and signs them, with its example count, under its Ed25519 identity key,
   bound to run and round.
2. share: each site checks every advert against the consortium's key manifest, the group
   size and the threshold, splits its self-mask seed and its mask private key t-of-n
   among U1 (itself included) and encrypts each holder's shares to that holder.
3. mask: each site in U2 decrypts the shares sent to it and sends
   encode(n_i / sum(n) * update) + self mask + pairwise masks, all mod 2^32, where the
   counts n come from the adverts it verified: no total the server sends weighs a site.
4. confirm: each site in U3 signs the round's transcript (a digest of every advert and
   the threshold), the senders U2 and the survivors U3.
5. reveal: shown at least t signatures on that same transcript and lists, a site
   reveals, for each peer, the self-mask share if the peer is in U3 or the mask-key share
   if it dropped: never both, and only once per round.

What a site insists on, whatever the server asks: at least :data:`MIN_GROUP` sites (and
its policy's ``min_secure_group``) in U1 and in U3, and t > 2n/3
(:func:`secure_threshold`). With t so, a server colluding with fewer than n/3 sites can
rebuild neither secret of an honest site (Bonawitz et al. 2017, section 6; Bell et al.
2020 use the same bound): every honest site reveals one share per peer, and two
survivor lists that each gather t signatures must share an honest signer.

The server then strips the living sites' self masks and the pairwise masks that dropped
sites left behind. Everything a site signs or encrypts names the run, the round and the
sites involved, and confirmations bind the round's fresh keys, so nothing replays into
another round or another session of the same one.

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
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedmed.errors import FedmedError
from fedmed.secure.ring import RING, add_mask, encode
from fedmed.secure.sharing import SECRET_BYTES, combine_shares, split_secret
from fedmed.secure.statements import StatementError, open_statement, sign_statement

PROTOCOL = "fedmed-secagg-v2"
MIN_GROUP = 3
"""No site is summed with fewer than three: with two, each learns the other's update from the model change."""
_RAW = serialization.Encoding.Raw


class SecureAggregationError(FedmedError):
    """A site refuses a protocol step; the message says what was wrong."""


class RoundAbandoned(FedmedError):
    """The server cannot complete the round's sum; nothing was unmasked."""


Manifest = Mapping[str, Ed25519PublicKey]
"""Site id to Ed25519 identity key, from the consortium's key manifest (not from the server)."""


def secure_threshold(n_sites: int) -> int:
    """The smallest threshold a site accepts among ``n_sites``: floor(2n/3) + 1.

    Tolerates a server colluding with fewer than n/3 of the sites, and n - t dropouts:
    none with 3 sites, one with 4 or 5, two with 6 or 7.
    """
    return 2 * n_sites // 3 + 1


def transcript_digest(adverts: Iterable[bytes], threshold: int) -> str:
    """What every confirmation binds: each advert of the round (fresh keys, counts) and t."""
    digest = hashlib.sha256(f"{PROTOCOL}|transcript|{threshold}".encode())
    for advert in sorted(bytes(a) for a in adverts):
        digest.update(hashlib.sha256(advert).digest())
    return digest.hexdigest()


# --- signed statements -------------------------------------------------------------


def _sign(key: Ed25519PrivateKey, kind: str, site: str, **fields: object) -> bytes:
    return sign_statement(key, protocol=PROTOCOL, kind=kind, site=site, **fields)


def _open(blob: bytes, manifest: Manifest, *, kind: str, run: str, round: int) -> dict:
    """Verify a signed statement of this run and round and return its fields.

    Raises:
        SecureAggregationError: malformed, unknown signer, bad signature, wrong kind, or
            made for another run or round.
    """
    try:
        return open_statement(blob, manifest, protocol=PROTOCOL, kind=kind, expect={"run": run, "round": round})
    except StatementError as error:
        raise SecureAggregationError(str(error)) from None


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


def _share_cipher(
    private: bytes, public: bytes, *, run: str, round: int, sender: str, recipient: str
) -> tuple[ChaCha20Poly1305, bytes]:
    label = (run, round, sender, recipient)
    return ChaCha20Poly1305(_derive(_agree(private, public), "share", *label)), "|".join(map(str, label)).encode()


def _examples(fields: Mapping[str, object]) -> int:
    count = fields.get("examples")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SecureAggregationError(f"site {fields.get('site')}'s advert gives no valid example count ({count!r})")
    return count


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
    examples: int
    """This site's training examples, as its advert states them."""
    min_group: int = MIN_GROUP
    """The smallest group the site's policy lets it be summed in (never below MIN_GROUP)."""
    stage: str = "advertised"
    threshold: int = 0
    transcript: str = ""
    participants: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    """Every participant's example count, from the advert it signed."""
    channel_public: dict[str, bytes] = field(default_factory=dict)
    mask_public: dict[str, bytes] = field(default_factory=dict)
    shares: dict[str, bytes] = field(default_factory=dict)
    """Shares held for each peer: self-mask seed share + mask-key share."""
    survivors: list[str] = field(default_factory=list)

    @classmethod
    def begin(
        cls, *, site: str, run: str, round: int, identity: Ed25519PrivateKey, examples: int, min_group: int = MIN_GROUP,
    ) -> SiteSession:
        """New round keys and the signed advert (step 1)."""
        channel, mask, seed = X25519PrivateKey.generate(), X25519PrivateKey.generate(), os.urandom(SECRET_BYTES)
        advert = _sign(
            identity, "advert", site, run=run, round=round, examples=int(examples),
            channel=_raw_public(_raw_private(channel)).hex(), mask=_raw_public(_raw_private(mask)).hex(),
            seed_digest=hashlib.sha256(seed).hexdigest(),
        )
        return cls(
            site, run, round, _raw_private(channel), _raw_private(mask), seed, advert, int(examples),
            max(MIN_GROUP, min_group),
        )

    def _expect(self, stage: str, step: str) -> None:
        if self.stage != stage:
            raise SecureAggregationError(
                f"site {self.site} is at step '{self.stage}' of round {self.round}; "
                f"refusing '{step}', which must follow '{stage}'"
            )

    def share(self, adverts: Iterable[bytes], *, threshold: int, manifest: Manifest) -> dict[str, bytes]:
        """Check the round's adverts, group and threshold; return this site's encrypted shares (step 2)."""
        self._expect("advertised", "share")
        adverts = [bytes(a) for a in adverts]
        if self.advert not in adverts:
            raise SecureAggregationError(
                f"site {self.site}'s own advert is missing or altered in the server's list; refusing to share"
            )
        opened = [_open(blob, manifest, kind="advert", run=self.run, round=self.round) for blob in adverts]
        sites = [f["site"] for f in opened]
        if len(set(sites)) != len(sites):
            raise SecureAggregationError(f"the server lists a site twice among {sorted(sites)}; refusing to share")
        n = len(sites)
        if n < self.min_group:
            raise SecureAggregationError(
                f"site {self.site} is summed only with at least {self.min_group} sites (its policy's "
                f"min_secure_group, never below {MIN_GROUP}); the server offers {n}: refusing to share"
            )
        if not secure_threshold(n) <= threshold <= n:
            raise SecureAggregationError(
                f"the server asks for threshold {threshold} of {n} sites; a site shares only with a threshold "
                f"above two thirds of them ({secure_threshold(n)}..{n}), so that a server colluding with fewer "
                "than a third of the sites cannot collect both secrets of one site"
            )
        counts = {f["site"]: _examples(f) for f in opened}
        if counts[self.site] != self.examples:
            raise SecureAggregationError(f"site {self.site}'s advert count changed; refusing to share")
        self.threshold, self.participants, self.counts = threshold, sorted(sites), counts
        self.transcript = transcript_digest(adverts, threshold)
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

    @property
    def weight(self) -> float:
        """This site's share of the round's examples, from the counts every site signed."""
        return self.counts[self.site] / sum(self.counts.values())

    def mask(self, sealed: Mapping[str, bytes], update: np.ndarray) -> np.ndarray:
        """Keep the shares sent to this site; return its weighted, masked update (step 3).

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
        masked = np.array(encode(update, self.weight, n_sites=len(self.participants)), dtype=RING, copy=True)
        add_mask(masked, self_mask_key(self.self_seed, run=self.run, round=self.round, site=self.site))
        for peer in sorted(senders - {self.site}):
            key = pair_mask_key(
                self.mask_key, self.mask_public[peer], run=self.run, round=self.round, pair=(self.site, peer)
            )
            add_mask(masked, key, subtract=self.site > peer)
        self.stage = "masked"
        return masked

    def confirm(self, survivors: Iterable[str], *, identity: Ed25519PrivateKey) -> bytes:
        """Sign the transcript, the senders and the survivors the server says it holds (step 4)."""
        self._expect("masked", "confirm")
        survivors = sorted(set(survivors))
        smallest = max(self.threshold, self.min_group)
        if self.site not in survivors or not set(survivors) <= set(self.shares) or len(survivors) < smallest:
            raise SecureAggregationError(
                f"the survivor list {survivors} is not a set of at least {smallest} sites that sent "
                f"shares to {self.site} and includes it; refusing to confirm"
            )
        self.survivors, self.stage = survivors, "confirmed"
        return _sign(
            identity, "confirm", self.site, run=self.run, round=self.round, transcript=self.transcript,
            senders=sorted(self.shares), survivors=survivors,
        )

    def reveal(
        self, *, alive: Iterable[str], dropped: Iterable[str], confirmations: Iterable[bytes], manifest: Manifest
    ) -> dict[str, bytes]:
        """This site's share for each peer: self-mask share if alive, mask-key share if dropped (step 5).

        Raises:
            SecureAggregationError: a site listed both alive and dropped, lists that differ from
                what this site confirmed, fewer than t valid confirmations of this very
                transcript, or a second request.
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
            seen = (fields.get("transcript"), fields.get("senders"), fields.get("survivors"))
            if seen != (self.transcript, sorted(self.shares), self.survivors):
                raise SecureAggregationError(
                    f"site {fields['site']} confirmed another round transcript or other lists (survivors "
                    f"{fields.get('survivors')}) than site {self.site} did ({self.survivors}): the server told "
                    "sites different stories, or replays a confirmation from another session; revealing nothing"
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
        def encode_value(value: object) -> object:
            if isinstance(value, bytes):
                return {"hex": value.hex()}
            if isinstance(value, dict):
                return {k: encode_value(v) for k, v in value.items()}
            return value
        return json.dumps({k: encode_value(v) for k, v in asdict(self).items()}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SiteSession:
        def decode_value(value: object) -> object:
            if isinstance(value, dict):
                if set(value) == {"hex"}:
                    return bytes.fromhex(value["hex"])
                return {k: decode_value(v) for k, v in value.items()}
            return value
        return cls(**{k: decode_value(v) for k, v in json.loads(data).items()})


# --- the server's side -------------------------------------------------------------


class ServerSession:
    """The server's view of one round: it relays, counts, and unmasks only the sum."""

    def __init__(self, *, run: str, round: int, manifest: Manifest, min_sites: int = MIN_GROUP) -> None:
        self.run, self.round, self.manifest, self.min_sites = run, round, manifest, min_sites
        self.adverts: dict[str, dict] = {}
        self.threshold = 0
        self.transcript = ""
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

        Sets the round's threshold: above two thirds of the accepted sites, and never
        fewer than the run's minimum, so a round never aggregates fewer sites than the
        run allows.

        Raises:
            RoundAbandoned: fewer than MIN_GROUP valid adverts (sites would refuse).
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
            self.adverts[site] = fields | {"blob": bytes(blob)}
        if len(self.adverts) < MIN_GROUP:
            raise RoundAbandoned(
                f"round {self.round}: {len(self.adverts)} site(s) advertised valid keys; secure aggregation "
                f"sums at least {MIN_GROUP} (with two, each would learn the other's update); the round is "
                "abandoned and nothing was unmasked"
            )
        self.threshold = max(self.min_sites, secure_threshold(len(self.adverts)))
        self._enough(self.adverts, "advertised valid keys")
        self.transcript = transcript_digest(self.listed_adverts(), self.threshold)
        return rejected

    def listed_adverts(self) -> list[bytes]:
        """The accepted adverts, by site: what every site is shown."""
        return [self.adverts[site]["blob"] for site in sorted(self.adverts)]

    def route_shares(self, sealed: Mapping[str, Mapping[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """Turn each sender's shares-by-holder into each holder's shares-by-sender."""
        self.shared = self._enough((s for s in sealed if s in self.adverts), "sent their shares")
        return {
            holder: {sender: sealed[sender][holder] for sender in self.shared if holder in sealed[sender]}
            for holder in self.shared
        }

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
        """The valid confirmations of this round's transcript and lists, to show every survivor."""
        valid = {}
        for site, blob in confirmations.items():
            try:
                fields = _open(blob, self.manifest, kind="confirm", run=self.run, round=self.round)
            except SecureAggregationError:
                continue
            agreed = (fields.get("transcript"), fields.get("senders"), fields.get("survivors"))
            if fields["site"] == site and agreed == (self.transcript, self.shared, self.survivors):
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

    def _rebuild(
        self, owner: str, revealed: Mapping[str, Mapping[str, bytes]], revealers: list[str], index: dict[str, int]
    ) -> bytes:
        shares = {index[r]: revealed[r][owner] for r in revealers if owner in revealed[r]}
        if len(shares) < self.threshold:
            raise RoundAbandoned(
                f"round {self.round}: only {len(shares)} share(s) of site {owner}'s secret came back, "
                f"fewer than {self.threshold}; abandoned"
            )
        return combine_shares(dict(list(shares.items())[: self.threshold]))
