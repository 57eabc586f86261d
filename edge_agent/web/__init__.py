"""The household web app on the gateway (``kyojo web serve``): see :mod:`edge_agent.web.app`."""
