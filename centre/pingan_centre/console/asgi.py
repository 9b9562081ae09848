"""The ASGI application: served by uvicorn (server-sent events need a streaming server)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pingan_centre.console.settings")
application = get_asgi_application()
