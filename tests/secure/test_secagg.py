"""The secure-aggregation protocol, driven step by step without a transport.

The server here is the real ServerSession; where a test needs a dishonest server, it
calls the sites' steps with what such a server would send. The attacks of the security
review (a weight lie, replayed confirmations, collusion, a two-site round) are each
played out against the real site code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmed.secure.ring import SCALE, add_mask, decode, encode
from fedmed.secure.secagg import (
    MIN_GROUP,
    RoundAbandoned,
    SecureAggregationError,
    ServerSession,
    SiteSession,
    pair_mask_key,
    secure_threshold,
)
from fedmed.secure.sharing import SECRET_BYTES, combine_shares

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
        self.sessions = {
            s: SiteSession.begin(site=s, run=RUN, round=self.round, identity=k, examples=self.weights[s])
            for s, k in self.keys.items()
        }
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
        return {s: self.sessions[s].mask(routed[s], self.updates[s]) for s in sites}

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


@pytest.mark.parametrize("n", [3, 4, 7])
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


def test_the_threshold_is_above_two_thirds() -> None:
    assert [secure_threshold(n) for n in range(3, 10)] == [3, 3, 4, 5, 5, 6, 7]
    assert all(3 * secure_threshold(n) > 2 * n for n in range(3, 100))


# --------------------------------------------------------------------------------- dropouts


def test_a_site_that_drops_after_sharing_is_recovered() -> None:
    federation = Federation(4, seed=2)
    total, _ = federation.run(drop_before_mask=("site-b",))
    assert federation.server.dropped == ["site-b"]
    mean, weight = decode(total)
    kept = ["site-a", "site-c", "site-d"]
    assert weight == pytest.approx(sum(federation.fraction(s) for s in kept), abs=3 / SCALE)
    assert np.max(np.abs(mean - federation.plain_mean(kept))) <= 1e-6


def test_two_of_seven_dropping_is_recovered() -> None:
    federation = Federation(7, seed=3)
    total, _ = federation.run(drop_before_mask=("site-a", "site-e"))
    mean, _ = decode(total)
    assert np.max(np.abs(mean - federation.plain_mean(["site-b", "site-c", "site-d", "site-f", "site-g"]))) <= 1e-6


def test_below_the_threshold_the_round_is_abandoned_before_anything_is_revealed() -> None:
    federation = Federation(4, seed=4)
    routed = federation.share()
    masked = federation.mask(routed, ["site-a", "site-b"])
    with pytest.raises(RoundAbandoned, match="only 2 site.*threshold 3.*nothing was unmasked"):
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
        s: federation.sessions[s].reveal(
            alive=survivors, dropped=[], confirmations=confirmations, manifest=federation.manifest
        )
        for s in survivors[:3]
    }
    with pytest.raises(RoundAbandoned, match="only 3 site.*threshold 4"):
        federation.server.unmask(revealed)


# -------------------------------------------------------------------- a dishonest server


def confirmed(federation: Federation, survivors: list[str]) -> list[bytes]:
    return [federation.sessions[s].confirm(survivors, identity=federation.keys[s]) for s in survivors]


def test_a_site_listed_both_alive_and_dropped_gets_no_secret() -> None:
    federation = Federation(4, seed=6)
    routed = federation.share()
    federation.mask(routed, list(routed))
    survivors = ["site-a", "site-b", "site-c", "site-d"]
    confirmations = confirmed(federation, survivors)
    with pytest.raises(SecureAggregationError, match=r"\['site-b'\] as both alive and dropped; revealing nothing"):
        federation.sessions["site-a"].reveal(
            alive=survivors, dropped=["site-b"], confirmations=confirmations, manifest=federation.manifest
        )


def test_a_server_telling_sites_different_survivor_lists_gets_nothing() -> None:
    """The server claims to site-a that site-d dropped while the others confirmed all four."""
    federation = Federation(4, seed=7)
    routed = federation.share()
    federation.mask(routed, list(routed))
    everyone = ["site-a", "site-b", "site-c", "site-d"]
    confirmations = confirmed(federation, everyone)
    with pytest.raises(SecureAggregationError, match="differs from the survivors"):
        federation.sessions["site-a"].reveal(
            alive=["site-a", "site-b", "site-c"], dropped=["site-d"], confirmations=confirmations,
            manifest=federation.manifest,
        )


def test_too_few_confirmations_or_a_forged_one_reveal_nothing() -> None:
    federation = Federation(3, seed=8)
    routed = federation.share()
    federation.mask(routed, list(routed))
    everyone = ["site-a", "site-b", "site-c"]
    confirmations = confirmed(federation, everyone)
    site = federation.sessions["site-a"]
    with pytest.raises(SecureAggregationError, match="fewer than the threshold 3"):
        site.reveal(alive=everyone, dropped=[], confirmations=confirmations[:2], manifest=federation.manifest)
    forged = bytearray(confirmations[1])
    forged[5] ^= 1
    with pytest.raises(SecureAggregationError, match="does not verify"):
        site.reveal(
            alive=everyone, dropped=[], confirmations=[confirmations[0], bytes(forged), confirmations[2]],
            manifest=federation.manifest,
        )


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


@pytest.mark.parametrize(("n", "threshold"), [(3, 2), (4, 2), (6, 4)])
def test_a_threshold_of_two_thirds_or_less_is_refused(n: int, threshold: int) -> None:
    """A bare majority let a server with one colluding site rebuild an honest site's input."""
    federation = Federation(n, seed=10)
    federation.advertise()
    with pytest.raises(SecureAggregationError, match=f"threshold {threshold} of {n} sites.*above two thirds"):
        federation.sessions["site-a"].share(federation.adverts, threshold=threshold, manifest=federation.manifest)


