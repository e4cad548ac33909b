import pytest

from headwater.redaction import is_secret_key, redact_bytes, redact_text, redact_url, redact_value


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True), ("API-KEY", True), ("apiKey", True), ("X-Auth-Token", True),
        ("clientSecret", True), ("password", True), ("authorization", True), ("accesstoken", True),
        ("sig", True), ("max_tokens", False), ("tokens", False), ("doc_id", False), ("monkey", False),
        ("author", False),
    ],
)  # fmt: skip
def test_secret_key_names(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


def test_urls_lose_credentials_and_secret_params_only() -> None:
    assert redact_url("nats://user:pw@bus:4222/x?tls=1&token=t0k") == "nats://***@bus:4222/x?tls=1&token=***"
    assert redact_url("redis://bus:6379/0") == "redis://bus:6379/0"
    assert redact_text("see https://a:b@h/p?sig=s1g&x=1") == "see https://***@h/p?sig=***&x=1"


def test_known_secrets_are_masked_wherever_they_occur() -> None:
    assert redact_text("abcXYZSECRETdef", ["XYZSECRET"]) == "abc***def"
    assert redact_text('{"password": "p4ss", "user": "u"}') == '{"password": "***", "user": "u"}'


# What operators read keeps what they need: times, numbers, hosts, addresses (issue #13).
KEPT = (
    "2026-01-01 00:00:00", "12:30:45", "5551234567", "db.internal:5432", "10.1.2.3:4222",
    "call 020 7946 0958", "ops@example.com", "2001:db8::1",
)  # fmt: skip


@pytest.mark.parametrize("kept", KEPT)
def test_timestamps_numbers_and_hosts_survive_while_secrets_go(kept: str) -> None:
    text = f"bad event_time {kept!r} from nats://bus:t0ken-pw@{kept}/x?token=abc123; password=hunter2"
    clean = redact_text(text, ["registered-secret-1"])
    assert clean.count(kept) == text.count(kept)
    for secret in ("t0ken-pw", "abc123", "hunter2"):
        assert secret not in clean
    assert redact_text(f"{kept} registered-secret-1", ["registered-secret-1"]) == f"{kept} ***"


def test_text_without_secrets_comes_back_unchanged() -> None:
    data = {"doc_id": "2024-01-01 12 34", "created_at": "2024-01-01", "note": "call 020 7946 0958"}
    assert redact_value(data) == data
    line = b'{"entity_id":"a","event_time":"2026-01-01 00:00:00","value":5551234567,"host":"10.1.2.3"}'
    assert redact_bytes(line) is line


def test_payload_bytes_lose_only_their_secrets() -> None:
    line = b'{"event_time":"2026-01-01 00:00:00","password":"hunter2","host":"db.internal:5432"}\xff'
    assert (
        redact_bytes(line)
        == b'{"event_time":"2026-01-01 00:00:00","password":"***","host":"db.internal:5432"}\xff'
    )


def test_containers_are_copied_not_mutated() -> None:
    data = {"items": [{"token": "t-123456"}], "pair": ("a@example.com", 1)}
    clean = redact_value(data)
    assert clean == {"items": [{"token": "***"}], "pair": ("a@example.com", 1)}
    assert data["items"] == [{"token": "t-123456"}]
