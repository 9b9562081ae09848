"""What crosses MQTT between a station and its township: the events a station sends, the
commands it takes, the topics they travel on, and the JSON Schemas made from them.

The one part of the unit the township may share (import-linter keeps the rest apart)."""
