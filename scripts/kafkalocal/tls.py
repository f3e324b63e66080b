"""A throwaway CA and one broker certificate for 127.0.0.1 and localhost, made with ``openssl``.

``DATA_DIR/tls`` holds ``ca.pem``, ``ca.key`` and ``ca.srl`` (the CA clients verify the brokers
against), ``broker.key``, ``broker.csr``, ``broker.pem`` and ``broker.ext`` (the broker's
certificate and how it was made), and ``broker-keystore.pem``: the broker's unencrypted PKCS#8
key then its chain up to the CA, Kafka's PEM key store. There is no client authentication. The
files are made once per data dir and reused; nothing here is a real secret.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import KafkaLocalError

KEYSTORE = "broker-keystore.pem"  # the broker's private key, then its certificate chain
TLS_DAYS = 3650  # a dev broker's data dir may live for years; nothing here is a real secret
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]  # fast to make
BROKER_EXTENSIONS = """subjectAltName = IP:127.0.0.1, DNS:localhost
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def tls_dir(data_dir: Path) -> Path:
    return data_dir / "tls"


def _openssl(directory: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise KafkaLocalError("openssl not found: install it (apt-get install openssl)")
    cmd = [openssl, *args]
    done = subprocess.run(cmd, cwd=directory, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise KafkaLocalError(f"openssl {args[0]} failed in {directory}: {lines[-1]}", done.stderr)


def new_ca(directory: str | Path, name: str = "onceflow-test-ca") -> Path:
    """Make a self-signed CA (``ca.pem`` and ``ca.key``) in ``directory``; return ``ca.pem``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        directory,
        *["req", "-x509", *EC_KEY, "-keyout", "ca.key", "-out", "ca.pem"],
        *["-days", str(TLS_DAYS), "-subj", f"/CN={name}"],
        *["-addext", "basicConstraints=critical,CA:TRUE"],
        *["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    )
    return directory / "ca.pem"


def make_tls_files(data_dir: Path) -> None:
    """A CA and a broker key store signed by it in ``data_dir/tls``; made once, then reused."""
    directory = tls_dir(data_dir)
    if (directory / KEYSTORE).exists():
        return
    new_ca(directory)
    (directory / "broker.ext").write_text(BROKER_EXTENSIONS)
    _openssl(
        directory,
        *["req", *EC_KEY, "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost"],
    )
    _openssl(
        directory,
        *["x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key"],
        *["-CAcreateserial", "-days", str(TLS_DAYS), "-extfile", "broker.ext"],
        *["-out", "broker.pem"],
    )
    # Kafka's PEM key store: an unencrypted PKCS#8 key, then the chain up to the CA.
    parts = [directory / name for name in ("broker.key", "broker.pem", "ca.pem")]
    staging = directory / f"{KEYSTORE}.partial"
    staging.write_text("".join(part.read_text() for part in parts))
    staging.rename(directory / KEYSTORE)
