"""Fixtures of the web app's tests: see tests/webkit.py."""

from tests.webkit import (  # noqa: F401 - fixtures are found by name
    browser,
    desktop,
    fresh_home,
    home,
    phone,
    playwright_driver,
    seeded_home,
    seeded_month,
    seeded_web,
    web,
)
