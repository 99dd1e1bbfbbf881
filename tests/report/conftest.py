"""A hand-built, schema-complete results document, and the check that a page shows only its numbers.

Other test folders import the checker: ``from tests.report.conftest import numbers_missing_from``.
"""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser
from typing import Any

import pytest

SITES = ["site-a", "site-b", "site-c"]
FINDING = (
    "At site-b the federated model is worse for sex F (AUROC 0.702) than for M (AUROC 0.861): "
    "a gap of 0.159 with non-overlapping intervals."
)
NUMBER = re.compile(r"(?<![\d.])(?:(?<!\w)-)?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
"""A number as a reader sees it: 3, 0.812, -1.5, 1e-05; digits glued to letters count too (site1)."""


def cell(n: int, prevalence: float, auroc: float | None, low: float | None, high: float | None,
         sensitivity: float, specificity: float, ece: float) -> dict[str, Any]:
    return {"n": n, "prevalence": prevalence, "auroc": auroc,
            "auroc_ci": [low, high] if auroc is not None else [None, None],
            "sensitivity": sensitivity, "specificity": specificity, "ece": ece}


SUPPRESSED = {"suppressed": True}


def make_results() -> dict[str, Any]:
    """3 sites, 3 rounds, models global, local:site-a, pooled, without:site-a; local:site-c refused."""
    rounds = []
    for number in (1, 2, 3):
        rounds.append({
            "round": number,
            "sites": {
                site: {
                    "epsilon": 0.4137 * number + 0.05 * i,
                    "delta": 1e-05, "num_examples": 300 + 10 * i, "noise_multiplier": 1.23,
                    "sample_rate": 0.21333, "steps": 5, "seconds": 2.71 + i,
                    "test_auroc": 0.61 + 0.081 * number + 0.017 * i, "test_accuracy": 0.58 + 0.05 * number,
                    "test_eval_loss": 0.66 - 0.02 * number - 0.013 * i, "test_num_examples": 100 + 10 * i,
                }
                for i, site in enumerate(SITES)
            },
            "failures": [{"stage": "train", "node": 4417, "reason": "site-c refused: epsilon budget would be exceeded"}]
            if number == 3 else [],
            "secure_aggregation": {"sites": SITES, "dropped": [], "threshold": 3, "seconds": 0.412},
            "global_auroc": 0.605 + 0.083 * number,
        })
    sites = {
        site: {
            "n_train": 300 + 10 * i, "n_test": 100 + 10 * i, "auroc": 0.853 + 0.017 * i, "accuracy": 0.73 + 0.01 * i,
            "epsilon": 1.2411 + 0.05 * i, "delta": 1e-05,
            "privacy": {
                "statement": f"Sample-level (epsilon={1.2411 + 0.05 * i:.3f}, delta=1e-05)-differential privacy "
                             f"for each of the {300 + 10 * i} training records of site {site}'s dataset.",
                "epsilon": 1.2411 + 0.05 * i, "delta": 1e-05, "budget_epsilon": 2.0 + i, "n_records": 300 + 10 * i,
                "accountant": "prv", "ledger": f"ledgers/{site}.jsonl",
            },
        }
        for i, site in enumerate(SITES)
    }
    matrix = {
        "global": {
            "site-a": cell(100, 0.31, 0.874, 0.812, 0.929, 0.781, 0.833, 0.041),
            "site-b": cell(110, 0.28, 0.791, 0.722, 0.853, 0.702, 0.771, 0.062),
            "site-c": cell(120, 0.35, 0.902, 0.861, 0.941, 0.822, 0.864, 0.035),
        },
        "local:site-a": {
            "site-a": cell(100, 0.31, 0.833, 0.768, 0.891, 0.712, 0.802, 0.072),
            "site-b": SUPPRESSED,
            "site-c": None,
        },
        "pooled": {
            "site-a": cell(100, 0.31, 0.911, 0.866, 0.951, 0.842, 0.871, 0.029),
            "site-b": cell(110, 0.28, 0.882, 0.829, 0.929, 0.802, 0.851, 0.033),
            "site-c": cell(120, 0.35, 0.921, 0.884, 0.957, 0.851, 0.882, 0.027),
        },
        "without:site-a": {
            "site-a": cell(100, 0.31, 0.652, 0.571, 0.733, 0.561, 0.702, 0.114),
            "site-b": cell(110, 0.28, 0.774, 0.701, 0.842, 0.691, 0.761, 0.071),
            "site-c": cell(120, 0.35, 0.885, 0.839, 0.926, 0.811, 0.842, 0.044),
        },
    }
    subgroups = {
        site: {
            "overall": matrix["global"][site],
            "attributes": {
                "sex": {
                    "groups": {"F": cell(52, 0.29, 0.702, 0.611, 0.781, 0.651, 0.742, 0.081),
                               "M": cell(48, 0.33, 0.861, 0.801, 0.912, 0.792, 0.822, 0.052)},
                    "worst_group": "F", "largest_gap": 0.159, "equalized_odds_difference": 0.141,
                },
                "age_band": {
                    "groups": {"<40": SUPPRESSED,
                               "40-64": cell(61, 0.27, 0.812, 0.741, 0.874, 0.731, 0.801, 0.058),
                               "65+": cell(33, 0.39, None, None, None, 0.0, 1.0, 0.092)},
                    "worst_group": "40-64", "largest_gap": None, "equalized_odds_difference": None,
                },
            },
        }
        for site in SITES
    }
    return {
        "fedmed_version": "0.1.0",
        "status": "completed",
        "status_reason": None,
        "started_at": 1767225600.25,
        "started": "2026-01-01T00:00:00+00:00",
        "wall_seconds": 187.62,
        "config": {
            "name": "chest-xray-demo",
            "data": {
                "root": "/data/hospitals", "sites": SITES, "image_size": 64, "cache_dir": None, "synthesize": None
            },
            "model": {"name": "densenet121"},
            "training": {"rounds": 3, "local_epochs": 1, "batch_size": 64, "learning_rate": 0.1, "momentum": 0.0,
                         "strategy": "fedavg", "proximal_mu": 0.0, "min_sites": None, "device": "auto", "seed": 0},
            "privacy": {"target_epsilon": 2.0, "noise_multiplier": None, "max_grad_norm": 1.0, "delta": 1e-05,
                        "accountant": "prv"},
            "secure_aggregation": {"enabled": True},
            "evaluation": {"threshold": 0.5, "confidence": 0.95, "bootstrap_samples": 1000, "finding_gap": 0.05,
                           "local_models": True, "pooled_baseline": True, "leave_one_site_out": True},
            "simulation": {"cpus_per_site": 1, "gpus_per_site": 0.0, "site_policy": None, "site_policies": {},
                           "state_root": None},
        },
        "rounds": rounds,
        "sites": sites,
        "global": {"auroc": 0.854, "n_test": 330, "sites_evaluated": 3},
        "evaluation": {
            "threshold": 0.5, "confidence": 0.95, "bootstrap_samples": 1000, "finding_gap": 0.05,
            "models": [{"id": "global", "label": "federated"}, {"id": "local:site-a", "label": "site-a alone"},
                       {"id": "pooled", "label": "pooled data"},
                       {"id": "without:site-a", "label": "federated without site-a"}],
            "refused": {"local:site-c": "site-c declined to share a model trained on its data alone"},
            "matrix": matrix,
            "subgroups": subgroups,
            "comparison": {
                "site-a": {"federated": 0.874, "local": 0.833, "pooled": 0.911, "unseen": 0.652},
                "site-b": {"federated": 0.791, "local": None, "pooled": 0.882, "unseen": None},
                "site-c": {"federated": 0.902, "local": None, "pooled": 0.921, "unseen": None},
            },
            "findings": [{"site": "site-b", "attribute": "sex", "worse": "F", "better": "M", "gap": 0.159,
                          "text": FINDING}],
        },
    }


@pytest.fixture()
def results() -> dict[str, Any]:
    """A fresh copy per test: tests may change it."""
    return copy.deepcopy(make_results())


# ---------------------------------------------------------------- the numbers rule


class _VisibleText(HTMLParser):
    """Text a reader sees: everything but <style> and <script> contents (images are pixels)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    return " ".join(parser.parts)


def _numbers_in(document: Any) -> list[tuple[str | None, float]]:
    """Every number in a JSON document, as (spelling in a string or None, value); keys count as strings."""
    found: list[tuple[str | None, float]] = []
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            found.extend((token, float(token)) for token in NUMBER.findall(item))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            found.append((None, item))
    return found


def _shown_as(token: str, value: float) -> bool:
    """Whether ``value`` shown at the precision of ``token`` reads as ``token``."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    if exponent:
        return f"{value:.{decimals}e}" == f"{float(token):.{decimals}e}"
    if decimals:
        return f"{value:.{decimals}f}" == f"{float(token):.{decimals}f}"
    return f"{value:.0f}" == str(int(token))


def numbers_missing_from(html: str, results: dict[str, Any]) -> list[str]:
    """Numbers a reader sees on the page that results.json does not hold at the shown precision.

    A number shown with d decimals must be some number of results.json (or written inside one of
    its strings, keys included) that rounds to it; an integer must be one exactly or a rounded
    value (wall_seconds shown as whole seconds). Each miss is returned with its context.
    """
    candidates = _numbers_in(results)
    text = " ".join(visible_text(html).split())
    missing = []
    for match in NUMBER.finditer(text):
        token = match.group()
        if not any(spelling == token or _shown_as(token, value) for spelling, value in candidates):
            missing.append(f"{token} in ...{text[max(0, match.start() - 40):match.end() + 40]}...")
    return missing
