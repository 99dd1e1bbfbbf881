"""The secure-aggregation protocol, driven step by step without a transport.

The server here is the real ServerSession; where a test needs a dishonest server, it
calls the sites' steps with what such a server would send.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmed.secure.ring import SCALE, decode, encode
from fedmed.secure.secagg import (
    RoundAbandoned,
    SecureAggregationError,
    ServerSession,
    SiteSession,
    majority,
)

RUN, ROUND, LENGTH = "4242", 3, 5000


@dataclass
class Federation:
    """n honest sites and an honest server, one round."""

    n: int
    seed: int = 0
    round: int = ROUND
    keys: dict[str, Ed25519PrivateKey] | None = None
    updates: dict[str, np.ndarray] = field(init=False)
    weights: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        sites = [f"site-{chr(ord('a') + i)}" for i in range(self.n)]
        self.keys = self.keys or {s: Ed25519PrivateKey.generate() for s in sites}
        self.updates = {s: rng.normal(scale=0.02, size=LENGTH) for s in sites}
        self.weights = {s: int(rng.integers(50, 500)) for s in sites}
        self.manifest = {s: k.public_key() for s, k in self.keys.items()}
        self.sessions = {s: SiteSession.begin(site=s, run=RUN, round=self.round, identity=k) for s, k in self.keys.items()}
        self.server = ServerSession(run=RUN, round=self.round, manifest=self.manifest)

    def advertise(self) -> None:
        self.server.accept_adverts({s: x.advert for s, x in self.sessions.items()})
        self.adverts = [self.sessions[s].advert for s in sorted(self.server.adverts)]

    def share(self, sites: list[str] | None = None) -> dict[str, dict[str, bytes]]:
        self.advertise()
        sealed = {
            s: self.sessions[s].share(self.adverts, threshold=self.server.threshold, manifest=self.manifest)
            for s in sites or self.sessions
        }
        return self.server.route_shares(sealed)

    def fraction(self, site: str) -> float:
        return self.weights[site] / sum(self.weights.values())

    def mask(self, routed: dict[str, dict[str, bytes]], sites: list[str]) -> dict[str, np.ndarray]:
        return {s: self.sessions[s].mask(routed[s], encode(self.updates[s], self.fraction(s), n_sites=self.n)) for s in sites}

    def run(self, *, drop_before_mask: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        routed = self.share()
        masked = self.mask(routed, [s for s in routed if s not in drop_before_mask])
        survivors = self.server.accept_masked(masked)
        confirmations = self.server.accept_confirmations(
            {s: self.sessions[s].confirm(survivors, identity=self.keys[s]) for s in survivors}
        )
        revealed = {
            s: self.sessions[s].reveal(
                alive=survivors, dropped=self.server.dropped, confirmations=confirmations, manifest=self.manifest
            )
            for s in survivors
        }
        return self.server.unmask(revealed), masked

    def plain_mean(self, sites: list[str]) -> np.ndarray:
        return sum(self.weights[s] * self.updates[s] for s in sites) / sum(self.weights[s] for s in sites)


# --------------------------------------------------------------------- the sum, and only the sum


@pytest.mark.parametrize("n", [2, 3, 5])
def test_the_unmasked_sum_is_the_weighted_mean(n: int) -> None:
    federation = Federation(n)
    total, _ = federation.run()
    mean, weight = decode(total)
    assert weight == pytest.approx(1.0, abs=n / SCALE)
    assert np.max(np.abs(mean - federation.plain_mean(list(federation.keys)))) <= n * 0.5 / SCALE


def as_plaintext(vector: np.ndarray, weight: int) -> np.ndarray:
    """What a server would read from a vector if it took it for an unmasked encoding."""
    return vector[:-1].view(np.int32) / SCALE / weight


def test_no_masked_input_reveals_its_site_update() -> None:
    """A spy's view: every masked vector is uniform noise to whoever lacks the masks."""
    federation = Federation(4, seed=1)
    total, masked = federation.run()
    for site, vector in masked.items():
        naive = as_plaintext(vector, federation.fraction(site))
        update = federation.updates[site]
        assert abs(np.corrcoef(naive, update)[0, 1]) < 0.06
        assert np.mean(np.abs(naive - update) < 1e-3) < 0.01
        plain = encode(update, federation.fraction(site), n_sites=4)
        assert np.mean(vector == plain) < 0.001
    # the sum of any proper subset of the masked inputs is noise too; the whole sum is not
    partial_mean = as_plaintext(masked["site-a"] + masked["site-b"], 1)
    assert abs(np.corrcoef(partial_mean, federation.plain_mean(["site-a", "site-b"]))[0, 1]) < 0.06
    assert np.corrcoef(decode(total)[0], federation.plain_mean(list(federation.keys)))[0, 1] > 0.999


