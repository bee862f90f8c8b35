"""rag layer of opsloop (see DESIGN.md); filled in by later issues."""

__all__: list[str] = []
