"""Guideline rules over plain samples (pure, no I/O) and the Alert type shared with the models.

See README.md in this folder for each rule, its thresholds and its source.
"""

from models.rules.alert import Alert, EpisodeTracker, Evidence, Persistence, Severity
from models.rules.engine import FASTING, RulesEngine
from models.rules.profile import INTERNATIONAL, JAPAN, PROFILES, RulesProfile

__all__ = [
    "FASTING",
    "INTERNATIONAL",
    "JAPAN",
    "PROFILES",
    "Alert",
    "EpisodeTracker",
    "Evidence",
    "Persistence",
    "RulesEngine",
    "RulesProfile",
    "Severity",
]
