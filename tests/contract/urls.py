"""How the contract suites name their adapters: one URL template per adapter, in a list per port.

A suite's fixture is parametrized by that list and fills each template with ``adapter_url``:
``{tmp}`` is the test's own folder, and any other ``{name}`` is the fixture of that name (a
server the session started), so ``"http://127.0.0.1:{fake_embedder.port}/v1/embeddings?…"``
starts the fake embedding server only for the tests that use that URL. Adding an adapter to a
suite is adding its URL to the list (and, for a server, the fixture that starts it).
"""

from __future__ import annotations

import string
from pathlib import Path
from urllib.parse import urlsplit

import pytest


def adapter_url(template: str, request: pytest.FixtureRequest, tmp: Path | None = None) -> str:
    """``template`` with its ``{tmp}`` and ``{fixture…}`` fields filled in."""
    values: dict[str, object] = {}
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        name = field.split(".", 1)[0].split("[", 1)[0]
        if name == "tmp":
            if tmp is None:
                raise AssertionError(f"{template!r}: {{tmp}} needs a folder")
            values[name] = tmp
        elif name not in values:
            values[name] = request.getfixturevalue(name)
    return template.format(**values)


def url_id(template: str) -> str:
    """A test id for a URL template: its scheme (``path`` for a bare path) and query, if any."""
    if "://" not in template:
        return "path"
    parts = urlsplit(template)
    return f"{parts.scheme}?{parts.query}" if parts.query else parts.scheme
