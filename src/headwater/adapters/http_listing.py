"""The pure half of the ``http``/``https``/``urls+file`` source: what a listing says and what
each listed URL is called (its ``relpath``). No I/O here; ``adapters/http.py`` fetches.

A listing's body decides its form: XML (after a BOM and blanks, ``<``) is a sitemap — a
``<urlset>`` of ``<url><loc>`` entries, or a ``<sitemapindex>`` whose ``<sitemap><loc>``
children are fetched in turn — and anything else is a text list, one URL per line, blank lines
and ``#`` comments ignored. A listing that parses as neither (HTML, an XML root of another name,
a line that is no http(s) URL) is refused whole: a half-understood listing would look like
deletions. Documents with a DOCTYPE or entity declarations are refused too (no entity expansion).

Names (``relpath``, hence ``doc_id``):

- a listing fetched over HTTP roots its pages at its own folder (the sitemap protocol's rule:
  ``https://h/docs/sitemap.xml`` may list ``https://h/docs/...`` only): ``https://h/docs/a/b.md``
  is ``a/b.md``. The same tree served over HTTP and read from a folder gets the same names, hence
  the same index. A listed URL outside that folder, on another host or of another scheme, is
  listed with a ``problem`` (skipped with the reason, never fetched);
- a list read from a local file (``urls+file:///path/urls.txt``) roots its pages at the web:
  ``https://h:8080/a/b.md`` is ``h:8080/a/b.md`` (the port only when not the scheme's default);
- the path is percent-decoded (NFC; an encoded ``/`` stays ``%2F``), the user and password of a
  URL never appear, a path ending in ``/`` gets ``index.html``, and a last segment without a
  ``.`` gets ``.html`` (``/about`` → ``about.html``): the web serves HTML there, and the name's
  suffix is what picks an extractor and what include/exclude globs see;
- a query string is kept, inside the name before the suffix (``page?id=3.html``), with ``.`` and
  ``/`` in it encoded and the values of secret-named parameters (``token``, ``sig``, ...) masked;
- two URLs that come to the same name (``/a/`` and ``/a/index.html``) are one document: the
  first one in the listing is read.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from headwater.errors import AdapterError
from headwater.models import normalize_relpath
from headwater.redaction import MASK, is_secret_key, redact_url

_DEFAULT_PORTS = {"http": 80, "https": 443}
_DANGEROUS_XML = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_SITEMAP_NS = re.compile(r"^\{[^}]*\}")


@dataclass(frozen=True, slots=True)
class Listing:
    """What one fetched listing holds: page URLs, or (a sitemap index) more listings to fetch."""

    pages: list[str]
    sitemaps: list[str]


def parse_listing(body: bytes, where: str) -> Listing:
    """``where`` (the listing's URL, redacted) resolves relative URLs and names it in errors."""
    for bom in (codecs.BOM_UTF8,):
        body = body.removeprefix(bom)
    if body.lstrip()[:1] == b"<":
        return _parse_sitemap(body, where)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{where}: a list of URLs must be UTF-8 (invalid byte at {exc.start})"
        raise AdapterError(msg) from exc
    pages = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if urlsplit(line).scheme.lower() not in _DEFAULT_PORTS:
            # Not quoted: a list on disk named through the API must not echo a file's lines.
            msg = f"{where}: line {number} is not an http(s) URL"
            raise AdapterError(msg)
        pages.append(line)
    return Listing(pages=pages, sitemaps=[])


def _parse_sitemap(body: bytes, where: str) -> Listing:
    if _DANGEROUS_XML.search(body):
        msg = f"{where}: a sitemap with a DOCTYPE or entity declarations is refused"
        raise AdapterError(msg)
    try:
        root = ET.fromstring(body)  # noqa: S314 - no DOCTYPE/ENTITY (checked above): no expansion
    except ET.ParseError as exc:
        msg = f"{where}: not a valid sitemap: {exc}"
        raise AdapterError(msg) from exc
    kind = _SITEMAP_NS.sub("", root.tag)
    child = {"urlset": "url", "sitemapindex": "sitemap"}.get(kind)
    if child is None:
        msg = f"{where}: not a sitemap (root element <{kind}>, expected <urlset> or <sitemapindex>)"
        raise AdapterError(msg)
    locs = [
        urljoin(where, field.text.strip())
        for item in root
        if _SITEMAP_NS.sub("", item.tag) == child
        for field in item
        if _SITEMAP_NS.sub("", field.tag) == "loc" and field.text and field.text.strip()
    ]
    return Listing(pages=locs, sitemaps=[]) if kind == "urlset" else Listing(pages=[], sitemaps=locs)


def listing_base(listing_url: str) -> str:
    """The folder a listing fetched over HTTP roots its pages at: its URL up to the last ``/``,
    without user, password, query or fragment, host lower-cased, default port dropped."""
    parts = urlsplit(listing_url)
    folder = parts.path.rsplit("/", 1)[0] + "/" if "/" in parts.path else "/"
    return f"{parts.scheme.lower()}://{_host(parts.scheme, parts.hostname, parts.port)}{folder}"


def page_name(url: str, base: str | None) -> tuple[str, str | None]:
    """(relpath, problem) of a listed page. Under ``base`` (None: the web), the relpath rules of
    the module docstring; elsewhere the redacted URL itself and why it is not read."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return redact_url(url), "not an http(s) URL"
    try:
        port = parts.port
    except ValueError:
        return redact_url(url), "invalid port"
    host = _host(scheme, parts.hostname, port)
    path = parts.path or "/"
    if any(segment in (".", "..") for segment in path.split("/")):
        return redact_url(url), "a path with '.' or '..' segments"
    if base is None:
        rel = f"{host}{path}"
    else:
        here = f"{scheme}://{host}"
        if not (here + path).startswith(base):
            return redact_url(url), f"outside the listing's folder {base} (the sitemap protocol's rule)"
        rel = (here + path)[len(base) :]
    return _name(rel, parts.query), None


def _host(scheme: str, hostname: str | None, port: int | None) -> str:
    host = (hostname or "").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return host if port is None or port == _DEFAULT_PORTS.get(scheme.lower()) else f"{host}:{port}"


def _name(rel: str, query: str) -> str:
    segments = [_decoded(s) for s in rel.split("/")]
    if segments[-1] in ("", ".", ".."):
        segments.append("index.html")
    name = segments[-1]
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, "html"
    if query:
        stem += "?" + _query(query)
    segments[-1] = f"{stem}.{suffix}"
    return normalize_relpath(unicodedata.normalize("NFC", "/".join(s for s in segments if s)))


def _decoded(segment: str) -> str:
    try:
        text = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return segment  # not UTF-8 once decoded: kept as it was written
    return text.replace("/", "%2F").replace("\\", "%5C")


def _query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if eq and value and is_secret_key(unquote(key)):
            value = MASK
        pairs.append(f"{key}{eq}{value}")
    return "&".join(pairs).replace(".", "%2E").replace("/", "%2F")
