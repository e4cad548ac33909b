import numpy as np

from headwater.adapters.hashembed import HashEmbedder, embed_hash


def test_vectors_are_unit_length_and_independent_of_the_batch() -> None:
    alone = embed_hash(["b"], 384)
    batch = embed_hash(["a", "b", "c"], 384)
    np.testing.assert_array_equal(alone[0], batch[1])
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-6)
    assert batch.dtype == np.float32 and batch.shape == (3, 384)
    assert not np.allclose(batch[0], batch[2])


async def test_embedder_counts_calls_and_texts() -> None:
    embedder = HashEmbedder("hash://?dim=32")
    assert embedder.dimensions == 32 and embedder.id == "hash:shake256:32"
    out = await embedder.embed(["x", "y"])
    assert out.shape == (2, 32) and (embedder.calls, embedder.texts) == (1, 2)