def test_the_run_minimum_raises_the_threshold() -> None:
    """With min_sites 4 of 4 no site may drop: the server asks for all four, and sites accept it."""
    federation = Federation(4, seed=19)
    federation.server = ServerSession(run=RUN, round=ROUND, manifest=federation.manifest, min_sites=4)
    routed = federation.share()
    assert federation.server.threshold == 4
    with pytest.raises(RoundAbandoned, match="only 3 site.*threshold 4"):
        federation.server.accept_masked(federation.mask(routed, ["site-a", "site-b", "site-c"]))


@pytest.mark.parametrize("n", [1, 2])
def test_a_two_site_round_never_happens(n: int) -> None:
    """With two sites, each learns the other's update from the model change: no site is summed so."""
    federation = Federation(n)
    adverts = [federation.sessions[s].advert for s in sorted(federation.sessions)]
    with pytest.raises(SecureAggregationError, match=f"at least {MIN_GROUP} sites.*offers {n}"):
        federation.sessions["site-a"].share(adverts, threshold=n, manifest=federation.manifest)
    with pytest.raises(RoundAbandoned, match=f"sums at least {MIN_GROUP}"):
        federation.server.accept_adverts({s: x.advert for s, x in federation.sessions.items()})


def test_a_policy_can_ask_for_a_larger_group() -> None:
    federation = Federation(4, seed=20)
    federation.sessions["site-a"] = SiteSession.begin(
        site="site-a", run=RUN, round=ROUND, identity=federation.keys["site-a"],
        examples=federation.weights["site-a"], min_group=5,
    )
    federation.advertise()
    with pytest.raises(SecureAggregationError, match="at least 5 sites .*min_secure_group.*offers 4"):
        federation.sessions["site-a"].share(federation.adverts, threshold=3, manifest=federation.manifest)


def test_the_weights_come_from_the_signed_adverts() -> None:
    """No total from the server: a site weighs itself by the counts every site signed."""
    federation = Federation(5, seed=21)
    federation.share()
    for site, session in federation.sessions.items():
        assert session.counts == federation.weights
        assert session.weight == pytest.approx(federation.fraction(site))
    other = Federation(5, seed=21, keys=federation.keys)
    other.advertise()
    honest = other.sessions["site-b"].advert
    # the server inflates site-b's count to shrink everyone else's weight to nothing
    inflated = honest.replace(b'"examples":', b'"examples":1000000000000000', 1)
    listed = [inflated if advert == honest else advert for advert in other.adverts]
    with pytest.raises(SecureAggregationError, match="site site-b's advert does not verify"):
        other.sessions["site-a"].share(listed, threshold=4, manifest=other.manifest)


