"""Index a folder with the Python API, watching typed events, then query it.

Run: python examples/index_and_query.py [FOLDER] [HOME]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from headwater import build_document_pipeline, load_settings
from headwater.events import DocumentCompleted, DocumentFailed, RunCompleted
from headwater.ops.search import query


async def main(folder: str, home: str) -> None:
    settings = load_settings(home=home)
    async for event in build_document_pipeline(settings, folder).stream_events():
        if isinstance(event, DocumentCompleted):
            print(f"indexed {event.uri}: {event.chunks} chunks ({event.chunks_embedded} embedded)")
        elif isinstance(event, DocumentFailed):
            print(f"failed {event.uri}: {event.message}")
        elif isinstance(event, RunCompleted):
            print(f"done: {event.documents_added} added, {event.documents_unchanged} unchanged")
    for hit in await query(settings, "how do retries work?", k=2):
        print(f"{hit['score']:.3f} {hit['uri']}@{hit['offset']}")


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else "samples/docs"
    home = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="headwater-example-")
    asyncio.run(main(folder, home))
