"""The household web app (issue 16)."""
