"""Secure aggregation over Flower messages: the steps after training, on both sides.

A site that trained under secure aggregation keeps its update in its node's Flower
context and replies with a signed key advert instead of weights. The server then walks
the protocol of ``fedmed.secure.secagg`` with ``train.secagg`` messages, one step per
message, and gets back only masked vectors and shares: it can decode the sum and
nothing else. A site keeps its round's secrets in ``context.state``, which stays on the
site's machine between messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedmed.secure.ring import decode
from fedmed.secure.secagg import Manifest, SecureAggregationError, ServerSession, SiteSession

log = logging.getLogger("fedmed.secagg")

MESSAGE_TYPE = "train.secagg"
ACTION = "secagg"
RECORD = "secagg"
"""The ConfigRecord that carries protocol fields, in messages and in a site's context."""
UPDATE = "secagg-update"
"""The ArrayRecord in a site's context holding its update until it is masked."""


class Field(StrEnum):
    STAGE = "stage"
    RUN = "run"
    ROUND = "round"
    ADVERT = "advert"
    ADVERTS = "adverts"
    THRESHOLD = "threshold"
    SESSION = "session"
    HOLDERS = "holders"
    SENDERS = "senders"
    SEALED = "sealed"
    MASKED = "masked"
    SURVIVORS = "survivors"
    CONFIRMATION = "confirmation"
    CONFIRMATIONS = "confirmations"
    ALIVE = "alive"
    DROPPED = "dropped"
    OWNERS = "owners"
    SHARES = "shares"


