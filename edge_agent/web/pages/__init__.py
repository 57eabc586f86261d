"""The household pages: each module exposes ``routes`` (collected by :func:`edge_agent.web.app.create_app`)."""
