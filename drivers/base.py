"""Re-export of :mod:`kyojo.contract.vocab` and :mod:`kyojo.contract.errors` (the vocabulary moved there so the
cloud needs no driver code). New code imports ``kyojo.contract`` directly."""

from kyojo.contract.vocab import (
    GLUCOSE_MMOL_TO_MGDL,
    ID_PATTERN,
    MAX_POWER_W,
    METRICS,
    Category,
    Clock,
    Driver,
    Event,
    Kind,
    KyojoError,
    MetricSpec,
    ParseError,
    Reading,
    ReadingError,
    plausible_delta,
    reading,
    reading_json,
    valid_id,
)

__all__ = [
    "GLUCOSE_MMOL_TO_MGDL",
    "ID_PATTERN",
    "MAX_POWER_W",
    "METRICS",
    "Category",
    "Clock",
    "Driver",
    "Event",
    "Kind",
    "KyojoError",
    "MetricSpec",
    "ParseError",
    "Reading",
    "ReadingError",
    "plausible_delta",
    "reading",
    "reading_json",
    "valid_id",
]
