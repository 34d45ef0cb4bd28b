"""Schemathesis over a real agent's OpenAPI schema, over loopback HTTP: no generated request gets a 5xx.

The agent under test serves its schema because it runs with ``--api-docs`` (off by default). Every
operation gets ``EXAMPLES`` generated requests that fit the schema and ``EXAMPLES`` that do not (headers,
query and path included), each sent with and without the cluster token. Generating the cases is most of its
cost: 1-3 minutes on a slow 2-core machine.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.service.conftest import TOKEN

EXAMPLES = 25


def test_no_generated_request_gets_a_server_error(agents: Any) -> None:
    a = agents("a", "--no-discovery", "--api-docs", "--provision-wait-s", "2")
    schema = schemathesis.openapi.from_dict(a.get("/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += _fuzz(operation, mode, a.url)
    assert failures == [], "\n".join(failures[:20])
    assert a.get("/health").status_code == 200


def _fuzz(operation: Any, mode: GenerationMode, base_url: str) -> list[str]:
    """5xx answers to ``EXAMPLES`` generated requests of one operation, each sent without and with the cluster
    token (as 'METHOD path -> status'). Each case is sent twice rather than generated twice: generating is most of
    the run's cost (85 % of a profile; 202 s for the whole test when every case was generated once per token)."""
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        for auth in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            response = case.call(base_url=base_url, headers=auth, timeout=30)
            if response.status_code >= 500:
                sent = f"{case.method} {case.formatted_path} query={case.query} headers={case.headers}"
                sent += " (with the token)" if auth else ""
                failures.append(f"{sent} -> {response.status_code}")

    try:
        run()
    except Unsatisfiable:  # no parameters to make invalid: nothing negative to generate
        assert mode is GenerationMode.NEGATIVE, operation.label
    return failures
