"""The household web app's tests (tests/webkit.py is their harness)."""
