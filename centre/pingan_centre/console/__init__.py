"""The township duty console: ingest from the stations, the alarm lifecycle, the duty screen.

A Django project and app in one package: `settings` reads the centre's config (a data
directory, a database URL, the broker), `ingest` subscribes to the township's stations,
`lifecycle` is the one place that changes an alarm, `views` draws the screens.
"""
