"""The edge: the Quart-Trio app (REST, WebSockets, dashboard) and the ``tripwire`` CLI."""
