"""`fedmed models`: the registered networks."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fedmed.config import InputConfig, SampleUnit
from fedmed.models import available_models, create_model, model_spatial_dims


def list_models(image_size: int = 64) -> None:
    """List the registered DP-ready networks, what input each takes, and their sizes."""
    table = Table("model", "input", "parameters")
    for name in available_models():
        volume = model_spatial_dims(name) == 3
        spec = InputConfig(sample=SampleUnit.SERIES if volume else SampleUnit.IMAGE, image_size=image_size)
        model = create_model(name, spec=spec)
        size = f"{sum(p.numel() for p in model.parameters()):,}"
        table.add_row(name, "3-D volume (sample: series)" if volume else "2-D image", size)
    Console().print(table)
