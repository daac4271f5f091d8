"""The parts of OpenSSF `model_signing` (1.x) this project needs that have no public API.

Its public `signing.Config` and `verifying.Config` hash a directory on disk themselves;
modelpub signs the digests it streamed from the store and reads back the digests a
verified bundle names, which only its private modules offer. Every use of them is here,
and tests/test_model_signing_api.py fails, naming this module, when upstream moves them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from model_signing import hashing, manifest


def serialization(ignored: tuple[str, ...]) -> manifest.SerializationType:
    """What model_signing's own file hashing records in a manifest (method, sha256, the
    ignored names): the parameters its `verify key` command reads back from a bundle."""
    config = hashing.Config().set_ignored_paths(paths=ignored).set_allow_symlinks(True)
    with tempfile.TemporaryDirectory(prefix="modelpub-empty-") as empty:
        return manifest.SerializationType.from_args(config.hash(empty).serialization_type)


def digest_manifest(
    name: str, sha256: dict[str, str], ignored: tuple[str, ...]
) -> manifest.Manifest:
    """A manifest of files (name -> sha256 hex) hashed elsewhere, as model_signing's own
    hashing of a directory holding them would write it."""
    from model_signing._hashing.hashing import Digest

    recorded = serialization(ignored)
    items = [
        recorded.new_item(file, Digest("sha256", bytes.fromhex(digest)))
        for file, digest in sha256.items()
    ]
    return manifest.Manifest(name, items, recorded)


def sign(statement: manifest.Manifest, private_key: Path, bundle: Path) -> None:
    """Sign `statement` with the EC private key (PEM) into a sigstore bundle file; raises
    ValueError for a key model_signing cannot use."""
    from model_signing._signing import sign_ec_key
    from model_signing._signing.signing import Payload

    sign_ec_key.Signer(private_key).sign(Payload(statement)).write(bundle)


def verified_digests(bundle: Path, public_key: Path) -> dict[str, str]:
    """name -> sha256 hex the bundle's statement names, once its signature verifies with
    the public key (PEM); raises (ValueError and others) when it does not."""
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    statement = sign_ec_key.Verifier(public_key).verify(sign_sigstore_pb.Signature.read(bundle))
    return {rd.identifier: rd.digest.digest_hex for rd in statement.resource_descriptors()}
