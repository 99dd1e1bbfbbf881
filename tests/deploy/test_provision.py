"""`fedmed provision`: a consortium's certificates and keys, and each site's folder."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedmed.deploy.provision import Consortium, provision
from fedmed.deploy.supernode import SiteFolder, node_config
from fedmed.errors import ConfigError
from fedmed.secure.keys import key_fingerprint, load_signing_key, public_key_pem
from fedmed.secure.manifest import load_manifest

SITES = ["site-a", "site-b"]


@pytest.fixture()
def consortium(tmp_path: Path) -> Consortium:
    return provision(
        tmp_path / "consortium", sites=SITES, server_host="link.example.org", port=9444, announce=lambda _: None
    )


def test_every_private_key_is_owner_only_and_in_its_party_folder(consortium: Consortium) -> None:
    private = [consortium.ca_key, consortium.server_key]
    for site in SITES:
        private += [consortium.supernode_key(site), consortium.signing_key(site)]
    for path in private:
        assert path.stat().st_mode & 0o777 == 0o600, path
    for site in SITES:
        folder = consortium.site(site)
        assert sorted(p.name for p in folder.iterdir()) == [
            "ca.crt", "consortium-keys.json", "consortium.json", "site-ed25519.pem", "site-ed25519.pub",
            "supernode-auth.key", "supernode-auth.pub",
        ]
    assert not list(consortium.server.glob("*ed25519*")) and not list(consortium.server.glob("supernode*"))


def test_the_superlink_certificate_names_the_host_and_is_signed_by_the_ca(consortium: Consortium) -> None:
    ca = x509.load_pem_x509_certificate(consortium.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(consortium.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"link.example.org", "localhost"}
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_site_keys_are_in_the_forms_flower_and_fedmed_read(consortium: Consortium) -> None:
    for site in SITES:
        auth = load_ssh_private_key(consortium.supernode_key(site).read_bytes(), password=None)
        assert isinstance(auth, ec.EllipticCurvePrivateKey) and auth.curve.name == "secp384r1"
        public = load_ssh_public_key(consortium.supernode_public_key(site).read_bytes())
        assert public.public_numbers() == auth.public_key().public_numbers()
        identity = load_signing_key(consortium.signing_key(site))
        assert public_key_pem(load_manifest(consortium.manifest)[site]) == public_key_pem(identity)
    described = json.loads(consortium.description.read_text())
    assert described["superlink"] == {"host": "link.example.org", "port": 9444}
    assert consortium.address() == "link.example.org:9444"


def test_provisioning_again_keeps_every_key_and_adds_new_sites(consortium: Consortium) -> None:
    before = {p: p.read_bytes() for p in consortium.root.rglob("*.key")} | {
        p: p.read_bytes() for p in consortium.root.rglob("*.pem")
    }
    said: list[str] = []
    again = provision(
        consortium.root, sites=["site-c"], server_host="link.example.org", port=9444, announce=said.append
    )
    assert again.sites() == ["site-a", "site-b", "site-c"]
    assert all(path.read_bytes() == content for path, content in before.items())
    assert "keeping the consortium CA" in said[0] and any("site site-c: created" in s for s in said)
    assert sorted(load_manifest(consortium.site("site-a") / "consortium-keys.json")) == ["site-a", "site-b", "site-c"]


def test_another_server_host_is_refused_not_reissued(consortium: Consortium) -> None:
    with pytest.raises(ConfigError, match="issued for link.example.org, localhost, 127.0.0.1, not other.example.org"):
        provision(consortium.root, sites=SITES, server_host="other.example.org", announce=lambda _: None)


@pytest.mark.parametrize("name", ["Site-A", "site a", "", "../x"])
def test_bad_site_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="site name"):
        provision(tmp_path / "c", sites=[name], server_host="127.0.0.1", announce=lambda _: None)


def test_a_site_folder_is_found_in_the_coordinators_folder_or_on_its_own(consortium: Consortium) -> None:
    assert SiteFolder.find(consortium.root, "site-a").folder == consortium.site("site-a").resolve()
    assert SiteFolder.find(consortium.site("site-b"), "site-b").site == "site-b"
    with pytest.raises(ConfigError, match="no keys for site 'site-z'"):
        SiteFolder.find(consortium.root, "site-z")
    with pytest.raises(ConfigError, match="the consortium has no site 'site-z'"):
        SiteFolder.find(consortium.site("site-a"), "site-z")


def test_node_config_is_toml_flower_can_parse(consortium: Consortium, tmp_path: Path) -> None:
    folder = SiteFolder.find(consortium.root, "site-a")
    text = node_config(folder, data_dir=tmp_path / "my data", policy=tmp_path / "p.yaml", state_dir=tmp_path / "s",
                       cache_dir=None)
    parsed = tomllib.loads(text.replace('" ', '"\n'))
    assert parsed["site-id"] == "site-a"
    assert parsed["data-dir"] == str((tmp_path / "my data").resolve())
    assert parsed["manifest-path"] == str(folder.folder / "consortium-keys.json")


def test_every_key_has_a_fingerprint_in_the_audits_form(tmp_path: Path) -> None:
    said: list[str] = []
    consortium = provision(tmp_path / "c", sites=SITES, server_host="127.0.0.1", announce=said.append)
    described = json.loads(consortium.description.read_text())
    for site in SITES:
        keys = described["sites"][site]
        identity = load_signing_key(consortium.signing_key(site))
        assert keys["identity_fingerprint"] == key_fingerprint(identity)  # what `fedmed audit` prints
        assert len(keys["supernode_auth_fingerprint"]) == 16
        assert f"{site}: identity key {keys['identity_fingerprint']}" in "\n".join(said)
    assert set(described["fingerprints"]) == {"ca_certificate", "superlink_certificate"}
    assert described["fingerprints"]["ca_certificate"] in "\n".join(said)


def test_a_consortium_folder_is_kept_out_of_git(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    said: list[str] = []
    consortium = provision(tmp_path / "c", sites=SITES, server_host="127.0.0.1", announce=said.append)
    assert any("inside the git work tree" in line and "ca/ca.key offline" in line for line in said)
    subprocess.run(["git", "-C", str(tmp_path), "add", "-A"], check=True)
    staged = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain"], capture_output=True, text=True)
    assert staged.stdout == ""  # nothing of the consortium folder, the CA key least of all
    assert consortium.ca_key.exists()
