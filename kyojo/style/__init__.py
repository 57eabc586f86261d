"""Kyojo's one stylesheet for the people it serves (phone first, large text, no external fonts).

A leaf of data only (no imports): the household page on the gateway (``edge_agent/web``) and the city's public
pages in the cloud (``cloud_ingest/navi``, the garbage-collection navigator) both serve :data:`CSS` as
``/static/kyojo.css``, so the two look alike without either importing the other.
"""

from pathlib import Path

#: the stylesheet, served as ``/static/kyojo.css`` by every Kyojo web page
CSS = Path(__file__).with_name("kyojo.css")

__all__ = ["CSS"]
