"""Flower ServerApp: coordinates the hospitals; all the work is in fedmed.federation."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmed.federation.server import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, context)
