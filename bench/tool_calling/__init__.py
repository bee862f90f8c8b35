"""``python -m bench.tool_calling``: how reliably the embedded model calls tools."""
