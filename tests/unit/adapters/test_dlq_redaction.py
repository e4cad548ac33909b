"""Issue #13: what the DLQ stores and shows loses its secrets and nothing else — timestamps,
numbers, hosts and IP addresses survive in messages, tracebacks, the bus's DLQ copy and events,
and the payload stays the original input, byte for byte when it holds no secret."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from headwater import observability
from headwater.adapters.sqlite import SQLiteMetadataStore
from headwater.compose import make_bus, make_metadata_store, open_signal_worker, resolve_feature_set
from headwater.config import load_settings
from headwater.events import MessageDeadLettered
from headwater.models import DeadLetter
from headwater.observability import register_secret

KEPT = ("2026-01-01 00:00:00", "12:30:45", "5551234567", "db.internal:5432", "10.1.2.3:4222")
SECRETS = ("hunter2-canary", "bearer-canary-99", "url-pw-canary", "registered-canary-7")


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "_secrets", ())
    register_secret("registered-canary-7")


def noisy(prefix: str) -> str:
    return (
        f"{prefix}: bad event_time '2026-01-01 00:00:00' at 12:30:45, value 5551234567, "
        "db.internal:5432 refused, nats://ops:url-pw-canary@10.1.2.3:4222 password=hunter2-canary "
        "Authorization: Bearer bearer-canary-99 registered-canary-7"
    )


async def test_sqlite_dead_letters_keep_everything_but_secrets(tmp_path: Path) -> None:
    store = SQLiteMetadataStore(f"sqlite:///{tmp_path / 'state.db'}")
    await store.open()
    clean_payload = (
        b'{"entity_id":"a","event_time":"2026-01-01 00:00:00","value":5551234567,"host":"10.1.2.3"}'
    )
    secret_payload = b'{"event_time":"12:30:45","password":"hunter2-canary","dsn":"db.internal:5432"}'
    try:
        ids = [
            await store.add(
                DeadLetter(
                    id=0,
                    kind="signal",
                    input_ref="events.jsonl:line 1",
                    source="nats://ops:url-pw-canary@10.1.2.3:4222/x",
                    stage="decode",
                    error_type="InputError",
                    message=noisy("message"),
                    traceback=noisy("Traceback"),
                    attempts=1,
                    created_at="2026-01-01T00:00:00+00:00",
                    payload=payload,
                )
            )
            for payload in (clean_payload, secret_payload)
        ]
        first, second = [await store.get(i) for i in ids]
    finally:
        await store.close()
    assert first is not None and second is not None
    assert first.payload == clean_payload  # the original, verbatim: what replay needs
    assert second.payload == b'{"event_time":"12:30:45","password":"***","dsn":"db.internal:5432"}'
    assert first.source == "nats://***@10.1.2.3:4222/x"
    for shown in (first.message, first.traceback):
        for kept in KEPT:
            assert kept in shown
        for secret in SECRETS:
            assert secret not in shown
        assert "[PHONE]" not in shown and "[IP]" not in shown


async def test_worker_dead_letters_keep_times_and_hosts_in_every_copy(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path / "hw", bus=f"memory://{uuid.uuid4().hex[:8]}", ack_wait_seconds=0.3
    )
    spec = resolve_feature_set(settings, "sensors")
    bad = (
        b'{"specversion":"1.0","id":"bad-1","source":"db.internal:5432","type":"x","data":'
        b'{"entity_id":"10.1.2.3:4222","event_time":"2026-01-01 00:00:00","sequence":5551234567,"value":1}}'
    )
    leaky = (
        b'{"specversion":"1.0","id":"bad-2","source":"s","type":"x","data":'
        b'{"entity_id":"e","event_time":"password=hunter2-canary","sequence":1,"value":1}}'
    )
    bus = make_bus(settings)
    await bus.open()
    await bus.publish("signals", [bad, leaky])
    async with open_signal_worker(
        settings, spec, bus=bus, exit_when_idle_seconds=0.5, batch_size=4
    ) as worker:
        dead = [e async for e in worker.stream_events() if isinstance(e, MessageDeadLettered)]
    assert len(dead) == 2 and "'2026-01-01 00:00:00'" in dead[0].message
    assert "hunter2-canary" not in dead[1].message
    ((body, reason), (leaky_body, leaky_reason)) = await bus.dead_letters("signals")
    assert body == bad and "'2026-01-01 00:00:00'" in reason and "[PHONE]" not in reason
    assert "hunter2-canary" not in leaky_reason and b"hunter2-canary" not in leaky_body
    metadata = make_metadata_store(settings)
    await metadata.open()
    try:
        letter, leaky_letter = await metadata.list()
    finally:
        await metadata.close()
    assert letter.payload == bad
    assert "'2026-01-01 00:00:00'" in letter.message and "[PHONE]" not in letter.message
    assert "hunter2-canary" not in repr(leaky_letter)
