"""Schemathesis against the served ``/openapi.json``: generated requests (valid and invalid) must
never cause a 5xx, and every answer must match the documented status codes, content types and
schemas. The server is real (uvicorn on 127.0.0.1, lifespan on, so jobs run)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis
import uvicorn

from headwater import load_settings
from headwater.server import create_app
from tests.servers.processes import free_port

TOKEN = "hw-schema-token-31c9"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("api")
    (root / "docs").mkdir()
    (root / "docs" / "a.md").write_text("# A\n\nOne small document.\n")
    settings = load_settings(home=root / "home", api_token=TOKEN, workers=1, api_source_roots=[root / "docs"])
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(
    max_examples=30,
    derandomize=True,  # the same cases every run: CI is reproducible
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
def test_the_api_matches_its_schema(case: schemathesis.Case, api_url: str) -> None:
    # positive_data_acceptance is off: a schema-valid docs job may still name a folder that does not
    # exist or lies outside the allowed roots, which the server rightly rejects with 422
    case.call_and_validate(
        base_url=api_url,
        headers=AUTH,
        timeout=30,
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
