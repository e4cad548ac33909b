"""Documents from a bucket through the CLI, against real S3, GCS and Azure Blob servers: the same
index as from a folder; a no-change re-run that only lists; changes, deletions and globs applied;
one refused object dead-lettered alone; throttling and resets retried; a listing that fails stops
the run with nothing deleted. The S3 cases go through a fault-injecting proxy (tests/servers)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.servers.fault_proxy import FaultProxy


def upload(fs: Any, folder: Path, target: str) -> None:
    fs.pipe(
        {
            f"{target}/{p.relative_to(folder).as_posix()}": p.read_bytes()
            for p in folder.rglob("*")
            if p.is_file()
        }
    )


@pytest.fixture
def proxy(s3_server: Any) -> Iterator[FaultProxy]:
    running = FaultProxy(s3_server.endpoint)
    yield running
    running.close()


@pytest.fixture
def bucket(s3_server: Any) -> str:
    return s3_server.create_bucket(f"b{uuid.uuid4().hex[:12]}")


def s3fs_of(endpoint: str) -> Any:
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, use_listings_cache=False, skip_instance_cache=True)


def events(cli: Cli, *args: str, **kwargs: Any) -> dict[str, Any]:
    return cli.last_event("ingest", "docs", *args, **kwargs)


@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_a_bucket_gives_the_folders_index(
    cli: Cli, corpus: Path, tmp_path: Path, scheme: str, request: pytest.FixtureRequest
) -> None:
    """Same tree, same doc_ids and chunks: the fingerprint of the folder's index."""
    if scheme == "s3":
        server = request.getfixturevalue("s3_server")
        fs, container = s3fs_of(server.endpoint), server.create_bucket(f"b{uuid.uuid4().hex[:12]}")
    else:
        server = request.getfixturevalue("gcs_server" if scheme == "gs" else "azure_server")
        fs = server.filesystem()
        container = f"b{uuid.uuid4().hex[:12]}"
        fs.mkdir(container)
    upload(fs, corpus, f"{container}/team/docs")
    cli.env.update(server.env())  # the SDK's variables, as a user's shell has them
    cli("ingest", "docs", str(corpus), "--home", str(tmp_path / "folder"))
    done = events(cli, f"{scheme}://{container}/team/docs", "--home", str(tmp_path / "bucket"))
    assert (done["documents_added"], done["documents_failed"]) == (6, 0)
    assert cli.status(tmp_path / "bucket")["fingerprint"] == cli.status(tmp_path / "folder")["fingerprint"]
    again = events(cli, f"{scheme}://{container}/team/docs", "--home", str(tmp_path / "bucket"))
    assert (again["documents_added"], again["documents_unchanged"]) == (0, 6)


def test_a_no_change_rerun_only_lists_and_changes_are_applied(
    cli: Cli, corpus: Path, tmp_path: Path, proxy: FaultProxy, bucket: str
) -> None:
    fs = s3fs_of(proxy.url)
    upload(fs, corpus, f"{bucket}/docs")
    fs.pipe_file(f"{bucket}/docs/drafts/wip.md", b"# Work in progress\n\nNot for the index.\n")
    home, url, env = tmp_path / "home", f"s3://{bucket}/docs", {"AWS_ENDPOINT_URL": proxy.url}
    first = events(cli, url, "--home", str(home), "--exclude", "drafts/**", env=env)
    assert first["documents_added"] == 6
    proxy.clear()
    again = events(cli, url, "--home", str(home), "--exclude", "drafts/**", env=env)
    assert (again["documents_added"], again["documents_unchanged"]) == (0, 6)
    listings = [r for r in proxy.requests if "list-type=2" in r]
    assert listings and listings == proxy.requests, proxy.requests  # nothing read, nothing else asked

    fs.rm_file(f"{bucket}/docs/guides/retries.md")
    edited = f"{bucket}/docs/guides/signals.md"
    fs.pipe_file(edited, fs.cat_file(edited) + b"\n\nA paragraph added in the bucket.\n")
    fs.pipe_file(f"{bucket}/docs/new.md", b"# New\n\nAn object added after the first run.\n")
    third = events(cli, url, "--home", str(home), "--exclude", "drafts/**", env=env)
    counts = [third[f"documents_{k}"] for k in ("added", "updated", "deleted", "unchanged")]
    assert counts == [1, 1, 1, 4]
    cli("ingest", "docs", str(corpus), "--home", str(tmp_path / "folder"))
    assert cli.status(home)["documents"] == 6
    cli("verify", "--home", str(home))


