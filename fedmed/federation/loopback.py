"""An in-process Flower Grid: the real ServerApp and ClientApp code, no engine.

Every message goes through Flower's protobuf serialisation both ways, as it does on the
wire, and each node keeps its own ``Context`` across messages as a SuperNode does. A node
made to vanish gets the error reply a SuperLink gives for a node that stopped answering. Tests
use it to watch everything the server receives and to drop a site at an exact step;
benchmarks use it to time protocols without Ray's scheduling noise. Runs go through
the real engines (`fedmed simulate`, `fedmed run`) everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

UNAVAILABLE = "Error: Node Unavailable (the test bench dropped this node)"

Drop = Callable[[Message], bool]
"""Decides, for each message sent to a node, whether that node is gone (no reply)."""


def _over_the_wire(message: Message) -> Message:
    copy = message_from_proto(message_to_proto(message))
    copy.metadata.__dict__["_message_id"] = message.metadata.message_id
    return copy


class LoopbackGrid(Grid):
    """A Grid whose nodes are ClientApps called in this process, one after another.

    Args:
        client_app: the ClientApp every node runs.
        node_configs: node id to that node's node config.
        run_config: the run config both sides see.
        drop: optional; a node whose incoming message it accepts does not answer: the
            server gets Flower's "node unavailable" error instead, as from a SuperLink.
        received: optional; every reply the server gets is appended here.
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, dict[str, str | int | float | bool]],
        *,
        run_config: dict[str, str | int | float | bool],
        run_id: int = 1,
        drop: Drop | None = None,
        received: list[Message] | None = None,
    ) -> None:
        self.client_app = client_app
        self.contexts = {
            node_id: Context(run_id, node_id, dict(config), RecordDict(), dict(run_config))
            for node_id, config in node_configs.items()
        }
        self.server_context = Context(run_id, SUPERLINK_NODE_ID, {}, RecordDict(), dict(run_config))
        self.drop = drop
        self.received = received
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # noqa: ANN001
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self) -> Iterable:  # noqa: ANN201 - Flower's NodeInfo protobuf
        return []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            node = message.metadata.dst_node_id
            if self.drop is not None and self.drop(message):
                self._replies[message.metadata.message_id] = self._unavailable(message)
                if self.received is not None:
                    self.received.append(self._replies[message.metadata.message_id])
                continue
            context = self.contexts[node]
            TaskIdentity.node_id = node
            try:
                reply = self.client_app(_over_the_wire(message), context)
            finally:
                TaskIdentity.node_id = SUPERLINK_NODE_ID
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            reply = _over_the_wire(reply)
            if self.received is not None:
                self.received.append(reply)
            self._replies[message.metadata.message_id] = reply
        return ids

    @staticmethod
    def _unavailable(message: Message) -> Message:
        TaskIdentity.node_id = message.metadata.dst_node_id
        try:
            reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=UNAVAILABLE), reply_to=message)
        finally:
            TaskIdentity.node_id = SUPERLINK_NODE_ID
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return _over_the_wire(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
