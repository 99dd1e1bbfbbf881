"""`fedmed models`: the registered networks."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fedmed.models import available_models, create_model


def list_models(image_size: int = 64) -> None:
    """List the registered DP-ready networks and their sizes."""
    table = Table("model", "parameters")
    for name in available_models():
        model = create_model(name, image_size=image_size)
        table.add_row(name, f"{sum(p.numel() for p in model.parameters()):,}")
    Console().print(table)
