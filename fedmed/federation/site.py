"""The hospital's side of a round: everything the ClientApp does, minus the wiring.

The site validates the server's plan, loads its own DICOM data, checks its privacy
budget before training, trains with DP-SGD, records the spend on its own disk, and only
then replies. Any error a site can explain (bad data, budget, invalid plan) becomes an
error reply naming the site, so the server carries on with the others.

The site trusts nothing it has not checked: its DP randomness comes from its own CSPRNG,
never from a seed in the plan; it trains each (run, round) once; it evaluates a round's
model once and only after training in that round; and what it releases about its test
patients follows its policy's cell size.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedmed.config import DeviceName, SitePolicy, load_site_policy
from fedmed.data import SiteData, dataset_fingerprint, load_site_data
from fedmed.errors import ConfigError, PrivacyError
from fedmed.evaluation.subgroups import ATTRIBUTES, evaluate_subgroups, patient_keys
from fedmed.federation.messages import (
    GLOBAL_MODEL,
    MODEL_PREFIX,
    Key,
    RoundPlan,
    arrays_from_state,
    decode_plan,
    metric_entries,
    state_from_arrays,
)
from fedmed.federation.node import Site, reply_or_refuse, signing_key
from fedmed.federation.secure_rounds import RECORD, Field, begin_round
from fedmed.models import create_model, float_state, load_float_state
from fedmed.privacy import check_budget, epsilon_of, plan_privacy, train_private
from fedmed.privacy.books import LEDGER_FILE, PrivacyBooks
from fedmed.privacy.ledger import commit_state, hash_state, verify_ledger_file
from fedmed.privacy.randomness import Randomness, SecureRandomness, SeededRandomness, bootstrap_seed
from fedmed.privacy.terms import check_noise, check_randomness, check_terms
from fedmed.secure.keys import commitment_key
from fedmed.tasks import Task, create_task

log = logging.getLogger("fedmed.site")

EVALUATED = "fedmed-evaluated"
"""The ConfigRecord in a site's context listing what it has evaluated in this run."""


def select_device(requested: DeviceName) -> torch.device:
    if requested is DeviceName.CUDA and not torch.cuda.is_available():
        raise ConfigError("training.device is cuda but this site has no CUDA device")
    if requested is DeviceName.CPU or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def train_round(msg: Message, context: Context) -> Message:
    """Handle a train message: DP-SGD on local data, budget checked first."""
    return _answer(msg, context, _train)


def evaluate_round(msg: Message, context: Context) -> Message:
    """Handle an evaluate message: metrics of the received model on local test data."""
    return _answer(msg, context, _evaluate)


def local_model_round(msg: Message, context: Context) -> Message:
    """Handle a request for a model trained on this site's data alone (policy permitting)."""
    return _answer(msg, context, _train_local_model)


def cross_site_round(msg: Message, context: Context) -> Message:
    """Handle the end-of-run evaluation: every model the server holds, on local test data."""
    return _answer(msg, context, _evaluate_cross_site)


def _answer(msg: Message, context: Context, step: Callable[[Message, Context, Site], Message]) -> Message:
    """Run ``step`` with this process's torch threads; a site's refusal becomes an error reply."""
    if threads := os.environ.get("FEDMED_TORCH_THREADS"):  # set by `fedmed simulate`
        torch.set_num_threads(int(threads))
    return reply_or_refuse(msg, context, step)


def _load(site: Site, plan: RoundPlan, task: Task) -> SiteData:
    data = load_site_data(site.data_dir, spec=plan.input, targets=task, cache_dir=site.image_cache)
    for skipped in data.skipped:
        log.warning("site %s skipped %s: %s", site.site_id, skipped.path, skipped.reason)
    return data


def _model(plan: RoundPlan, task: Task, weights: dict[str, torch.Tensor], *, site: str) -> torch.nn.Module:
    """The network the plan names, for the plan's task, with the server's weights, once they are checked."""
    model = create_model(plan.model.name, spec=plan.input, outputs=task.outputs)
    try:
        load_float_state(model, weights)
    except ValueError as error:
        raise ConfigError(f"site {site} refuses the server's model for {plan.model.name}: {error}") from None
    return model


def _randomness(plan: RoundPlan, ledger_round: int) -> Randomness:
    """The site's own CSPRNG; seeded from the plan only under the unsafe opt-out (checked before)."""
    if plan.training.unsafe_reproducible:
        return SeededRandomness(plan.training.seed * 1_000_003 + ledger_round)
    return SecureRandomness()


