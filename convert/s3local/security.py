"""Keep a local SeaweedFS store its owner's: only the S3 port, which checks keys, is open to others.

`weed mini` also listens on 127.0.0.1 with a master, a volume server, a filer and an admin server
(HTTP and gRPC each), none of which asks who is calling: any local account could read, overwrite
or delete objects through them, or drop the whole bucket (`/col/delete` on the master). Each start
therefore gets a fresh private CA and one certificate that every component presents and requires
(mutual TLS on all of those HTTP and gRPC ports), named in a `security.toml` in the store's folder,
which weed reads from its working directory. Files the store writes are the owner's alone (umask
077, and existing ones are narrowed at start and at exit).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import stat
from pathlib import Path

SECURITY = "security.toml"  # weed reads it from its working directory (before ~/.seaweedfs, /etc)
TLS_DIR = "tls"
UMASK = 0o077
_GRPC = ("master", "volume", "filer", "s3", "admin", "worker", "client")  # mTLS on every gRPC link
_HTTPS = ("master", "volume", "filer", "admin")  # every HTTP port but S3's


def make_private(root: Path) -> None:
    """Folders 0700 and files 0600 under `root` (a store kept by an older version had 0755/0644);
    symbolic links are left alone (their modes mean nothing, their targets are not the store's)."""
    root.chmod(0o700)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                path.chmod(0o700)
            elif not stat.S_ISLNK(mode):
                path.chmod(stat.S_IMODE(mode) & ~UMASK)


def write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)  # a new file, created 0600 (no window where others may read it)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A fresh CA and one certificate it signed (for 127.0.0.1, server and client use): weed does
    not check host names, so all components share it. Returns the paths of ca, cert and key."""
    from cryptography import x509  # optional extra: cryptography (the s3 extra)
    from cryptography.hazmat.primitives import hashes, serialization  # optional extra: cryptography (the s3 extra)
    from cryptography.hazmat.primitives.asymmetric import ec  # optional extra: cryptography (the s3 extra)
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # optional extra: cryptography (the s3 extra)

    folder.mkdir(mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sen12ms s3-local CA")])

    def build(subject: x509.Name, key, ca: bool) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    ca = build(ca_name, ca_key, True).sign(ca_key, hashes.SHA256())
    node = (build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), node_key, False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "cert": folder / "node.crt", "key": folder / "node.key"}
    write_private(paths["ca"], ca.public_bytes(serialization.Encoding.PEM))
    write_private(paths["cert"], node.public_bytes(serialization.Encoding.PEM))
    write_private(paths["key"], node_key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return paths


def write_security(root: Path) -> Path:
    """`root/security.toml` (0600) naming fresh certificates; nothing stored depends on them, so
    every start makes new ones. The S3 port keeps plain HTTP and its own key check."""
    tls = {k: json.dumps(str(v)) for k, v in make_certificates(root / TLS_DIR).items()}  # TOML strings
    pair = f"cert = {tls['cert']}\nkey = {tls['key']}\n"
    lines = ["[access]\nui = false\n", "[filer.expose_directory_metadata]\nenabled = false\n",
             f"[grpc]\nca = {tls['ca']}\n"]
    lines += [f"[grpc.{component}]\n{pair}" for component in _GRPC]
    lines += [f"[https.{component}]\n{pair}ca = {tls['ca']}\n" for component in _HTTPS]
    lines.append(f"[https.client]\nenabled = true\n{pair}ca = {tls['ca']}\n")
    path = root / SECURITY
    write_private(path, "\n".join(lines).encode())
    return path


def weed_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment without WEED_* variables: they would override security.toml."""
    return {name: value for name, value in environ.items() if not name.startswith("WEED_")}
