"""Ping'an Edge unit images: the card tools a technician runs on a laptop."""
