"""A site's privacy spend, kept on the site's own disk.

Flower may start a fresh ClientApp process for every message, so an accountant that
lives in memory would restart at epsilon 0 each round. The history of
(noise_multiplier, sample_rate, steps) is instead saved after every round and loaded
before the next; that history is all any accountant needs to recompute epsilon.

Opacus is imported only by the functions that compute with it: a history and its
:class:`MechanismStep` are plain data, which ``fedmed audit`` reads on an auditor's
machine that has neither torch nor Opacus (dp_accounting recomputes there).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedmed.errors import PrivacyError

if TYPE_CHECKING:
    from opacus.accountants import IAccountant


@dataclass(frozen=True)
class MechanismStep:
    """``steps`` applications of the Poisson-subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def epsilon_of(history: list[MechanismStep], *, delta: float, accountant: str) -> float:
    """Epsilon spent by ``history`` at ``delta`` under the named Opacus accountant."""
    if not history:
        return 0.0
    from opacus.accountants import create_accountant

    opacus_accountant = create_accountant(accountant)
    opacus_accountant.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in history]
    with quiet_opacus():
        return float(opacus_accountant.get_epsilon(delta=delta))


@contextmanager
def quiet_opacus() -> Iterator[None]:
    """Silence three known, harmless Opacus warnings, and only those.

    "Secure RNG turned off": secure_mode needs torchcsprng, which has no current wheels
    (README, privacy notes). "Full backward hook is firing ...": images do not require
    gradients, so the hooks see module outputs only, as intended. "Optimal order is the
    largest alpha": PRV sizes its grid with an RDP bound, which is then looser, never wrong.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Smallest noise multiplier whose ``steps`` steps stay within ``target_epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    with quiet_opacus():
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )


class AccountantStore:
    """A site's privacy history file: loaded before and saved after training.

    Beside the history it keeps the hash of the ledger entry it was last saved with, so
    the site can tell a state file that was edited, or lost entries, from a crash
    between appending a ledger entry and saving this file.
    """

    def __init__(self, path: Path, *, accountant: str) -> None:
        self.path = path
        self.accountant = accountant

    def exists(self) -> bool:
        return self.path.exists()

    def ledger_head(self) -> str | None:
        """The ledger entry hash saved with the history (None when never saved with one)."""
        return self.load_state()[1]

    def load(self) -> list[MechanismStep]:
        """The recorded history; empty when the site has not trained yet."""
        return self.load_state()[0]

    def load_state(self) -> tuple[list[MechanismStep], str | None]:
        """The recorded history and the ledger head saved with it, from one read.

        Raises:
            PrivacyError: the file exists but cannot be read or was written by another
                accountant; training must not continue from an unknown spend.
        """
        if not self.path.exists():
            return [], None
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if raw["accountant"] != self.accountant:
                raise PrivacyError(
                    f"{self.path}: privacy history was kept with the {raw['accountant']!r} "
                    f"accountant, not {self.accountant!r}; keep the accountant fixed for a run"
                )
            history = [MechanismStep(float(s), float(q), int(n)) for s, q, n in raw["history"]]
            if any(s.noise_multiplier <= 0 or not 0 < s.sample_rate <= 1 or s.steps < 1 for s in history):
                raise ValueError("a step has a non-positive noise, a sample rate outside (0, 1] or no steps")
            return history, raw.get("ledger_head")
        except PrivacyError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise PrivacyError(
                f"{self.path}: privacy history is unreadable ({error}); refusing to train "
                "rather than restart the spend at zero"
            ) from None

    def save(self, history: list[MechanismStep], *, ledger_head: str | None = None) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "accountant": self.accountant,
            "history": [[s.noise_multiplier, s.sample_rate, s.steps] for s in history],
            "ledger_head": ledger_head,
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".accountant-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def history_of(accountant: IAccountant) -> list[MechanismStep]:
    """An Opacus accountant's history as MechanismSteps."""
    return [MechanismStep(float(s), float(q), int(n)) for s, q, n in accountant.history]
