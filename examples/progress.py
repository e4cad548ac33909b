"""Index a folder with progress lines and a closing summary: the Python API's one primitive,
``stream_events()``, and the typed events it yields (README, "Python API").

Run: python examples/progress.py [FOLDER] [HOME]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from headwater import build_document_pipeline, load_settings
from headwater.events import BatchProgress, DocumentFailed, RunCompleted


async def main(folder: str, home: str) -> None:
    pipeline = build_document_pipeline(load_settings(home=home), folder)
    async for event in pipeline.stream_events():
        if isinstance(event, BatchProgress):
            print(f"{event.completed} indexed, {event.skipped} skipped, {event.failed} failed")
        elif isinstance(event, DocumentFailed):
            print(f"failed {event.uri} ({event.stage}): {event.message} -> dlq {event.dlq_id}")
        elif isinstance(event, RunCompleted):
            print(
                f"done in {event.elapsed_seconds:.2f} s: {event.documents_added} added, "
                f"{event.documents_unchanged} unchanged, {event.chunks_embedded} chunks embedded"
            )


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else "samples/docs"
    home = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="headwater-example-")
    asyncio.run(main(folder, home))
