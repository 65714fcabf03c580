"""seedworker: seed selection for Esper by bandit learning, over Kafka."""

from seedworker.contract.events import AdaptationOutcome, GraftRequested, SeedSelected
from seedworker.core.config import Settings, load_settings
from seedworker.core.selector import OutcomeResult, SeedSelector

__all__ = [
    "SeedSelector",
    "OutcomeResult",
    "Settings",
    "load_settings",
    "GraftRequested",
    "SeedSelected",
    "AdaptationOutcome",
]
__version__ = "0.1.0"
