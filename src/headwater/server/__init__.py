"""The HTTP API (DESIGN §6): jobs, their live events as Server-Sent Events, the DLQ, queries of
the index, probes, metrics.

Thin by rule (DESIGN §8): routes translate HTTP to ``JobService`` calls and errors to status
codes; the jobs run exactly what ``headwater ingest`` runs, built by the same composition code.

Security model: one bearer token (``HEADWATER_API_TOKEN``) guards every route except the probes
(``/livez``, ``/readyz``) and ``/metrics`` (aggregate counts with bounded labels, for scrapers).
Without a token the server only binds to loopback (``headwater serve`` refuses otherwise).
Everything that leaves the server (SSE data, DLQ entries, job reasons) goes through the same
redaction as the logs.
"""

from headwater.server.app import create_app

__all__ = ["create_app"]