# --------------------------------------------------------------------------------- dropouts


def test_a_site_that_drops_after_sharing_is_recovered() -> None:
    federation = Federation(3, seed=2)
    total, _ = federation.run(drop_before_mask=("site-b",))
    assert federation.server.dropped == ["site-b"]
    mean, weight = decode(total)
    assert weight == pytest.approx(federation.fraction("site-a") + federation.fraction("site-c"), abs=2 / SCALE)
    assert np.max(np.abs(mean - federation.plain_mean(["site-a", "site-c"]))) <= 1e-6


def test_two_of_five_dropping_is_recovered() -> None:
    federation = Federation(5, seed=3)
    total, _ = federation.run(drop_before_mask=("site-a", "site-e"))
    mean, _ = decode(total)
    assert np.max(np.abs(mean - federation.plain_mean(["site-b", "site-c", "site-d"]))) <= 1e-6


def test_below_the_threshold_the_round_is_abandoned_before_anything_is_revealed() -> None:
    federation = Federation(3, seed=4)
    routed = federation.share()
    masked = federation.mask(routed, ["site-a"])
    with pytest.raises(RoundAbandoned, match="only 1 site.*threshold 2.*nothing was unmasked"):
        federation.server.accept_masked(masked)
    assert all(s.stage != "revealed" for s in federation.sessions.values())


def test_too_few_reveals_rebuild_nothing() -> None:
    federation = Federation(5, seed=5)
    routed = federation.share()
    survivors = federation.server.accept_masked(federation.mask(routed, list(routed)))
    confirmations = federation.server.accept_confirmations(
        {s: federation.sessions[s].confirm(survivors, identity=federation.keys[s]) for s in survivors}
    )
    revealed = {
        s: federation.sessions[s].reveal(alive=survivors, dropped=[], confirmations=confirmations, manifest=federation.manifest)
        for s in survivors[:2]
    }
    with pytest.raises(RoundAbandoned, match="only 2 site.*threshold 3"):
        federation.server.unmask(revealed)


# -------------------------------------------------------------------- a dishonest server


def confirmed(federation: Federation, survivors: list[str]) -> list[bytes]:
    return [federation.sessions[s].confirm(survivors, identity=federation.keys[s]) for s in survivors]


def test_a_site_listed_both_alive_and_dropped_gets_no_secret() -> None:
    federation = Federation(3, seed=6)
    routed = federation.share()
    federation.mask(routed, list(routed))
    survivors = ["site-a", "site-b", "site-c"]
    confirmations = confirmed(federation, survivors)
    with pytest.raises(SecureAggregationError, match=r"\['site-b'\] as both alive and dropped; revealing nothing"):
        federation.sessions["site-a"].reveal(
            alive=survivors, dropped=["site-b"], confirmations=confirmations, manifest=federation.manifest
        )


