import pytest

from headwater.stages.redact import is_secret_key, redact_text, redact_url, redact_value


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


def test_identifiers_are_not_taken_for_pii() -> None:
    data = {"doc_id": "2024-01-01 12 34", "created_at": "2024-01-01", "note": "call 020 7946 0958"}
    assert redact_value(data) == {
        "doc_id": "2024-01-01 12 34",
        "created_at": "2024-01-01",
        "note": "call [PHONE]",
    }


def test_containers_are_copied_not_mutated() -> None:
    data = {"items": [{"token": "t-123456"}], "pair": ("a@example.com", 1)}
    clean = redact_value(data)
    assert clean == {"items": [{"token": "***"}], "pair": ("[EMAIL]", 1)}
    assert data["items"] == [{"token": "t-123456"}]
