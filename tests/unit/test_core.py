"""Models, events, registry, config and the public surface."""

from __future__ import annotations

from pathlib import Path

import pytest

import headwater
from headwater import registry
from headwater.config import load_settings
from headwater.errors import ConfigError
from headwater.events import DocumentSkipped, RunCompleted, decode_event, to_json
from headwater.models import make_chunk_id, make_doc_id, normalize_relpath


def test_public_api_is_exactly_all() -> None:
    import types

    public = {name for name in dir(headwater) if not name.startswith("_")}
    names = {n for n in public if not isinstance(getattr(headwater, n), types.ModuleType)} - {
        "TYPE_CHECKING",
        "Any",
    }
    assert names | {"DocumentPipeline", "SignalPipeline", "build_document_pipeline"} == set(headwater.__all__)
    for name in headwater.__all__:
        assert getattr(headwater, name) is not None


def test_doc_id_is_stable_under_path_spelling() -> None:
    assert make_doc_id("./a\\b.md") == make_doc_id("a/b.md") == make_doc_id("/a/b.md/")
    assert make_doc_id("Cafe\u0301.md") == make_doc_id("Café.md")
    assert normalize_relpath("./x/y") == "x/y"
    assert make_doc_id("a.md") != make_doc_id("b.md")


def test_chunk_id_depends_on_every_part() -> None:
    base = make_chunk_id("d", "h", 0, "k")
    assert (
        len(
            {
                base,
                make_chunk_id("d2", "h", 0, "k"),
                make_chunk_id("d", "h2", 0, "k"),
                make_chunk_id("d", "h", 1, "k"),
                make_chunk_id("d", "h", 0, "k2"),
            }
        )
        == 5
    )


def test_events_round_trip_with_type_and_version() -> None:
    event = RunCompleted(run_id="r1", documents_seen=3, chunks_embedded=7)
    data = to_json(event)
    assert data.startswith(b'{"type":"RunCompleted","version":1')
    assert decode_event(data) == event
    skipped = DocumentSkipped(doc_id="d", uri="a.md", reason="unchanged")
    assert decode_event(to_json(skipped)) == skipped


def test_registry_names_the_scheme_and_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ConfigError, match=r"scheme 'nope' is not one of hash://, http://, https://, minilm://"
    ):
        registry.create("embedder", "nope://x")
    monkeypatch.setitem(registry.ADAPTERS["embedder"], "fake", ("headwater_missing_mod:Thing", "fake-extra"))
    with pytest.raises(ConfigError, match=r"pip install 'headwater\[fake-extra\]'"):
        registry.create("embedder", "fake://")
    assert registry.scheme_of("/abs/path") == "file"
    assert registry.scheme_of("C:/data") == "file"


def test_settings_from_env_and_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "headwater.toml").write_text('embedder = "minilm://"\nchunk_size_chars = 500\n')
    monkeypatch.setenv("HEADWATER_CHUNK_SIZE_CHARS", "700")
    settings = load_settings(home=tmp_path / "h")
    assert settings.embedder == "minilm://"  # from the file
    assert settings.chunk_size_chars == 700  # the environment wins over the file
    assert settings.metadata_store_url == f"sqlite:///{tmp_path}/h/state.db"


def test_invalid_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_CHUNK_SIZE_CHARS", "ten")
    with pytest.raises(ConfigError, match="chunk_size_chars"):
        load_settings()


def test_duration_labels_round_trip() -> None:
    from headwater.featuresets import duration_label, parse_duration_ms

    for label in ("250ms", "1s", "5s", "1m", "90s", "2h", "1d"):
        assert duration_label(parse_duration_ms(label)) == label
    assert duration_label(60_000) == "1m"