def test_a_server_telling_sites_different_survivor_lists_gets_nothing() -> None:
    """The server claims to site-a that site-c dropped while others confirmed all three."""
    federation = Federation(3, seed=7)
    routed = federation.share()
    federation.mask(routed, list(routed))
    everyone = ["site-a", "site-b", "site-c"]
    confirmations = confirmed(federation, everyone)
    with pytest.raises(SecureAggregationError, match="differs from the survivors"):
        federation.sessions["site-a"].reveal(
            alive=["site-a", "site-b"], dropped=["site-c"], confirmations=confirmations, manifest=federation.manifest
        )


def test_too_few_confirmations_or_a_forged_one_reveal_nothing() -> None:
    federation = Federation(3, seed=8)
    routed = federation.share()
    federation.mask(routed, list(routed))
    everyone = ["site-a", "site-b", "site-c"]
    confirmations = confirmed(federation, everyone)
    site = federation.sessions["site-a"]
    with pytest.raises(SecureAggregationError, match="fewer than the threshold 2"):
        site.reveal(alive=everyone, dropped=[], confirmations=confirmations[:1], manifest=federation.manifest)
    forged = bytearray(confirmations[1])
    forged[5] ^= 1
    with pytest.raises(SecureAggregationError, match="does not verify"):
        site.reveal(alive=everyone, dropped=[], confirmations=[confirmations[0], bytes(forged)], manifest=federation.manifest)


def test_a_site_reveals_once_per_round() -> None:
    federation = Federation(3, seed=9)
    routed = federation.share()
    federation.mask(routed, list(routed))
    everyone = ["site-a", "site-b", "site-c"]
    confirmations = confirmed(federation, everyone)
    site = federation.sessions["site-b"]
    site.reveal(alive=everyone, dropped=[], confirmations=confirmations, manifest=federation.manifest)
    with pytest.raises(SecureAggregationError, match="refusing 'reveal'"):
        site.reveal(alive=everyone, dropped=[], confirmations=confirmations, manifest=federation.manifest)


def test_a_threshold_of_half_or_less_is_refused() -> None:
    federation = Federation(4, seed=10)
    federation.advertise()
    with pytest.raises(SecureAggregationError, match="threshold 2 of 4"):
        federation.sessions["site-a"].share(federation.adverts, threshold=2, manifest=federation.manifest)
    assert majority(4) == 3


def test_the_run_minimum_raises_the_threshold() -> None:
    """With min_sites 3 of 3 no site may drop: the server asks for all three, and sites accept it."""
    federation = Federation(3, seed=19)
    federation.server = ServerSession(run=RUN, round=ROUND, manifest=federation.manifest, min_sites=3)
    routed = federation.share()
    assert federation.server.threshold == 3
    with pytest.raises(RoundAbandoned, match="only 2 site.*threshold 3"):
        federation.server.accept_masked(federation.mask(routed, ["site-a", "site-c"]))


def test_a_lone_site_does_not_share() -> None:
    federation = Federation(1)
    with pytest.raises(SecureAggregationError, match="at least 2 sites"):
        federation.sessions["site-a"].share([federation.sessions["site-a"].advert], threshold=1, manifest=federation.manifest)


# ------------------------------------------------------------------ tampering and replay


def test_a_tampered_key_advert_is_rejected_by_sites_and_server() -> None:
    federation = Federation(3, seed=11)
    advert = bytearray(federation.sessions["site-b"].advert)
    advert[-20] ^= 1  # inside the signed payload: a substituted key
    tampered = bytes(advert)
    honest = [federation.sessions["site-a"].advert, tampered, federation.sessions["site-c"].advert]
    with pytest.raises(SecureAggregationError, match="signature on site site-b's advert does not verify"):
        federation.sessions["site-a"].share(honest, threshold=2, manifest=federation.manifest)
    rejected = federation.server.accept_adverts(
        {"site-a": honest[0], "site-b": tampered, "site-c": honest[2]}
    )
    assert list(rejected) == ["site-b"] and "does not verify" in rejected["site-b"]


