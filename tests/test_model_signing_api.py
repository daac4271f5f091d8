"""The private parts of `model_signing` that resources/registry/model_signing_api.py wraps still do
what modelpub relies on: a bundle signed from digests computed elsewhere verifies with the
upstream tool's public API on the files themselves, and reads back those digests. A
failure here means upstream moved them: mend resources/registry/model_signing_api.py alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as pem
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import hashing, verifying

from resources.registry import model_signing_api

IGNORED = ("signature.sigstore.json", "public-key.pem")


def test_a_bundle_of_digests_verifies_upstream_and_reads_them_back(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    for name, body in (("model.tensors", b"\x00" * 4096), ("config.json", b"{}")):
        (model / name).write_bytes(body)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model.iterdir()}
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    private.write_bytes(
        key.private_bytes(pem.Encoding.PEM, pem.PrivateFormat.PKCS8, pem.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(pem.Encoding.PEM, pem.PublicFormat.SubjectPublicKeyInfo)
    )
    bundle = model / IGNORED[0]

    statement = model_signing_api.digest_manifest("org__model@v1", digests, IGNORED)
    model_signing_api.sign(statement, private, bundle)

    upstream = hashing.Config().set_ignored_paths(paths=IGNORED).set_allow_symlinks(True)
    verifying.Config().use_elliptic_key_verifier(public_key=public).set_hashing_config(
        upstream
    ).verify(model, bundle)
    assert model_signing_api.verified_digests(bundle, public) == digests

    (model / "config.json").write_bytes(b'{"changed": true}')
    with pytest.raises(ValueError, match="config.json"):
        verifying.Config().use_elliptic_key_verifier(public_key=public).set_hashing_config(
            upstream
        ).verify(model, bundle)
