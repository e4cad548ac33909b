from headwater.stages.scrub import iban_ok, luhn_ok, scrub_pii


def test_each_kind_is_replaced_and_counted() -> None:
    text = (
        "Mail jane.doe@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111, "
        "IBAN GB82 WEST 1234 5698 7654 32, host 192.168.10.1 or 2001:db8::1."
    )
    clean, counts = scrub_pii(text)
    assert "jane.doe" not in clean and "4111" not in clean and "GB82" not in clean
    assert "192.168.10.1" not in clean and "2001:db8::1" not in clean and "7946" not in clean
    assert counts == {"EMAIL": 1, "PHONE": 1, "CARD": 1, "IBAN": 1, "IP": 2}


def test_checksums_prevent_false_positives() -> None:
    clean, counts = scrub_pii(
        "order 4111 1111 1111 1112 and version 1.2.3.4000 and GB00 WEST 1234 5698 7654 32"
    )
    assert "4111 1111 1111 1112" in clean
    assert counts.get("CARD", 0) == 0
    assert counts.get("IBAN", 0) == 0


def test_luhn_and_iban() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32")
    assert not iban_ok("GB83 WEST 1234 5698 7654 32")


def test_dates_and_times_are_not_phone_numbers() -> None:
    """Issue #13: content scrubbing turned '2026-01-01 00:00:00' into '[PHONE]:00:00'."""
    text = "logged 2026-01-01 00:00:00, again 2026-01-01T12:30:45Z and 01.02.2026; call 020 7946 0958"
    clean, counts = scrub_pii(text)
    assert clean == "logged 2026-01-01 00:00:00, again 2026-01-01T12:30:45Z and 01.02.2026; call [PHONE]"
    assert counts == {"PHONE": 1}
