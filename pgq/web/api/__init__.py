"""The HTTP JSON API under ``/api``, described by the OpenAPI document the app serves
at ``/api/openapi.json`` (docs/web.md, "HTTP API"). Every route needs a bearer token or
API key with the route's scope (``need``), except ``/api/health``."""

from __future__ import annotations

from fastapi import APIRouter

from pgq.web.api import jobs, system

router = APIRouter()
router.include_router(jobs.router)
router.include_router(system.router)
