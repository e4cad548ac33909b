"""The web source's pure half: listings parsed, URLs named (relpath rules of http_listing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.adapters.http import HttpSource
from headwater.adapters.http_listing import listing_base, page_name, parse_listing
from headwater.errors import AdapterError, ConfigError

BASE = listing_base("https://user:pw@Example.com:443/docs/sitemap.xml?token=abc")


def test_the_base_is_the_listings_folder_without_credentials() -> None:
    assert BASE == "https://example.com/docs/"


@pytest.mark.parametrize(
    ("url", "relpath"),
    [
        ("https://example.com/docs/a/b.md", "a/b.md"),
        ("https://EXAMPLE.com:443/docs/a/", "a/index.html"),
        ("https://example.com/docs/", "index.html"),
        ("https://example.com/docs/about", "about.html"),
        ("https://example.com/docs/zeta%20%C3%BC.md", "zeta ü.md"),
        ("https://example.com/docs/a%2Fb.txt", "a%2Fb.txt"),
        ("https://example.com/docs/page?id=3&v=1.2", "page?id=3&v=1%2E2.html"),
        ("https://example.com/docs/p.html?token=s3cret&x=1", "p?token=***&x=1.html"),
        ("https://bob:pw@example.com/docs/c.md", "c.md"),
    ],
)
def test_pages_under_the_folder_are_named_relative_to_it(url: str, relpath: str) -> None:
    assert page_name(url, BASE) == (relpath, None)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/other/a.md",
        "https://evil.example/docs/a.md",
        "http://example.com/docs/a.md",
        "ftp://example.com/docs/a.md",
        "https://example.com/docs/../secret.md",
    ],
)
def test_pages_elsewhere_are_listed_with_a_problem_and_no_secret(url: str) -> None:
    relpath, problem = page_name(url.replace("://", "://u:pw@"), BASE)
    assert problem and "pw" not in relpath


def test_a_local_list_names_pages_by_host_and_path() -> None:
    assert page_name("https://h.example:8080/a/b.md", None) == ("h.example:8080/a/b.md", None)
    assert page_name("http://h.example:80/", None) == ("h.example/index.html", None)


def test_sitemaps_lists_and_what_is_refused() -> None:
    urlset = b"""<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
      <url><loc> https://e.com/a.md </loc><lastmod>2024-01-01</lastmod></url>
      <url><loc>/b.md</loc></url></urlset>"""
    assert parse_listing(urlset, "https://e.com/sitemap.xml").pages == [
        "https://e.com/a.md",
        "https://e.com/b.md",
    ]
    index = b"<sitemapindex><sitemap><loc>https://e.com/s1.xml</loc></sitemap></sitemapindex>"
    assert parse_listing(index, "https://e.com/i.xml").sitemaps == ["https://e.com/s1.xml"]
    text = b"# comment\n\nhttps://e.com/a.md\n  http://e.com/b.md  \n"
    assert parse_listing(text, "x").pages == ["https://e.com/a.md", "http://e.com/b.md"]
    for bad in (
        b"<html><body>not a sitemap</body></html>",
        b'<!DOCTYPE x [<!ENTITY a "aaaa">]><urlset><url><loc>&a;</loc></url></urlset>',
        b"<urlset><url>",
        b"https://e.com/a.md\nnot a url\n",
        b"\xff\xfe",
    ):
        with pytest.raises(AdapterError):
            parse_listing(bad, "https://e.com/l")


def test_the_source_uri_and_validators_file_carry_no_credentials(tmp_path: Path) -> None:
    src = HttpSource("https://bob:hunter2@e.com/sitemap.xml?token=s3cret", home=tmp_path)
    assert "hunter2" not in src.uri and "s3cret" not in src.uri and "e.com/sitemap.xml" in src.uri
    assert src.validators_path is not None and "s3cret" not in str(src.validators_path)
    with pytest.raises(ConfigError):
        HttpSource("urls+file://")
