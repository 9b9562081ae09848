"""CAP 1.2 alerts as broadcasts (issue 23 item 6): `alert` reads and checks one message
against the vendored OASIS schema, `imports` decides what it does to the loudspeakers,
`watch` takes messages dropped into a folder. docs/cap.md says what maps to what."""
