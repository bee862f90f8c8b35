"""Planning: from a request in words to a typed plan (offline by default)."""
