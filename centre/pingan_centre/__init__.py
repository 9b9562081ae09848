"""The township side of Ping'an Edge: what runs at the township centre, never on a unit."""
