"""pgq's dashboard and HTTP API: one ASGI application over the operations API
(docs/web.md). Needs the ``web`` extra: ``pip install 'pgq-jobs[web]'``; workers do not
import this package."""

from pgq.web.config import User, WebConfig
from pgq.web.factory import create_app
from pgq.web.passwords import hash_password

__all__ = ["User", "WebConfig", "create_app", "hash_password"]