def _policy(site: Site) -> SitePolicy:
    """The hospital's own policy; without one the site does not train (fail closed)."""
    if site.policy_path is None:
        raise PrivacyError(
            f"site {site.site_id} has no privacy policy: set policy-path in its node config "
            "(simulation: simulation.site_policy); refusing to train"
        )
    return load_site_policy(site.policy_path)


@dataclass
class _Trained:
    """What one stretch of DP training at a site produced, already on the site's books."""

    received: dict[str, torch.Tensor]
    """The weights training started from."""
    update: dict[str, torch.Tensor]
    metrics: MetricRecord
    site_record: ConfigRecord
    identity: Ed25519PrivateKey
    """The site's key, which signed the ledger entry."""
    min_group: int
    """The policy's smallest secure-aggregation group."""


def _train_privately(
    msg: Message, context: Context, site: Site, plan: RoundPlan, *, ledger_round: int, rounds: int, epochs: int,
) -> _Trained:
    """Check the terms and the budget, train with DP-SGD, and book the spend before replying.

    ``rounds`` and ``epochs`` describe the planned training: a federated round plans the
    run's rounds of ``local_epochs`` each; a local-only model plans one stretch of them all.
    """
    started = time.perf_counter()
    policy = _policy(site)
    training = plan.training
    check_terms(
        policy, site=site.site_id, requested=plan.privacy,
        model=plan.model.name, local_epochs=training.local_epochs,
        secure_aggregation=plan.secure_aggregation.enabled,
    )
    check_randomness(
        policy, site=site.site_id, unsafe_reproducible=training.unsafe_reproducible, simulated=site.simulated
    )
    task = create_task(plan.task)
    data = _load(site, plan, task)
    # The site keeps its books at its own delta and accountant, whatever the run asks.
    terms = plan.privacy.model_copy(update={"delta": policy.delta, "accountant": policy.accountant})
    privacy = plan_privacy(
        terms, site=site.site_id, n_train=len(data.train), batch_size=training.batch_size,
        local_epochs=epochs, rounds=rounds,
    )
    check_noise(policy, privacy, site=site.site_id)
    books = PrivacyBooks(
        site.state_dir, site=site.site_id, fingerprint=dataset_fingerprint(data),
        accountant=privacy.accountant, key=signing_key(site),
    )
    history = books.spent()
    run_id = str(context.run_id)
    books.check_new_round(run_id, ledger_round)
    projected = check_budget(privacy, history, site=site.site_id, budget=policy.max_epsilon)
    log.info(
        "site %s accepts the terms for round %s of run %s: noise %.4g, clip %g, sample rate %.4g, delta %g; "
        "epsilon %.3f spent on this dataset, %.3f after this round, budget %g",
        site.site_id, ledger_round, run_id, privacy.noise_multiplier, privacy.max_grad_norm, privacy.sample_rate,
        privacy.delta, epsilon_of(history, delta=privacy.delta, accountant=privacy.accountant), projected,
        policy.max_epsilon,
    )

    received = state_from_arrays(msg.content[Key.ARRAYS])
    model = _model(plan, task, received, site=site.site_id)
    outcome = train_private(
        model,
        data.train.as_torch_dataset(),
        privacy,
        loss=task.loss,
        history=history,
        epochs=epochs,
        learning_rate=training.learning_rate,
        randomness=_randomness(plan, ledger_round),
        momentum=training.momentum,
        proximal_mu=training.proximal_mu if training.strategy == "fedprox" else 0.0,
        device=select_device(training.device),
    )
    update = float_state(model)
    first_in_run = all(e.run_id != run_id for e in books.verified)
    entry = books.record(  # the spend is signed and on disk before anything leaves the site
        site=site.site_id,
        run_id=run_id,
        round=ledger_round,
        n_records=len(data.train),
        model_hash=hash_state(received),
        update_hash=commit_state(update, commitment_key(books.key)),
        noise_multiplier=privacy.noise_multiplier,
        sample_rate=privacy.sample_rate,
        steps=outcome.steps,
        max_grad_norm=privacy.max_grad_norm,
        delta=privacy.delta,
        accountant=privacy.accountant,
        epsilon=outcome.epsilon,
        budget_epsilon=policy.max_epsilon,
    )
    # A run's first reply carries the site's whole ledger so auditors can recompute the
    # spend of earlier runs too; later replies carry the new entry.
    shared = books.verified if first_in_run else [entry]
    log.info(  # the training loss stays here: it is a statistic of the training data, not DP
        "site %s trained round %s of run %s: loss %.4f, epsilon %.3f of %g",
        site.site_id, ledger_round, run_id, outcome.loss, outcome.epsilon, policy.max_epsilon,
    )
    metrics = MetricRecord(
        {
            Key.NUM_EXAMPLES: len(data.train),
            Key.EPSILON: outcome.epsilon,
            Key.DELTA: privacy.delta,
            Key.BUDGET_EPSILON: policy.max_epsilon,
            Key.NOISE_MULTIPLIER: privacy.noise_multiplier,
            Key.SAMPLE_RATE: privacy.sample_rate,
            Key.STEPS: outcome.steps,
            Key.SKIPPED_FILES: len(data.skipped),
            Key.SECONDS: time.perf_counter() - started,
        }
    )
    site_record = ConfigRecord({Key.LEDGER: [e.to_line() for e in shared]})
    return _Trained(
        received=received, update=update, metrics=metrics, site_record=site_record, identity=books.key,
        min_group=policy.min_secure_group,
    )


