"""Kyojo's one stylesheet for the people it serves (phone first, large text, no external fonts).

A leaf of data only (no imports): the household page on the gateway (``edge_agent/web``) and the city's public
pages in the cloud (``cloud_ingest/navi``, the garbage-collection navigator) both serve :data:`STATIC` under
``/static/`` (Starlette: ``StaticFiles(packages=[PACKAGE_STATIC], ...)``), so the two look alike without either
importing the other.
"""

from pathlib import Path

#: the folder of the shared files (``kyojo.css``), served under ``/static/`` by every Kyojo web page
STATIC = Path(__file__).with_name("static")
#: the same folder as Starlette's ``StaticFiles(packages=[...])`` names it
PACKAGE_STATIC = (__name__, "static")
#: the stylesheet
CSS = STATIC / "kyojo.css"

__all__ = ["CSS", "PACKAGE_STATIC", "STATIC"]
