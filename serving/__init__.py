"""The composition root: app factory, routers, CLI; the only place that wires implementations."""

__all__: list[str] = []