def _train(msg: Message, context: Context, site: Site) -> Message:
    plan = decode_plan(msg.content[Key.CONFIG])
    server_round = int(msg.content[Key.CONFIG][Key.SERVER_ROUND])
    training = plan.training
    trained = _train_privately(
        msg, context, site, plan, ledger_round=server_round, rounds=training.rounds, epochs=training.local_epochs,
    )
    content = RecordDict({Key.METRICS: trained.metrics, Key.SITE: trained.site_record})
    if plan.secure_aggregation.enabled:  # the update stays here until it is masked
        advert = begin_round(
            context.state, site=site.site_id, run=str(msg.metadata.run_id), round=server_round,
            identity=trained.identity,
            update={name: (trained.update[name] - trained.received[name]).numpy() for name in trained.update},
            examples=int(trained.metrics[Key.NUM_EXAMPLES]), min_group=trained.min_group,
        )
        content[RECORD] = ConfigRecord({Field.ADVERT: advert})
    else:
        content[Key.ARRAYS] = arrays_from_state(trained.update)
    sent = "a signed key advert (the update stays here until masked)" if plan.secure_aggregation.enabled else (
        "the update in the clear")
    log.info("site %s sends for round %s: %s, its ledger entry and training metrics", site.site_id, server_round, sent)
    return Message(content=content, reply_to=msg)


LOCAL_MODEL_ROUND = 0
"""Ledger round of a site's local-only model: booked like any round, outside the federation's."""


def _train_local_model(msg: Message, context: Context, site: Site) -> Message:
    """Train a model on this site's data alone, from the run's initial weights, and share it.

    Same DP terms as a federated round, for all the run's epochs at once; the spend goes
    on the site's books. Only a site whose policy allows ``share_local_model`` sends it.
    """
    policy = _policy(site)
    if not policy.share_local_model:
        raise PrivacyError(
            f"site {site.site_id} does not share a model trained on its data alone: its policy "
            "leaves share_local_model false"
        )
    plan = decode_plan(msg.content[Key.CONFIG])
    training = plan.training
    trained = _train_privately(
        msg, context, site, plan, ledger_round=LOCAL_MODEL_ROUND, rounds=1,
        epochs=training.local_epochs * training.rounds,
    )
    content = RecordDict(
        {Key.METRICS: trained.metrics, Key.SITE: trained.site_record, Key.ARRAYS: arrays_from_state(trained.update)}
    )
    log.info("site %s sends its local-only model in the clear (policy: share_local_model)", site.site_id)
    return Message(content=content, reply_to=msg)


def _evaluate(msg: Message, context: Context, site: Site) -> Message:
    """Metrics of a round's global model on the site's test set, once per round it trained in.

    A model the server chose is a question about the site's test patients, so the site
    answers one per round, only for a round it trained in (its ledger says so), never over
    fewer patients than its ``min_cell_size``, and releasing only the task's aggregates
    (score histograms coarsened to the same cell size, per-structure Dice sums).
    """
    started = time.perf_counter()
    policy = _policy(site)
    plan = decode_plan(msg.content[Key.CONFIG])
    server_round = int(msg.content[Key.CONFIG][Key.SERVER_ROUND])
    _check_trained(site, run_id=str(context.run_id), server_round=server_round)
    _mark_evaluated(context, site, f"round {server_round}")
    task = create_task(plan.task)
    data = _load(site, plan, task)
    patients = patient_keys(data.test.metadata)
    _check_enough_patients(site, patients, policy.min_cell_size)
    model = _model(plan, task, state_from_arrays(msg.content[Key.ARRAYS]), site=site.site_id)
    predictions = task.predict(model, data.test.images, device=select_device(plan.training.device))
    evaluation = task.evaluate_site(
        data.test.targets.numpy(), predictions, patients=patients, min_cell_size=policy.min_cell_size,
    )
    metrics = MetricRecord(
        {
            Key.NUM_EXAMPLES: len(data.test),
            **metric_entries(evaluation.metrics),
            Key.RELEASE: evaluation.release,
            Key.SKIPPED_FILES: len(data.skipped),
            Key.SECONDS: time.perf_counter() - started,
        }
    )
    value = evaluation.metrics.get(task.metric.key)
    log.info(
        "site %s releases its evaluation of round %s: %d test records of %d patients, %s %s, aggregates "
        "over at least %d patients", site.site_id, server_round, len(data.test), len(set(patients)),
        task.metric.label, "n/a" if value is None else f"{value:.3f}", policy.min_cell_size,
    )
    return Message(content=RecordDict({Key.METRICS: metrics}), reply_to=msg)