def test_replayed_confirmations_from_another_session_of_the_round_reveal_nothing() -> None:
    """The review's attack: repeat a round, collect confirmations of chosen lists, replay them.

    Here the second session of the same run and round exists only because the test makes
    one (a site refuses to train a round twice); its confirmations still bind the first
    session's keys, so the site shown them reveals nothing.
    """
    first = Federation(5, seed=22)
    routed = first.share()
    first.mask(routed, list(routed))
    chosen = ["site-a", "site-b", "site-c", "site-d"]  # site-e "dropped", in the server's story
    replayed = [first.sessions[s].confirm(chosen, identity=first.keys[s]) for s in chosen]
    second = Federation(5, seed=22, keys=first.keys)
    second.mask(second.share(), list(second.sessions))
    everyone = sorted(second.sessions)
    second.sessions["site-a"].confirm(everyone, identity=second.keys["site-a"])
    with pytest.raises(SecureAggregationError, match="another round transcript.*replays a confirmation"):
        second.sessions["site-a"].reveal(
            alive=everyone, dropped=[], confirmations=replayed, manifest=second.manifest,
        )


def test_a_server_colluding_with_one_site_cannot_rebuild_an_honest_input() -> None:
    """The review's attack: three sites, site-c on the server's side, no dropout.

    The server tells site-b that site-a dropped (to collect site-a's mask-key share) and
    site-a that it survived (to collect its self-mask seed share); the colluder gives both
    of its shares. At the bare-majority threshold 2 that rebuilt site-a's input; sites now
    refuse 2 of 3, and at 3 of 3 neither story gathers enough signatures.
    """
    federation = Federation(3, seed=23)
    federation.advertise()
    with pytest.raises(SecureAggregationError, match="threshold 2 of 3"):
        federation.sessions["site-a"].share(federation.adverts, threshold=2, manifest=federation.manifest)

    federation = Federation(3, seed=23)
    sessions = federation.sessions
    routed = federation.share()
    assert federation.server.threshold == 3
    masked = federation.mask(routed, list(routed))
    target, everyone = "site-a", sorted(sessions)
    without_target = ["site-b", "site-c"]
    colluder = SiteSession.from_bytes(sessions["site-c"].to_bytes())  # what the colluder holds, for the server
    with pytest.raises(SecureAggregationError, match="not a set of at least 3 sites.*refusing to confirm"):
        sessions["site-b"].confirm(without_target, identity=federation.keys["site-b"])  # the "dropped" story
    story_alive = [sessions[target].confirm(everyone, identity=federation.keys[target]),
                   sessions["site-c"].confirm(everyone, identity=federation.keys["site-c"])]
    with pytest.raises(SecureAggregationError, match="fewer than the threshold 3"):
        sessions[target].reveal(alive=everyone, dropped=[], confirmations=story_alive, manifest=federation.manifest)
    # all the server holds of site-a's secrets is the colluder's share of each: one of three
    held = colluder.shares[target]
    index = {site: i + 1 for i, site in enumerate(everyone)}
    guessed_key = combine_shares({index["site-c"]: held[SECRET_BYTES:]})
    assert guessed_key != sessions[target].mask_key
    stripped = masked[target].copy()
    for peer in without_target:
        peer_public = bytes.fromhex(federation.server.adverts[peer]["mask"])
        add_mask(stripped, pair_mask_key(guessed_key, peer_public, run=RUN, round=ROUND, pair=(target, peer)),
                 subtract=target > peer)
    naive = as_plaintext(stripped, federation.fraction(target))
    assert abs(np.corrcoef(naive, federation.updates[target])[0, 1]) < 0.06


# ------------------------------------------------------------------ tampering and replay


def test_a_tampered_key_advert_is_rejected_by_sites_and_server() -> None:
    federation = Federation(3, seed=11)
    advert = bytearray(federation.sessions["site-b"].advert)
    advert[-20] ^= 1  # inside the signed payload: a substituted key
    tampered = bytes(advert)
    honest = [federation.sessions["site-a"].advert, tampered, federation.sessions["site-c"].advert]
    with pytest.raises(SecureAggregationError, match="signature on site site-b's advert does not verify"):
        federation.sessions["site-a"].share(honest, threshold=3, manifest=federation.manifest)
    with pytest.raises(RoundAbandoned):  # two valid adverts are too few to sum
        federation.server.accept_adverts({"site-a": honest[0], "site-b": tampered, "site-c": honest[2]})


