"""Issue 11 item 8: the OpenAPI documents are honest, and schemathesis finds no server error.

schemathesis generates requests from the gateway's and the denoise stage's /openapi.json (multipart bodies
with real PNG/JPEG samples for the declared binary ``image``), sends them to the real processes, and checks
each answer: no 5xx, a documented status, the declared content type and, for JSON, the declared schema.
The number of cases per operation is bounded so the suite stays quick.
"""
from __future__ import annotations

import json

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from .conftest import ARTIFACTS

CASES_PER_OPERATION = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
TALLY: dict[str, dict[str, int]] = {}


def record(service: str, response) -> None:
    tally = TALLY.setdefault(service, {"cases": 0, "server_errors": 0, "operations": 0})
    tally["cases"] += 1
    tally["server_errors"] += response.status_code >= 500 and response.status_code not in (502, 503, 504)
    (ARTIFACTS / "schemathesis.json").write_text(json.dumps(TALLY, indent=1))


def fuzz(service: str, url: str) -> None:
    """Every operation of the document at ``url``, CASES_PER_OPERATION generated cases each."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        TALLY.setdefault(service, {"cases": 0, "server_errors": 0, "operations": 0})["operations"] += 1

        @settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            response = case.call(base_url=url, timeout=300)
            record(service, response)
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then fail once with all of them
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_gateway_openapi_fuzz(stack):
    fuzz("gateway", stack.url("gateway"))


def test_stage_openapi_fuzz(stack):
    fuzz("denoise", stack.url("denoise"))


def test_multipart_bodies_and_image_responses_are_declared(stack):
    document = httpx.get(stack.url("gateway") + "/openapi.json", timeout=30).json()
    for path in ("/v1/restore", "/v1/pipeline", "/v1/finish", "/v1/jobs"):
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["properties"]["image"]["format"] == "binary" and "image" in body["required"]
        for status in ("413", "415", "422", "502"):
            error = operation["responses"][status]["content"]["application/json"]["schema"]
            assert "error" in error["properties"]
    assert "image/png" in document["paths"]["/v1/restore"]["post"]["responses"]["200"]["content"]
    assert "application/json" not in document["paths"]["/v1/restore"]["post"]["responses"]["200"]["content"]
    stage_doc = httpx.get(stack.url("denoise") + "/openapi.json", timeout=30).json()
    process = stage_doc["paths"]["/process"]["post"]
    assert "params" in process["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert "image/png" in process["responses"]["200"]["content"]
