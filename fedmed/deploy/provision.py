"""`fedmed provision`: a consortium's certificates and keys, one folder per party.

Layout of a consortium folder (private keys mode 0600, folders 0700)::

    ca/ca.key, ca/ca.crt             consortium CA (the key never leaves the coordinator)
    server/superlink.key, .crt       the SuperLink's TLS certificate, host in its SANs
    server/ca.crt, consortium.json, consortium-keys.json
    sites/<site>/supernode-auth.key  the SuperNode's authentication key (ECDSA P-384, OpenSSH form)
    sites/<site>/supernode-auth.pub  its public key, OpenSSH form, registered with the SuperLink
    sites/<site>/site-ed25519.pem    the site's identity: signs its ledger and secure-aggregation adverts
    sites/<site>/site-ed25519.pub, ca.crt, consortium.json, consortium-keys.json
    consortium.json                  the SuperLink's address, every site's public keys and every fingerprint
    consortium-keys.json             the secure-aggregation key manifest (site id -> Ed25519 key)
    .gitignore                       "*": the folder holds private keys and is never committed

Each ``sites/<site>`` folder is what is handed to that hospital, and nothing in it is
another party's secret. Running provision again adds missing sites and keeps every
existing key and certificate; it never replaces one silently. Every key's fingerprint
(:func:`fingerprint`, the form ``fedmed audit`` prints) is announced and kept in
consortium.json, for the parties to compare out of band.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmed.errors import ConfigError
from fedmed.secure.keys import (
    generate_signing_key,
    key_fingerprint,
    load_public_key_file,
    private_pem,
    public_key_path,
    write_private_file,
)
from fedmed.secure.manifest import MANIFEST_FILE, write_manifest

CONSORTIUM_FILE = "consortium.json"
DEFAULT_PORT = 9092
CERT_DAYS = 825
_SITE_NAME = "abcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class Consortium:
    """Where everything lives in a consortium folder (an absolute path, whatever was given).

    The SuperLink runs in a folder of its own: a relative path would name another file there.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def server(self) -> Path:
        return self.root / "server"

    @property
    def server_key(self) -> Path:
        return self.server / "superlink.key"

    @property
    def server_cert(self) -> Path:
        return self.server / "superlink.crt"

    def site(self, name: str) -> Path:
        return self.root / "sites" / name

    def supernode_key(self, site: str) -> Path:
        return self.site(site) / "supernode-auth.key"

    def supernode_public_key(self, site: str) -> Path:
        return self.site(site) / "supernode-auth.pub"

    def signing_key(self, site: str) -> Path:
        return self.site(site) / "site-ed25519.pem"

    @property
    def description(self) -> Path:
        return self.root / CONSORTIUM_FILE

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    def read(self) -> dict:
        """consortium.json: ``superlink`` {host, port} and ``sites`` {name: keys}.

        Raises:
            ConfigError: the folder was not made by `fedmed provision`.
        """
        try:
            return json.loads(self.description.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{self.root}: not a consortium folder (no {CONSORTIUM_FILE}); create one with `fedmed provision`"
            ) from None
        except ValueError as error:
            raise ConfigError(f"{self.description}: not valid JSON ({error})") from None

    def sites(self) -> list[str]:
        return sorted(self.read()["sites"])

    def address(self) -> str:
        link = self.read()["superlink"]
        return f"{link['host']}:{link['port']}"


def check_site_name(name: str) -> str:
    if not name or set(name.lower()) - set(_SITE_NAME) or name != name.lower():
        raise ConfigError(f"site name {name!r}: use lower-case letters, digits, '-' and '_' only")
    return name


def provision(
    root: Path, *, sites: Sequence[str], server_host: str, port: int = DEFAULT_PORT,
    announce: Callable[[str], None] = print,
) -> Consortium:
    """Create (or complete) a consortium folder; keep whatever already exists.

    Raises:
        ConfigError: a bad site name, or an existing SuperLink certificate issued for
            another host (it is not replaced: move ``server/`` away to reissue it).
    """
    consortium = Consortium(Path(root))
    names = sorted({check_site_name(s) for s in sites})
    if not names:
        raise ConfigError("name at least one site: --sites a,b,c")
    consortium.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _keep_out_of_git(consortium.root, announce)
    ca_key, ca_cert = _certificate_authority(consortium, announce)
    _superlink_certificate(consortium, ca_key, ca_cert, server_host, announce)
    known = consortium.read()["sites"] if consortium.description.exists() else {}
    for site in sorted(set(names) | set(known)):
        _site_keys(consortium, site, announce)
    identity = {
        s: load_public_key_file(public_key_path(consortium.signing_key(s))) for s in sorted(set(names) | set(known))
    }
    description = {
        "superlink": {"host": server_host, "port": port},
        "fingerprints": {
            "ca_certificate": fingerprint(x509.load_pem_x509_certificate(consortium.ca_cert.read_bytes())),
            "superlink_certificate": fingerprint(x509.load_pem_x509_certificate(consortium.server_cert.read_bytes())),
        },
        "sites": {
            site: {
                "supernode_auth_key": consortium.supernode_public_key(site).read_text(encoding="ascii").strip(),
                "identity_key": public_key_path(consortium.signing_key(site)).read_text(encoding="ascii"),
                "identity_fingerprint": key_fingerprint(identity[site]),
                "supernode_auth_fingerprint": fingerprint(serialization.load_ssh_public_key(
                    consortium.supernode_public_key(site).read_bytes())),
            }
            for site in identity
        },
    }
    consortium.description.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    write_manifest(consortium.manifest, identity)
    for folder in [consortium.server, *(consortium.site(s) for s in identity)]:
        for public in (consortium.ca_cert, consortium.description, consortium.manifest):
            shutil.copyfile(public, folder / public.name)
    prints = description["fingerprints"]
    announce(f"fingerprints (compare them out of band): CA certificate {prints['ca_certificate']}, "
             f"SuperLink certificate {prints['superlink_certificate']}")
    for site, keys in description["sites"].items():
        announce(f"  {site}: identity key {keys['identity_fingerprint']}, "
                 f"SuperNode key {keys['supernode_auth_fingerprint']}")
    return consortium


