"""Django settings, derived from the centre's config (config.py): nothing to edit here."""

from __future__ import annotations

from pathlib import Path

import django_stubs_ext

from pingan_centre.console import config, private

# ModelAdmin[...] and friends are generic at run time too (for the type checker's sake).
django_stubs_ext.monkeypatch()

CENTRE = config.load()
DATA_DIR = CENTRE.data_dir
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
HERE = Path(__file__).resolve().parent

# A leaked or weak key stops the console here (config.SecretKeyError, which says how to
# make a new one): whoever holds the key can forge any user's login session.
SECRET_KEY = config.secret_key(CENTRE)
DEBUG = CENTRE.debug
# A township LAN: the console is reached by whatever address the PC has there.
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pingan_centre.console.apps.ConsoleConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "pingan_centre.console.middleware.ChineseFirst",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "pingan_centre.console.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
        "django.template.context_processors.i18n",
    ]},
}]
ASGI_APPLICATION = "pingan_centre.console.asgi.application"

DATABASES = {"default": config.database_settings(CENTRE.database, DATA_DIR)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Made 0600 before SQLite opens it (which would make it 0644): it holds the sessions.
    private.create(Path(DATABASES["default"]["NAME"]))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "zh-hans"
LANGUAGES = [("zh-hans", "简体中文"), ("en", "English")]
LOCALE_PATHS = [HERE / "locale"]
USE_I18N = True
TIME_ZONE = "Asia/Shanghai"
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = None
# Served from the package itself (no collectstatic step for a township to forget).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = False

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
SESSION_COOKIE_AGE = 14 * 3600  # one long shift
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
