"""Runs one train round of a site in its own process, as a SuperNode's ClientApp would.

Used by test_site_books.py to kill a site at chosen points. Usage:
    python site_worker.py SITE_DIR STATE_DIR POLICY ROUND [CRASH]
CRASH: "after-train" (killed once trained, before anything is recorded) or
"after-ledger" (killed between appending the ledger entry and saving the state).
Prints the reply's epsilon, or the refusal, as one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmed.config import InputConfig, ModelConfig, PrivacyConfig, SecureAggregationConfig, TrainingConfig
from fedmed.federation import site as site_module
from fedmed.federation.messages import Key, RoundPlan
from fedmed.models import create_model, float_state
from fedmed.privacy import accountant as accountant_module

IMAGE_SIZE = 32
PLAN = RoundPlan(
    model=ModelConfig(name="small_cnn"),
    input=InputConfig(image_size=IMAGE_SIZE),
    training=TrainingConfig(rounds=4, local_epochs=1, batch_size=16, learning_rate=0.1),
    privacy=PrivacyConfig(target_epsilon=4.0, delta=1e-3, max_grad_norm=1.0),
    secure_aggregation=SecureAggregationConfig(),
)


def train_message(server_round: int) -> Message:
    torch.manual_seed(0)
    weights = float_state(create_model("small_cnn", spec=InputConfig(image_size=IMAGE_SIZE)))
    config = {Key.PLAN: PLAN.model_dump_json(), Key.SERVER_ROUND: server_round}

    content = RecordDict({Key.ARRAYS: ArrayRecord(weights), Key.CONFIG: ConfigRecord(config)})
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1  # as the ServerApp's
    return Message(content=content, dst_node_id=1, message_type="train")


def site_context(site_dir: Path, state_dir: Path, policy: Path) -> Context:
    node_config = {
        Key.SITE_ID: "site-a", Key.DATA_DIR: str(site_dir), Key.STATE_DIR: str(state_dir),
        Key.POLICY_PATH: str(policy), Key.CACHE_DIR: str(state_dir.parent / "cache"),
    }
    return Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def die(*_: object, **__: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    site_dir, state_dir, policy = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    server_round = int(sys.argv[4])
    crash = sys.argv[5] if len(sys.argv) > 5 else None
    torch.set_num_threads(1)
    if crash == "after-train":
        real_train = site_module.train_private

        def train_then_die(*args: object, **kwargs: object) -> object:
            real_train(*args, **kwargs)
            die()

        site_module.train_private = train_then_die
    elif crash == "after-ledger":
        accountant_module.AccountantStore.save = die
    reply = site_module.train_round(train_message(server_round), site_context(site_dir, state_dir, policy))
    if reply.has_error():
        print(json.dumps({"refused": reply.error.reason}))
    else:
        print(json.dumps({"epsilon": reply.content[Key.METRICS][Key.EPSILON]}))


if __name__ == "__main__":
    main()
