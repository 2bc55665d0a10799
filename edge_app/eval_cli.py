"""`shelfsight eval` (filled in below)."""

COMMANDS: list = []
