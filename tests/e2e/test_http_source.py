"""``headwater ingest docs http://…/sitemap.xml`` through the real command, against a real web
server on 127.0.0.1 (tests/servers/web_site.py) whose request log shows what was asked."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.servers.web_site import WebSite

PAGES = {
    "guide.md": "# Guide\n\nHow retries work: with backoff.\n",
    "notes/plain.txt": "Plain notes about the index.\n",
    "pages/intro.html": (
        "<!doctype html><html><head><title>Intro</title><script>var x = 1;</script></head>"
        "<body><nav>Home | Docs</nav><h1>Intro &amp; overview</h1>"
        "<p>Headwater ingests pages.</p></body></html>"
    ),
    "pages/faq.htm": "<html><body><h2>FAQ</h2><p>Why? Because.</p></body></html>",
}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[WebSite]:
    root = tmp_path / "site"
    for relpath, text in PAGES.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_text(text)
    served = WebSite(root).start()
    yield served
    served.stop()


def ingest(cli: Cli, url: str, home: Path, *extra: str) -> dict[str, object]:
    return cli.last_event("ingest", "docs", url, "--home", str(home), *extra)


def test_a_sitemap_is_ingested_incrementally_with_conditional_requests(
    cli: Cli, site: WebSite, tmp_path: Path
) -> None:
    home, sitemap = tmp_path / "home", site.url + "/sitemap.xml"
    first = ingest(cli, sitemap, home)
    assert first["documents_added"] == len(PAGES) and first["documents_failed"] == 0
    rows = [json.loads(line) for line in cli("export", "--home", str(home)).stdout.splitlines()]
    assert {r["uri"] for r in rows} == set(PAGES)
    intro = " ".join(r["text"] for r in rows if r["uri"] == "pages/intro.html")
    assert "# Intro & overview" in intro and "Headwater ingests pages." in intro
    assert "var x" not in intro and "Home | Docs" not in intro
    # the same files in a folder: the same index
    folder = tmp_path / "folder"
    ingest(cli, str(site.state.root), folder)
    assert cli.status(home)["fingerprint"] == cli.status(folder)["fingerprint"]

    site.requests()
    second = ingest(cli, sitemap, home)
    assert second["documents_unchanged"] == len(PAGES) and second["chunks_embedded"] == 0
    asked = site.requests()
    pages = [r for r in asked if r.path != "/sitemap.xml"]
    assert [(r.method, r.conditional, r.status) for r in pages] == [("HEAD", True, 304)] * len(PAGES)
    listings = [(r.method, r.status) for r in asked if r.path == "/sitemap.xml"]
    assert listings == [("GET", 200)] * 2  # the scan's and the progress count's

    (site.state.root / "guide.md").write_text("# Guide\n\nHow retries work: with backoff and jitter.\n")
    site.state.hidden.add("notes/plain.txt")  # served still, but no longer listed
    third = ingest(cli, sitemap, home)
    assert (third["documents_updated"], third["documents_deleted"], third["documents_unchanged"]) == (1, 1, 2)
    gets = [r.path for r in site.requests() if r.method == "GET" and r.path != "/sitemap.xml"]
    assert gets == ["/guide.md"]


def test_a_denied_page_is_dead_lettered_and_a_failing_listing_changes_nothing(
    cli: Cli, site: WebSite, tmp_path: Path
) -> None:
    home, sitemap = tmp_path / "home", site.url + "/sitemap.xml"
    site.deny("/pages/faq.htm", 403)
    site.fail("/guide.md", [503, "reset"])  # transient twice, then served
    first = ingest(cli, sitemap, home)
    assert first["documents_added"] == len(PAGES) - 1 and first["documents_failed"] == 1
    letters = json.loads(cli("dlq", "list", "--home", str(home), "--json").stdout)
    assert [(x["input_ref"], x["error_type"]) for x in letters] == [("pages/faq.htm", "InputError")]
    assert "HTTP 403 (forbidden)" in letters[0]["message"]
    rows = [json.loads(line) for line in cli("export", "--home", str(home)).stdout.splitlines()]
    assert "guide.md" in {r["uri"] for r in rows}
    before = cli.status(home)

    site.fail("/sitemap.xml", [500] * 10)
    stopped = cli("ingest", "docs", sitemap, "--home", str(home), check=False)
    assert stopped.returncode == 5  # unavailable, as an object store's failing listing
    assert "Traceback" not in stopped.stderr + stopped.stdout
    lines = [line for line in stopped.stderr.splitlines() if "cannot list" in line]
    assert len(lines) == 1 and "HTTP 500" in lines[0] and "nothing was changed" in lines[0], stopped.stderr
    after = cli.status(home)
    assert (after["documents"], after["fingerprint"]) == (before["documents"], before["fingerprint"])

    site.state.faults.clear()
    again = ingest(cli, sitemap, home)  # the denied page is not dead-lettered again while unchanged
    assert again["documents_failed"] == 0 and again["documents_skipped"] == 1


def test_url_lists_over_http_and_on_disk(cli: Cli, site: WebSite, tmp_path: Path) -> None:
    listed = ingest(cli, site.url + "/urls.txt", tmp_path / "a")
    assert listed["documents_added"] == len(PAGES)
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# two pages\n{site.url}/guide.md\n\n{site.url}/pages/intro.html\n")
    local = ingest(cli, f"urls+file://{urls}", tmp_path / "b")
    assert local["documents_added"] == 2
    rows = [json.loads(line) for line in cli("export", "--home", str(tmp_path / "b")).stdout.splitlines()]
    host = site.url.removeprefix("http://")
    assert {r["uri"] for r in rows} == {f"{host}/guide.md", f"{host}/pages/intro.html"}
    shutil.rmtree(site.state.root)
    gone = cli("ingest", "docs", site.url + "/urls.txt", "--home", str(tmp_path / "a"), check=False)
    assert gone.returncode == 3 and "HTTP 404" in gone.stderr
