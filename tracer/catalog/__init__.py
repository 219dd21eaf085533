"""The hop catalog and its version pins: data, resolved against installed source (imports nothing of ours but itself)."""
