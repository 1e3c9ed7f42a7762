"""The OpenAPI document at /api/openapi.json, checked by schemathesis against the app
in-process: for generated requests to every operation, no 5xx, and every response's
status and body are the ones the document declares. Small and derandomized, so the
run is cheap and repeatable."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

import pgq
from tests.web.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
EXAMPLES = 12
"""Per operation: 13 operations, about 2 s of requests each on a loaded machine."""


@pytest.fixture
def seeded(web: FastAPI, pgq_app: pgq.App) -> FastAPI:
    """The app over a database with a few jobs: waiting, scheduled, cancelled, with
    unique keys and tags, so generated ids and filters sometimes find something."""
    for n in range(3):
        pgq_app.enqueue("api.seed", {"n": n}, queue="seed", tags=["t"], unique_key=f"k{n}")
    pgq_app.enqueue("api.later", {}, delay=3600)
    pgq_app.jobs.cancel(pgq_app.enqueue("api.cancelled", {}).id, actor="seed")
    return web


def test_the_api_answers_as_its_document_says(seeded: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", seeded, headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13
    calls: dict[str, int] = {}
    for operation, mode in itertools.product(operations, GenerationMode):
        # Positive cases follow the document (pgq's own rules answer 422); negative ones
        # break it (wrong types, missing fields), which FastAPI refuses before the route.
        @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case, data: st.DataObject) -> None:
            del data
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            if case.path.endswith("/result") and isinstance(case.query, dict):
                case.query["wait"] = 0  # a generated wait sleeps up to 60 s per example
            case.call_and_validate(headers=AUTH, checks=CHECKS)
        try:
            check()
        except Unsatisfiable:
            # An operation without parameters or body has no request that breaks it.
            assert mode is GenerationMode.NEGATIVE, operation.label
    assert len(calls) == len(operations) and sum(calls.values()) > 5 * len(operations), calls


def test_the_document_declares_the_error_shape_everywhere(web: FastAPI) -> None:
    with TestClient(web) as client:
        assert client.get("/api/openapi.json").status_code == 401  # closed like every route
        paths = client.get("/api/openapi.json", headers=AUTH).json()["paths"]
    assert "HTTPValidationError" not in str(paths), "422 answers are the Error shape"
    for path, operations in paths.items():
        for method, operation in operations.items():
            declared = set(operation["responses"])
            if path == "/api/health":
                assert declared == {"200", "503"}
                continue
            assert {"401", "403", "503"} <= declared, (method, path)
            for status in declared - {"200", "201", "202"}:
                schema_ref = operation["responses"][status]["content"]["application/json"]
                assert schema_ref["schema"]["$ref"].endswith("/Error"), (method, path, status)
