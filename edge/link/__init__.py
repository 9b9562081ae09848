"""The way to the township: the MQTT uplink, its TLS diagnosis, health telemetry, and the
command worker that runs what the township sends."""
