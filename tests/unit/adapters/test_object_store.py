"""The object-store source's pure parts: URLs, version stamps, and which errors are whose fault."""

from __future__ import annotations

import pytest

from headwater.adapters.object_store import ObjectEntry, ObjectStoreSource, _refusal, version_stamp
from headwater.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "uri", "prefix"),
    [
        ("s3://bucket/team/docs/", "s3://bucket/team/docs", "team/docs"),
        ("gs://bucket", "gs://bucket", ""),
        ("az://container/a", "az://container/a", "a"),
    ],
)
def test_the_url_names_the_bucket_and_the_prefix(url: str, uri: str, prefix: str) -> None:
    source = ObjectStoreSource(url)
    assert (source.uri, source.prefix) == (uri, prefix)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3://AKIAEXAMPLE:secret@bucket/docs", "credentials do not belong in the URL"),
        ("s3:///docs", "names no bucket"),
        ("az:///docs", "names no container"),
    ],
)
def test_a_bad_url_is_a_config_error_that_never_repeats_a_secret(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        ObjectStoreSource(url)
    assert "AKIAEXAMPLE" not in str(caught.value) and ":secret@" not in str(caught.value)


def test_a_version_stamp_is_stable_and_fits_the_metadata_column() -> None:
    stamps = {version_stamp(tag) for tag in ("0x8DC1", "0x8DC2", "1712345678901234", "")}
    assert len(stamps) == 4
    assert all(0 <= s < 2**63 for s in stamps)
    assert version_stamp("abc") == version_stamp("abc")


def test_entries_are_keyed_by_the_normalized_relpath_and_keep_the_stores_key() -> None:
    source = ObjectStoreSource("s3://bucket/docs", include=["**/*.md"], exclude=["drafts/**"])
    decomposed = "docs/cafe\u0301.md"  # not NFC: the key as the store spells it
    entry = source._entry(decomposed, 4, '"etag"')
    assert isinstance(entry, ObjectEntry)
    assert entry.relpath == "café.md" and entry.key == decomposed
    assert source._path(entry) == f"bucket/{decomposed}"
    assert source._entry("docs/plain.md", 4, "e").key is None  # type: ignore[union-attr]
    assert source._entry("docs/drafts/x.md", 1, "e") is None
    assert source._entry("docs/folder/", 0, "e") is None
    assert source._entry("docs/x.txt", 1, "e") is None


class _ClientError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = {"ResponseMetadata": {"HTTPStatusCode": status}}


def _wrapped(cause: BaseException) -> OSError:
    try:
        raise OSError(5, "An error occurred") from cause
    except OSError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (FileNotFoundError("k"), "gone since the listing"),
        (PermissionError("k"), "access denied"),
        (_wrapped(_ClientError(403)), "access denied"),
        (_wrapped(_ClientError(404)), "gone since the listing"),
        (_wrapped(_ClientError(503)), None),
        (ConnectionResetError(), None),
        (TimeoutError(), None),
    ],
)
def test_only_a_refused_or_vanished_object_is_the_documents_fault(
    error: BaseException, verdict: str | None
) -> None:
    assert _refusal(error) == verdict
