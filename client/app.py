"""Flower ClientApp: one hospital; all the work is in fedmed.federation."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedmed.federation.messages import CROSS_SITE_ACTION, LOCAL_MODEL_ACTION
from fedmed.federation.node import secure_aggregation_round
from fedmed.federation.secure_rounds import ACTION

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    from fedmed.federation.site import train_round  # torch, MONAI, Opacus: only where training runs

    return train_round(msg, context)


@app.train(ACTION)
def secure_aggregation(msg: Message, context: Context) -> Message:
    return secure_aggregation_round(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from fedmed.federation.site import evaluate_round

    return evaluate_round(msg, context)


@app.train(LOCAL_MODEL_ACTION)
def local_model(msg: Message, context: Context) -> Message:
    from fedmed.federation.site import local_model_round

    return local_model_round(msg, context)


@app.evaluate(CROSS_SITE_ACTION)
def cross_site(msg: Message, context: Context) -> Message:
    from fedmed.federation.site import cross_site_round

    return cross_site_round(msg, context)
