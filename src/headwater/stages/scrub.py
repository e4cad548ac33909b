"""PII scrub: e-mail addresses, phone numbers, payment cards (Luhn-checked), IBANs (mod-97
checked) and IP addresses become typed placeholders; the counts are reported per kind.

Checksums keep false positives down: a 16-digit order number is not a card unless Luhn agrees.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

from headwater.stages.spans import SourceMap, rewrite

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){2,4}(?![\w:])"
)  # not followed by ":": the "2026-01-01 00" of "2026-01-01 00:00:00" is a time, not a phone
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2})?|\d{2}\.\d{2}\.\d{4}")  # not phones: dates, times


def _phone_ok(match: str) -> bool:
    return 7 <= sum(ch.isdigit() for ch in match) <= 15 and not _DATE.fullmatch(match)  # E.164: <= 15 digits


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _card_ok(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ip_ok(match: str) -> bool:
    try:
        ipaddress.ip_address(match)
    except ValueError:
        return False
    return True


# Order matters: cards and IBANs before phones, which would otherwise claim their digits.
_RULES: list[tuple[str, re.Pattern[str], Callable[[str], bool]]] = [
    ("EMAIL", _EMAIL, lambda _: True),
    ("IBAN", _IBAN, iban_ok),
    ("CARD", _CARD, _card_ok),
    ("IP", _IPV4, _ip_ok),
    ("IP", _IPV6, _ip_ok),
    ("PHONE", _PHONE, _phone_ok),
]


def scrub_pii(text: str, steps: SourceMap | None = None) -> tuple[str, Counter[str]]:
    """With ``steps``, each rule's rewrite records its map (stages.spans)."""
    counts: Counter[str] = Counter()
    for label, pattern, check in _RULES:
        edits = []
        for match in pattern.finditer(text):
            if check(match.group(0)):
                counts[label] += 1
                edits.append((match.start(), match.end(), f"[{label}]"))
        if edits:
            text, positions = rewrite(text, edits)
            if steps is not None:
                steps.add(positions)
    return text, counts
