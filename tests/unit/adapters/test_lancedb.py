"""lancedb's lighter import: what it puts off is put back, and the store works as before."""

import subprocess
import sys
import textwrap
from pathlib import Path


def test_the_lighter_import_restores_what_it_borrowed_and_the_table_works(tmp_path: Path) -> None:
    # A fresh interpreter: in this one lancedb may already be loaded by another test.
    script = textwrap.dedent(
        f"""
        import importlib, sys, time
        from pydantic import BaseModel
        overrides = importlib.import_module("overrides") if sys.version_info < (3, 12) else None
        checked = overrides and overrides.override
        from headwater.adapters.lancedb import _import_lancedb
        start = time.perf_counter()
        lancedb = _import_lancedb()
        took = time.perf_counter() - start
        assert "defer_build" not in BaseModel.model_config, BaseModel.model_config
        assert (overrides and overrides.override) is checked
        assert _import_lancedb() is lancedb

        class Later(BaseModel):  # models made after the import build as usual
            x: int

        assert Later.__pydantic_complete__
        import numpy as np
        db = lancedb.connect({str(tmp_path)!r})
        table = db.create_table("t", data=[{{"id": "a", "vector": np.ones(4, dtype=np.float32)}}])
        table.add([{{"id": "b", "vector": np.zeros(4, dtype=np.float32)}}])
        assert table.search(np.ones(4, dtype=np.float32)).limit(1).to_list()[0]["id"] == "a"
        print(f"{{took:.2f}}")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