def test_an_advert_signed_by_a_key_outside_the_manifest_is_rejected() -> None:
    federation = Federation(3, seed=12)
    impostor = SiteSession.begin(site="site-b", run=RUN, round=ROUND, identity=Ed25519PrivateKey.generate())
    adverts = [federation.sessions["site-a"].advert, impostor.advert, federation.sessions["site-c"].advert]
    with pytest.raises(SecureAggregationError, match="does not verify"):
        federation.sessions["site-a"].share(adverts, threshold=2, manifest=federation.manifest)
    stranger = SiteSession.begin(site="site-z", run=RUN, round=ROUND, identity=Ed25519PrivateKey.generate())
    with pytest.raises(SecureAggregationError, match="'site-z', which is not in the consortium's key manifest"):
        federation.sessions["site-a"].share([*adverts[::2], stranger.advert], threshold=2, manifest=federation.manifest)


@pytest.mark.parametrize(("run", "round"), [(RUN, ROUND - 1), ("999", ROUND)], ids=["earlier-round", "other-run"])
def test_a_replayed_advert_is_rejected(run: str, round: int) -> None:
    federation = Federation(3, seed=13)
    old = SiteSession.begin(site="site-b", run=run, round=round, identity=federation.keys["site-b"])
    adverts = [federation.sessions["site-a"].advert, old.advert, federation.sessions["site-c"].advert]
    with pytest.raises(SecureAggregationError, match=f"for run {run} round {round}, not run {RUN} round {ROUND}: replayed"):
        federation.sessions["site-a"].share(adverts, threshold=2, manifest=federation.manifest)


def test_a_site_whose_own_advert_was_swapped_refuses() -> None:
    federation = Federation(3, seed=14)
    other = SiteSession.begin(site="site-a", run=RUN, round=ROUND, identity=federation.keys["site-a"])
    adverts = [other.advert, federation.sessions["site-b"].advert, federation.sessions["site-c"].advert]
    with pytest.raises(SecureAggregationError, match="own advert is missing or altered"):
        federation.sessions["site-a"].share(adverts, threshold=2, manifest=federation.manifest)


def test_shares_replayed_from_another_round_do_not_decrypt() -> None:
    federation = Federation(3, seed=15)
    routed = federation.share()
    earlier = Federation(3, seed=15, round=ROUND - 1, keys=federation.keys)
    earlier_routed = earlier.share()
    mixed = dict(routed["site-a"])
    mixed["site-b"] = earlier_routed["site-a"]["site-b"]
    with pytest.raises(SecureAggregationError, match="shares from site site-b do not decrypt"):
        federation.sessions["site-a"].mask(mixed, encode(federation.updates["site-a"], 0.5, n_sites=3))


def test_a_confirmation_from_another_round_is_rejected() -> None:
    federation = Federation(3, seed=16)
    routed = federation.share()
    federation.mask(routed, list(routed))
    everyone = ["site-a", "site-b", "site-c"]
    confirmations = confirmed(federation, everyone)
    stale = Federation(3, seed=16, round=ROUND + 1, keys=federation.keys)
    stale.mask(stale.share(), everyone)
    later = confirmed(stale, everyone)
    with pytest.raises(SecureAggregationError, match=f"round {ROUND + 1}, not run {RUN} round {ROUND}"):
        federation.sessions["site-a"].reveal(
            alive=everyone, dropped=[], confirmations=[confirmations[0], later[1]], manifest=federation.manifest
        )


def test_steps_out_of_order_are_refused() -> None:
    federation = Federation(3, seed=17)
    with pytest.raises(SecureAggregationError, match="refusing 'mask', which must follow 'shared'"):
        federation.sessions["site-a"].mask({}, np.zeros(3, dtype=np.uint32))


def test_a_session_survives_serialisation() -> None:
    federation = Federation(3, seed=18)
    routed = federation.share()
    federation.sessions = {s: SiteSession.from_bytes(x.to_bytes()) for s, x in federation.sessions.items()}
    masked = federation.mask(routed, list(routed))
    assert set(masked) == {"site-a", "site-b", "site-c"}