def fingerprint(item: object) -> str:
    """First 16 hex digits of SHA-256: over the DER of a certificate, or of a public key's
    SubjectPublicKeyInfo. Ed25519 identity keys use :func:`fedmed.secure.keys.key_fingerprint`
    (over the raw key), the form ``fedmed audit`` prints; both are 16 hex digits."""
    if isinstance(item, x509.Certificate):
        der = item.public_bytes(serialization.Encoding.DER)
    else:
        der = item.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _keep_out_of_git(root: Path, announce: Callable[[str], None]) -> None:
    """A consortium folder holds private keys: ignore it in git, and say so inside a work tree."""
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# private keys live here: never commit this folder\n*\n", encoding="utf-8")
    try:
        inside = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return
    if inside.returncode == 0:
        announce(
            f"warning: {root} is inside the git work tree {inside.stdout.strip()}; it holds private keys (the CA's "
            "among them). Its .gitignore keeps it out of `git add -A`, but keep it outside any repository, and "
            "move ca/ca.key offline once the consortium is provisioned"
        )


def _certificate_authority(
    consortium: Consortium, announce: Callable[[str], None]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if consortium.ca_key.exists():
        announce(f"keeping the consortium CA in {consortium.ca_cert.parent}")
        key = serialization.load_pem_private_key(consortium.ca_key.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(consortium.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmed consortium CA")])
    cert = (
        _builder(name, name, key.public_key(), days=3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .sign(key, hashes.SHA384())
    )
    write_private_file(consortium.ca_key, private_pem(key), what="CA key")
    consortium.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    announce(f"created the consortium CA: {consortium.ca_cert}")
    return key, cert


def _superlink_certificate(
    consortium: Consortium, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, host: str,
    announce: Callable[[str], None],
) -> None:
    if consortium.server_cert.exists():
        cert = x509.load_pem_x509_certificate(consortium.server_cert.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        issued = [str(n) for n in names.get_values_for_type(x509.DNSName)] + [
            str(n) for n in names.get_values_for_type(x509.IPAddress)
        ]
        if host not in issued:
            raise ConfigError(
                f"{consortium.server_cert} was issued for {', '.join(issued)}, not {host}; it is not replaced "
                f"silently: move {consortium.server} away to issue a new one (and restart the SuperLink)"
            )
        announce(f"keeping the SuperLink certificate for {host}")
        return
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), ca_cert.subject, key.public_key(),
            days=CERT_DAYS,
        )
        .add_extension(x509.SubjectAlternativeName(_subject_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    write_private_file(consortium.server_key, private_pem(key), what="SuperLink TLS key")
    consortium.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    announce(f"created the SuperLink certificate for {host}: {consortium.server_cert}")


def _subject_names(host: str) -> list[x509.GeneralName]:
    """The host, plus localhost and 127.0.0.1: the SuperLink reaches its own ServerApp
    runtime over TLS on 127.0.0.1, and fails (runs stay pending) without them."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        address = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        address = x509.DNSName(host)
    return names if address in names else [address, *names]


def _site_keys(consortium: Consortium, site: str, announce: Callable[[str], None]) -> None:
    folder = consortium.site(site)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = []
    if not consortium.supernode_key(site).exists():
        key = ec.generate_private_key(ec.SECP384R1())
        openssh = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )  # Flower reads this key with load_ssh_private_key
        write_private_file(consortium.supernode_key(site), openssh, what="SuperNode authentication key")
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        consortium.supernode_public_key(site).write_bytes(public + b"\n")
        created.append("SuperNode authentication key")
    if not consortium.signing_key(site).exists():
        generate_signing_key(consortium.signing_key(site))
        created.append("Ed25519 identity key")
    announce(
        f"site {site}: " + (f"created {' and '.join(created)}" if created else "keeping its keys") + f" in {folder}"
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object, *, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