def test_an_advert_signed_by_a_key_outside_the_manifest_is_rejected() -> None:
    federation = Federation(3, seed=12)
    impostor = SiteSession.begin(site="site-b", run=RUN, round=ROUND, identity=Ed25519PrivateKey.generate(), examples=9)
    adverts = [federation.sessions["site-a"].advert, impostor.advert, federation.sessions["site-c"].advert]
    with pytest.raises(SecureAggregationError, match="does not verify"):
        federation.sessions["site-a"].share(adverts, threshold=3, manifest=federation.manifest)
    stranger = SiteSession.begin(site="site-z", run=RUN, round=ROUND, identity=Ed25519PrivateKey.generate(), examples=9)
    with pytest.raises(SecureAggregationError, match="'site-z', which is not in the consortium's key manifest"):
        federation.sessions["site-a"].share([*adverts[::2], stranger.advert], threshold=3, manifest=federation.manifest)


@pytest.mark.parametrize(("run", "round"), [(RUN, ROUND - 1), ("999", ROUND)], ids=["earlier-round", "other-run"])
def test_a_replayed_advert_is_rejected(run: str, round: int) -> None:
    federation = Federation(3, seed=13)
    old = SiteSession.begin(site="site-b", run=run, round=round, identity=federation.keys["site-b"], examples=9)
    adverts = [federation.sessions["site-a"].advert, old.advert, federation.sessions["site-c"].advert]
    wrong = f"run {run}" if run != RUN else f"round {round}"
    right = f"run {RUN}" if run != RUN else f"round {ROUND}"
    with pytest.raises(SecureAggregationError, match=f"advert is for {wrong}, not {right}: replayed"):
        federation.sessions["site-a"].share(adverts, threshold=3, manifest=federation.manifest)


def test_a_site_whose_own_advert_was_swapped_refuses() -> None:
    federation = Federation(3, seed=14)
    other = SiteSession.begin(site="site-a", run=RUN, round=ROUND, identity=federation.keys["site-a"], examples=9)
    adverts = [other.advert, federation.sessions["site-b"].advert, federation.sessions["site-c"].advert]
    with pytest.raises(SecureAggregationError, match="own advert is missing or altered"):
        federation.sessions["site-a"].share(adverts, threshold=3, manifest=federation.manifest)


def test_shares_replayed_from_another_round_do_not_decrypt() -> None:
    federation = Federation(3, seed=15)
    routed = federation.share()
    earlier = Federation(3, seed=15, round=ROUND - 1, keys=federation.keys)
    earlier_routed = earlier.share()
    mixed = dict(routed["site-a"])
    mixed["site-b"] = earlier_routed["site-a"]["site-b"]
    with pytest.raises(SecureAggregationError, match="shares from site site-b do not decrypt"):
        federation.sessions["site-a"].mask(mixed, federation.updates["site-a"])


def test_a_confirmation_from_another_round_is_rejected() -> None:
    federation = Federation(3, seed=16)
    routed = federation.share()
    federation.mask(routed, list(routed))
    everyone = ["site-a", "site-b", "site-c"]
    confirmations = confirmed(federation, everyone)
    stale = Federation(3, seed=16, round=ROUND + 1, keys=federation.keys)
    stale.mask(stale.share(), everyone)
    later = confirmed(stale, everyone)
    with pytest.raises(SecureAggregationError, match=f"round {ROUND + 1}, not round {ROUND}"):
        federation.sessions["site-a"].reveal(
            alive=everyone, dropped=[], confirmations=[confirmations[0], later[1], confirmations[2]],
            manifest=federation.manifest,
        )


def test_steps_out_of_order_are_refused() -> None:
    federation = Federation(3, seed=17)
    with pytest.raises(SecureAggregationError, match="refusing 'mask', which must follow 'shared'"):
        federation.sessions["site-a"].mask({}, np.zeros(3))


def test_a_session_survives_serialisation() -> None:
    federation = Federation(3, seed=18)
    routed = federation.share()
    federation.sessions = {s: SiteSession.from_bytes(x.to_bytes()) for s, x in federation.sessions.items()}
    masked = federation.mask(routed, list(routed))
    assert set(masked) == {"site-a", "site-b", "site-c"}
