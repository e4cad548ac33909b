from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.stages.chunk import chunk_text, chunker_key

KEY = chunker_key(200, 20, False)


def test_offsets_point_into_the_text() -> None:
    text = ("Sentence number one. " * 40 + "\n\n") * 5
    chunks = chunk_text("d1", text, size=200, overlap=20, config_key=KEY)
    assert len(chunks) > 5
    for c in chunks:
        assert text[c.offset : c.offset + c.length] == c.text
        assert c.length <= 200


def test_repeated_boilerplate_gets_distinct_ids() -> None:
    text = "same paragraph"
    chunks = chunk_text("d1", "\n\n".join([text * 20] * 3), size=300, overlap=0, config_key=KEY)
    hashes = [c.chunk_hash for c in chunks]
    assert len(set(hashes)) < len(hashes)
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_inserting_text_keeps_other_chunk_ids() -> None:
    paragraphs = [f"Paragraph {i}. " + "words " * 30 for i in range(12)]
    before = chunk_text("d", "\n\n".join(paragraphs), size=250, overlap=0, config_key=KEY)
    after = chunk_text(
        "d",
        "\n\n".join([*paragraphs[:6], "A new paragraph.", *paragraphs[6:]]),
        size=250,
        overlap=0,
        config_key=KEY,
    )
    kept = {c.chunk_id for c in before} & {c.chunk_id for c in after}
    assert len(kept) >= len(before) - 2


def test_empty_text_has_no_chunks() -> None:
    assert chunk_text("d", "  \n ", size=100, overlap=0, config_key=KEY) == []


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=3000))
def test_offsets_are_exact_for_any_text(text: str) -> None:
    for c in chunk_text("d", text, size=120, overlap=10, config_key=KEY):
        assert text[c.offset : c.offset + c.length] == c.text
