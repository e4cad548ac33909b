"""Spark as a compute engine: a session for ``--compute``, and Arrow in and out of its tasks.

headwater never re-implements a stage in Spark SQL: Spark only moves Arrow batches between
Python tasks (``mapInArrow`` / ``applyInArrow``) that call the same stage functions as a local
run. No connector jar is needed (none can be fetched on many clusters): inputs are read and
outputs written by headwater's own Python readers and writers. Extra ``[spark]``: pyspark, with
a Java 17+ runtime on the machine.

A compute setting names the master: ``spark`` (``local[*]``), ``local[N]``, ``spark://HOST:PORT``
or ``yarn``/``k8s://…``; ``local`` (the default) means no Spark at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from importlib import resources
from typing import TYPE_CHECKING, TypeVar

import polars as pl
import pyarrow as pa

from headwater.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

T = TypeVar("T")
_MASTER = re.compile(r"^(local(\[(\*|\d+)\])?|spark://[\w.\-]+(:\d+)?(,[\w.\-]+(:\d+)?)*|yarn|k8s://\S+)$")


def spark_master(compute: str) -> str | None:
    """The Spark master a compute setting names, or None for the local engine (ConfigError if neither)."""
    value = compute.strip()
    if value in ("", "local"):
        return None
    if value == "spark":
        return "local[*]"
    if _MASTER.match(value):
        return value
    msg = (
        f"compute {compute!r} is not an engine: use local (the default), spark (Spark on this machine), "
        "local[N], spark://HOST:PORT, yarn or k8s://URL"
    )
    raise ConfigError(msg)


def open_session(master: str, app_name: str = "headwater") -> SparkSession:
    """A Spark session on ``master``, quiet (headwater reports progress itself), with Arrow on.

    On this machine's own Spark (``local[…]``) the driver binds to 127.0.0.1 and has no UI:
    nothing listens on a public interface.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        msg = "compute is Spark but pyspark is not installed: pip install 'headwater[spark]'"
        raise ConfigError(msg) from exc
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        msg = (
            "compute is Spark but no Java runtime was found: install Java 17+ "
            "(apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
        )
        raise ConfigError(msg)
    log4j = resources.files("headwater.adapters").joinpath("spark_log4j2.properties")
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")  # fewer, larger hand-offs
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log4j}")
        .config("spark.log.level", "ERROR")
    )
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    return builder.getOrCreate()


def run_spark(action: Callable[[], T]) -> T:
    """Run a Spark action; a failed task becomes the headwater error it raised, in one line (Spark
    wraps it in a Java exception holding the Python traceback)."""
    from headwater.errors import HeadwaterError, StoreUnavailable

    try:
        return action()
    except HeadwaterError:
        raise
    except Exception as exc:
        text = str(exc)
        raised = [line.strip() for line in text.splitlines() if line.strip().startswith("headwater.errors.")]
        if raised:
            kind, _, message = raised[-1].removeprefix("headwater.errors.").partition(": ")
            cls = {"ConfigError": ConfigError, "StoreUnavailable": StoreUnavailable}.get(kind, HeadwaterError)
            msg = f"a Spark task failed: {message}"
            raise cls(msg) from exc
        last = next((line for line in reversed(text.splitlines()) if line.strip()), type(exc).__name__)
        msg = f"Spark failed: {last.strip()[:300]}"
        raise HeadwaterError(msg) from exc


def cancel_all_jobs() -> None:
    """Stop what Spark is running for this process (a stop request, or the run failed): the
    driver's thread waiting on an action then returns at once instead of finishing the job."""
    with contextlib.suppress(Exception):
        from pyspark import SparkContext

        context = SparkContext._active_spark_context
        if context is not None:
            context.cancelAllJobs()


def default_parallelism(session: SparkSession) -> int:
    return max(1, int(session.sparkContext.defaultParallelism))


def ddl(schema: pa.Schema) -> str:
    """A Spark DDL string for an Arrow schema of the types headwater's frames use."""
    names = {
        pa.string(): "string",
        pa.large_string(): "string",
        pa.int64(): "bigint",
        pa.int32(): "int",
        pa.float64(): "double",
        pa.binary(): "binary",
        pa.large_binary(): "binary",
        pa.bool_(): "boolean",
    }
    return ", ".join(f"`{f.name}` {names[f.type]}" for f in schema)


def arrow_schema(schema: dict[str, pl.DataType]) -> pa.Schema:
    """The Arrow schema Spark is told for a Polars schema (strings as plain ``string``)."""
    return pa.schema(
        [pa.field(f.name, _plain(f.type)) for f in pl.DataFrame(schema=schema).to_arrow().schema]
    )


def _plain(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    return kind


def to_batches(frame: pl.DataFrame, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """A Polars frame as Arrow batches of exactly ``schema`` (what Spark was promised)."""
    table = frame.select(schema.names).to_arrow().cast(schema)
    yield from table.to_batches()