# --- the site's side -------------------------------------------------------------


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Every float array, in name order, as one vector: the order both sides agree on."""
    return np.concatenate([np.ravel(np.asarray(arrays[name])) for name in sorted(arrays)])


def begin_round(
    state: RecordDict, *, site: str, run: str, round: int, identity: Ed25519PrivateKey,
    update: Mapping[str, np.ndarray], examples: int, min_group: int,
) -> bytes:
    """Keep the update and fresh round keys in the site's context; return the signed advert.

    ``examples`` (the site's training records, its FedAvg weight) goes into the signed
    advert; ``min_group`` is the smallest group the site's policy lets it be summed in.
    """
    session = SiteSession.begin(
        site=site, run=run, round=round, identity=identity, examples=examples, min_group=min_group
    )
    state[RECORD] = ConfigRecord({Field.SESSION: session.to_bytes()})
    state[UPDATE] = ArrayRecord({Field.MASKED: Array(flatten(update).astype(np.float32))})
    return session.advert


def site_step(
    message: Message, state: RecordDict, *, identity: Ed25519PrivateKey, manifest: Callable[[], Manifest]
) -> RecordDict:
    """Answer one protocol message from the site's kept session.

    Raises:
        SecureAggregationError: no session, a message for another run or round, or a
            step the protocol forbids; the site reveals nothing.
    """
    request = message.content[RECORD]
    if RECORD not in state:
        raise SecureAggregationError("no secure-aggregation round is in progress here")
    kept = state[RECORD]
    session = SiteSession.from_bytes(bytes(kept[Field.SESSION]))
    run, round = str(message.metadata.run_id), int(request[Field.ROUND])
    if (run, round) != (session.run, session.round):
        raise SecureAggregationError(
            f"a {request[Field.STAGE]} request for run {run} round {round} arrived during run "
            f"{session.run} round {session.round}: replayed or stale, rejected"
        )
    stage = str(request[Field.STAGE])
    if stage == "share":
        sealed = session.share(request[Field.ADVERTS], threshold=int(request[Field.THRESHOLD]), manifest=manifest())
        reply = ConfigRecord({Field.HOLDERS: list(sealed), Field.SEALED: list(sealed.values())})
    elif stage == "mask":
        sealed = dict(zip(request[Field.SENDERS], request[Field.SEALED], strict=True))
        masked = session.mask(sealed, state[UPDATE][Field.MASKED].numpy())
        del state[UPDATE]
        kept[Field.SESSION] = session.to_bytes()
        return RecordDict(
            {RECORD: ConfigRecord({Field.STAGE: stage}), UPDATE: ArrayRecord({Field.MASKED: Array(masked)})}
        )
    elif stage == "confirm":
        reply = ConfigRecord({Field.CONFIRMATION: session.confirm(request[Field.SURVIVORS], identity=identity)})
    elif stage == "reveal":
        shares = session.reveal(
            alive=request[Field.ALIVE], dropped=request[Field.DROPPED],
            confirmations=request[Field.CONFIRMATIONS], manifest=manifest(),
        )
        reply = ConfigRecord({Field.OWNERS: list(shares), Field.SHARES: list(shares.values())})
        del state[RECORD]  # the round is over for this site: its secrets go
        return RecordDict({RECORD: reply})
    else:
        raise SecureAggregationError(f"unknown secure-aggregation step {stage!r}")
    kept[Field.SESSION] = session.to_bytes()
    reply[Field.STAGE] = stage
    return RecordDict({RECORD: reply})


# --- the server's side -----------------------------------------------------------


@dataclass(frozen=True)
class SecureSum:
    """What one round of secure aggregation produced."""

    arrays: ArrayRecord
    sites: list[str]
    dropped: list[str]
    threshold: int
    seconds: float


Refusal = Callable[[str, str, str], None]
"""Called with (site, step, reason) for every site that refused or failed a step."""


def secure_aggregate(
    grid: Grid, *, server_round: int, adverts: Mapping[str, bytes], nodes: Mapping[str, int],
    global_arrays: ArrayRecord, manifest: Manifest, on_refusal: Refusal, min_sites: int,
) -> SecureSum:
    """Run the protocol with the sites that trained; return the new global model.

    Each site weighs itself by the example counts in the adverts it verified (FedAvg's
    weights); the server sends no total.

    Raises:
        RoundAbandoned: fewer than the threshold completed a step; nothing was unmasked.
    """
    started = time.perf_counter()
    session = ServerSession(run=str(grid.run.run_id), round=server_round, manifest=manifest, min_sites=min_sites)
    for site, reason in session.accept_adverts(adverts).items():
        on_refusal(site, "advert", reason)

    def ask(stage: str, requests: Mapping[str, dict]) -> dict[str, RecordDict]:
        messages = []
        for site, fields in requests.items():
            record = ConfigRecord({Field.STAGE: stage, Field.ROUND: server_round, **fields})
            messages.append(
                Message(RecordDict({RECORD: record}), nodes[site], MESSAGE_TYPE, group_id=str(server_round))
            )
        replies = list(grid.send_and_receive(messages))
        # by the message answered: a SuperLink's "node unavailable" reply comes from the SuperLink itself
        site_of = {m.metadata.message_id: site for m, site in zip(messages, requests, strict=True)}
        answers = {}
        for reply in replies:
            site = site_of[reply.metadata.reply_to_message_id]
            if reply.has_error():
                on_refusal(site, stage, reply.error.reason or "no reason given")
            else:
                answers[site] = reply.content
        for site in sorted(set(requests) - set(answers)):
            log.warning("round %s: site %s did not complete secure-aggregation step '%s'", server_round, site, stage)
        return answers

    share = {Field.ADVERTS: session.listed_adverts(), Field.THRESHOLD: session.threshold}
    answers = ask("share", {site: share for site in session.adverts})
    routed = session.route_shares({
        site: dict(zip(a[RECORD][Field.HOLDERS], a[RECORD][Field.SEALED], strict=True)) for site, a in answers.items()
    })
    answers = ask("mask", {
        site: {Field.SENDERS: list(sealed), Field.SEALED: list(sealed.values())} for site, sealed in routed.items()
    })
    survivors = session.accept_masked({site: a[UPDATE][Field.MASKED].numpy() for site, a in answers.items()})
    answers = ask("confirm", {site: {Field.SURVIVORS: survivors} for site in survivors})
    confirmations = session.accept_confirmations(
        {site: bytes(a[RECORD][Field.CONFIRMATION]) for site, a in answers.items()}
    )
    answers = ask("reveal", {
        site: {Field.ALIVE: survivors, Field.DROPPED: session.dropped, Field.CONFIRMATIONS: confirmations}
        for site in survivors
    })
    total = session.unmask({
        site: dict(zip(a[RECORD][Field.OWNERS], a[RECORD][Field.SHARES], strict=True)) for site, a in answers.items()
    })
    mean_update, _ = decode(total)
    return SecureSum(
        arrays=apply_update(global_arrays, mean_update),
        sites=survivors, dropped=session.dropped, threshold=session.threshold,
        seconds=time.perf_counter() - started,
    )


def apply_update(arrays: ArrayRecord, update: np.ndarray) -> ArrayRecord:
    """``arrays`` plus a flat update laid out as ``flatten`` lays it out."""
    result, offset = {}, 0
    for name in sorted(arrays):
        current = arrays[name].numpy()
        step = update[offset : offset + current.size].reshape(current.shape)
        result[name] = Array((current + step).astype(current.dtype))
        offset += current.size
    if offset != update.size:
        raise SecureAggregationError(f"the decoded sum has {update.size} values; the model has {offset}")
    return ArrayRecord({name: result[name] for name in arrays})