def test_a_refused_object_is_dead_lettered_alone_and_transient_errors_are_retried(
    cli: Cli, corpus: Path, tmp_path: Path, proxy: FaultProxy, bucket: str
) -> None:
    fs = s3fs_of(proxy.url)
    upload(fs, corpus, f"{bucket}/docs")
    proxy.fail(r"^GET /[^?]*/guides/retries\.md", 403)
    proxy.fail(r"^GET /[^?]*/guides/signals\.md", 503, times=2)
    proxy.fail(r"^GET /[^?]*/reference/", "reset", times=2)
    proxy.fail(r"list-type=2", 503, times=1)
    home, env = tmp_path / "home", {"AWS_ENDPOINT_URL": proxy.url}
    done = cli("ingest", "docs", f"s3://{bucket}/docs", "--home", str(home), env=env)
    assert "1 document(s) failed" in done.stderr and "Traceback" not in done.stderr
    status = cli.status(home)
    assert (status["documents_done"], status["dlq"]) == (5, 1)
    (letters,) = cli.json_lines("dlq", "list", "--home", str(home), "--json")
    assert [(d["input_ref"], d["stage"]) for d in letters] == [("guides/retries.md", "read")]
    assert "access denied" in letters[0]["message"]
    assert letters[0]["source"] == f"s3://{bucket}/docs"
    assert any("signals.md" in r for r in proxy.requests if r.startswith("GET"))


def test_a_listing_that_fails_stops_the_run_and_deletes_nothing(
    cli: Cli, corpus: Path, tmp_path: Path, proxy: FaultProxy, bucket: str
) -> None:
    fs = s3fs_of(proxy.url)
    upload(fs, corpus, f"{bucket}/docs")
    home = tmp_path / "home"
    quick = json.dumps({"config_kwargs": {"retries": {"max_attempts": 1}}})
    env = {"AWS_ENDPOINT_URL": proxy.url, "HEADWATER_STORAGE_OPTIONS": quick}
    cli("ingest", "docs", f"s3://{bucket}/docs", "--home", str(home), env=env)
    before = cli.status(home)
    proxy.fail(r"list-type=2", 500)
    failed = cli("ingest", "docs", f"s3://{bucket}/docs", "--home", str(home), env=env, check=False)
    assert failed.returncode == 5, failed.stderr
    assert f"cannot list s3://{bucket}/docs" in failed.stderr and "nothing was changed" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert cli.status(home)["fingerprint"] == before["fingerprint"]

    missing = cli(
        "ingest", "docs", "s3://no-such-bucket-here/docs", "--home", str(tmp_path / "h2"), check=False
    )
    assert missing.returncode == 3, missing.stderr
    assert "bucket 'no-such-bucket-here' does not exist" in missing.stderr
    with_keys = cli(
        "ingest", "docs", "s3://AKIAXX:sekrit@bucket/docs", "--home", str(tmp_path / "h3"), check=False
    )
    assert with_keys.returncode == 3 and "credentials do not belong in the URL" in with_keys.stderr
    assert "sekrit" not in with_keys.stderr + with_keys.stdout


def test_watch_announces_each_change_of_a_bucket_once(
    cli: Cli, corpus: Path, tmp_path: Path, s3_server: Any, bucket: str, redis_server: Any
) -> None:
    fs = s3fs_of(s3_server.endpoint)
    upload(fs, corpus, f"{bucket}/docs")
    url, topic = f"s3://{bucket}/docs", f"t{uuid.uuid4().hex[:10]}"
    bus = ["--bus", redis_server.url, "--topic", topic]
    stream = tmp_path / "stream"

    def poll() -> dict[str, Any]:
        polled = cli.json_lines("watch", url, *bus, "--home", str(stream), "--once", "--json")
        cli("worker", "docs", *bus, "--home", str(stream), "--exit-when-idle", "2",
            env={"HEADWATER_ACK_WAIT_SECONDS": "2"})  # fmt: skip
        return polled[-1]

    assert poll()["added"] == 6
    assert poll()["added"] == poll()["updated"] == 0
    fs.rm_file(f"{bucket}/docs/guides/retries.md")
    changed = poll()
    assert (changed["added"], changed["updated"], changed["deleted"]) == (0, 0, 1)
    cli("ingest", "docs", url, "--home", str(tmp_path / "batch"))
    assert cli.status(stream)["fingerprint"] == cli.status(tmp_path / "batch")["fingerprint"]


def test_an_api_job_indexes_a_bucket(corpus: Path, tmp_path: Path, s3_server: Any, bucket: str) -> None:
    """Jobs take the URL as ``ingest docs`` does (no source roots apply: nothing local is read)."""
    from fastapi.testclient import TestClient

    from headwater.server.app import create_app
    from tests.e2e.test_api import AUTH, make_settings, wait_for

    upload(s3fs_of(s3_server.endpoint), corpus, f"{bucket}/docs")
    with TestClient(create_app(make_settings(tmp_path / "home"))) as client:
        spec = {"kind": "docs", "source": f"s3://{bucket}/docs"}
        created = client.post("/v1/jobs", json=spec, headers=AUTH)
        assert created.status_code in (200, 201, 202), created.text
        job = wait_for(client, created.json()["id"], lambda j: j["status"] in ("succeeded", "failed"))
        assert (job["status"], job["progress"]["completed"]) == ("succeeded", 6)
        refused = client.post("/v1/jobs", json={"source": "s3://AKIA:x@bucket/docs"}, headers=AUTH)
        assert refused.status_code == 422 and "AKIA" not in refused.text