def _check_trained(site: Site, *, run_id: str, server_round: int) -> None:
    """Refuse to evaluate a round this site did not train in: its ledger is the witness."""
    ledger = verify_ledger_file(site.state_dir / LEDGER_FILE, signing_key(site).public_key())
    if not any((e.run_id, e.round) == (run_id, server_round) for e in ledger):
        raise PrivacyError(
            f"site {site.site_id} evaluates only the model of a round it trained in; it did not train "
            f"round {server_round} of run {run_id}"
        )


def _mark_evaluated(context: Context, site: Site, what: str) -> None:
    """Note in the site's context that ``what`` was evaluated; refuse a second request for it."""
    record = context.state.get(EVALUATED) or ConfigRecord({"done": []})
    done = list(record["done"])
    if what in done:
        raise PrivacyError(
            f"site {site.site_id} already evaluated {what} of this run; it answers each evaluation once"
        )
    record["done"] = [*done, what]
    context.state[EVALUATED] = record


def _check_enough_patients(site: Site, patients: list, min_cell_size: int) -> None:
    count = len(set(patients))
    if count < min_cell_size:
        raise PrivacyError(
            f"site {site.site_id}'s test set covers {count} patients, fewer than its min_cell_size "
            f"{min_cell_size}: no metric over it leaves the site"
        )


def _evaluate_cross_site(msg: Message, context: Context, site: Site) -> Message:
    """Aggregate metrics of every model, and subgroup cells of the global one.

    A cell over fewer patients than the site's ``min_cell_size`` is replaced by
    ``{"suppressed": true}`` here, before anything is sent. The site answers once per run,
    for at most its policy's ``max_evaluation_models`` models.
    """
    policy = _policy(site)
    plan = decode_plan(msg.content[Key.CONFIG])
    models = {name.removeprefix(MODEL_PREFIX): arrays for name, arrays in msg.content.array_records.items()
              if name.startswith(MODEL_PREFIX)}
    if len(models) > policy.max_evaluation_models:
        raise PrivacyError(
            f"site {site.site_id} scores at most {policy.max_evaluation_models} models in one evaluation "
            f"(its policy's max_evaluation_models); the server sent {len(models)}"
        )
    _mark_evaluated(context, site, "the cross-site evaluation")
    settings = plan.evaluation
    task = create_task(plan.task)
    data = _load(site, plan, task)
    targets = data.test.targets.numpy()
    device = select_device(plan.training.device)
    seed = plan.training.seed if plan.training.unsafe_reproducible else bootstrap_seed()
    cells, subgroups = {}, {}
    for model_id, arrays in models.items():
        model = _model(plan, task, state_from_arrays(arrays), site=site.site_id)
        predictions = task.predict(model, data.test.images, device=device)

        def cell(index: np.ndarray, patients: int, predictions: np.ndarray = predictions) -> dict:
            return task.evaluate_cell(
                targets[index], predictions[index], patients=patients, settings=settings,
                min_cell_size=policy.min_cell_size, seed=seed,
            )

        analysis = evaluate_subgroups(  # groups for the global model; the others' overall cell only
            data.test.metadata, cell, metric=task.metric.key, min_cell_size=policy.min_cell_size,
            attributes=ATTRIBUTES if model_id == GLOBAL_MODEL else (),
        )
        cells[model_id] = analysis["overall"]
        if model_id == GLOBAL_MODEL:
            subgroups = analysis
    report = json.dumps({"models": cells, "subgroups": subgroups})
    log.info("site %s releases cross-site cells for %s (cells under %d patients suppressed)",
             site.site_id, ", ".join(models), policy.min_cell_size)
    return Message(content=RecordDict({Key.SITE: ConfigRecord({Key.EVALUATION: report})}), reply_to=msg)
