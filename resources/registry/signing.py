"""Signed versions: OpenSSF model signing (the `model-signing` package) over a version's
files and its record.

A signature is a Sigstore bundle whose DSSE envelope holds an in-toto statement naming
the sha256 of every file in a directory view of the version: its published files plus
`record.json`, the version record byte for byte as the registry stores it. Verifying that
directory (here, or one `modelpub fetch` wrote, with the upstream `model_signing verify
key`) covers the files and the record together. The bundle and the public key, which a
fetched directory holds too, are left out by name; the ignore list is in the signed
statement itself.

The signing key is an EC P-256 private key (PEM) in the key store, made on first use and
never written to the artifact store. Its public half is published once per key, at
`registry/_signing/<fingerprint>.pem`, and each record names the fingerprint that signed
it: rotating the key leaves earlier signatures verifiable against the key that made them.
A verifier trusts the key store (the current key, and rotated keys an operator kept under
`signing/retired/`), never the published copy alone: whoever can write the artifact store
could replace that copy and sign again.

The statement is built from sha256 digests streamed from the store (model_signing's
manifest API takes digests computed elsewhere), with the parameters model_signing's own
file hashing records, so the upstream verifier reads it as one of its own; nothing is
staged on disk to sign or to verify, however big the model.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from resources import layout
from resources.errors import ModelpubError
from resources.formats.artifact import fetch_files
from resources.registry.records import VersionRecord
from resources.registry.registry import Registry
from resources.storage.keys import KeyStore
from resources.storage.store import NotFound, ObjectStore

RECORD_FILE = "record.json"
SIGNATURE_FILE = "signature.sigstore.json"
PUBLIC_KEY_FILE = "public-key.pem"
IGNORED = (SIGNATURE_FILE, PUBLIC_KEY_FILE)  # beside the version in a fetched directory
UNSIGNED = (
    "unsigned: published before versions were signed, so nothing vouches for it; publish "
    "it again (`modelpub publish <entry> --force`) to get a signed version"
)


class SigningError(ModelpubError):
    pass


def new_private_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(pem: bytes) -> bytes:
    """The public key (SubjectPublicKeyInfo PEM) of a private or public key PEM."""
    try:
        key = serialization.load_pem_private_key(pem, None).public_key()
    except ValueError:
        key = serialization.load_pem_public_key(pem)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(public: bytes) -> str:
    """sha256 of the public key's PEM: the key hint model_signing writes into the bundle."""
    return hashlib.sha256(public).hexdigest()


@dataclass(frozen=True)
class Signer:
    private: bytes
    public: bytes

    @classmethod
    def of(cls, keys: KeyStore) -> Signer:
        """The key store's signing key, made on first use."""
        private = keys.signing_key(new_private_key)
        try:
            return cls(private, public_pem(private))
        except ValueError as exc:
            raise SigningError(
                f"{keys.store.uri(layout.SIGNING_KEY)} is not a PEM private key ({exc}); "
                "restore it, or move it away to make a new one (see README, Trust)"
            ) from None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


def _stored_digests(
    store: ObjectStore,
    record: VersionRecord,
    record_json: bytes,
    known: Mapping[str, str | None] | None = None,
) -> dict[str, str | None]:
    """name -> sha256 of each of the version's files as stored now (None: gone), each read
    as a stream from the store, never staged on disk, unless `known` (a read that hashed
    them already) has it; and `record_json` as record.json."""
    clash = sorted({RECORD_FILE, *IGNORED} & set(record.files))
    if clash:
        raise SigningError(f"{record.reference}: a file named {clash[0]} cannot be signed")
    prefix, _ = record.location
    digests: dict[str, str | None] = {RECORD_FILE: hashlib.sha256(record_json).hexdigest()}
    for name in sorted(record.files):
        if known is not None and name in known:
            digests[name] = known[name]
            continue
        try:
            digests[name] = store.sha256(f"{prefix}/{name}")
        except NotFound:
            digests[name] = None
    return digests


def _publish_public_key(store: ObjectStore, public: bytes) -> None:
    key = layout.public_key(fingerprint(public))
    if not store.create(key, public) and store.get_bytes(key) != public:
        raise SigningError(
            f"{store.uri(key)} is not the public key it is named after: it was replaced; "
            "restore it before publishing"
        )


def sign_record(
    store: ObjectStore, keys: KeyStore, record: VersionRecord, proved: Mapping[str, str]
) -> VersionRecord:
    """`record` naming the key store's signing key, once its signature and the public key
    are stored beside where it goes. What is signed is `proved`, each file's sha256 as the
    round trip read and checked it, never whatever the store holds now: the store is read
    once more and the publish refused where any file differs (swapped since the checks).
    The caller writes the record itself last, so that no version is ever visible without
    its signature."""
    signer = Signer.of(keys)
    signed = record.model_copy(update={"signing_key": signer.fingerprint})
    from resources.registry import model_signing_api

    digests = _stored_digests(store, signed, signed.to_json())
    unproved = sorted(n for n in record.files if proved.get(n) is None)
    if unproved:
        raise SigningError(
            f"{record.reference}: the round trip did not check {', '.join(unproved)}; not "
            "publishing, run the publish job again"
        )
    changed = sorted(n for n in record.files if digests[n] != proved[n])
    if changed:
        raise SigningError(
            f"{record.reference}: {', '.join(changed)} changed in the store since the round "
            "trip checked it; not publishing what was not checked, run the publish job again"
        )
    _publish_public_key(store, signer.public)
    statement = model_signing_api.digest_manifest(
        record.reference.replace("/", "__"), digests, IGNORED
    )
    with tempfile.TemporaryDirectory(prefix="modelpub-sign-") as tmp:  # mode 0700
        private, bundle = Path(tmp) / "signing.pem", Path(tmp) / SIGNATURE_FILE
        private.write_bytes(signer.private)
        try:
            model_signing_api.sign(statement, private, bundle)
        except ValueError as exc:
            raise SigningError(f"{record.reference}: signing failed: {exc}") from None
        store.put_file(layout.signature_key(record.repo_id, record.suffix), bundle)
    return signed


def _published(store: ObjectStore, record: VersionRecord) -> tuple[bytes, bytes]:
    """A signed version's bundle and its published public key, or why they cannot be used."""
    if record.signing_key is None:
        raise SigningError(UNSIGNED)
    bundle_key, key_key = (
        layout.signature_key(record.repo_id, record.suffix),
        layout.public_key(record.signing_key),
    )
    try:
        bundle, public = store.get_bytes(bundle_key), store.get_bytes(key_key)
    except NotFound as exc:
        raise SigningError(f"signature: {exc}; it was removed after publishing") from None
    if fingerprint(public) != record.signing_key:
        raise SigningError(
            f"signature: {store.uri(key_key)} is not the key that signed {record.reference} "
            "(its fingerprint differs): it was replaced after publishing; restore it"
        )
    return bundle, public


def trusted_public_key(keys: KeyStore, key_fingerprint: str) -> bytes | None:
    """The public key with this fingerprint, if the key store vouches for it: the current
    signing key, or a rotated one an operator kept under `signing/retired/`."""
    for name in (layout.SIGNING_KEY, layout.retired_signing_key(key_fingerprint)):
        pem = keys.read(name)
        if pem is not None and fingerprint(public := public_pem(pem)) == key_fingerprint:
            return public
    return None


def _signed_digests(bundle: bytes, public: bytes) -> dict[str, str]:
    """name -> sha256 the bundle's statement names, once its signature verifies with
    `public`; raises (ValueError and others) when it does not."""
    from resources.registry.model_signing_api import verified_digests

    with tempfile.TemporaryDirectory(prefix="modelpub-verify-") as tmp:
        bundle_path, key_path = Path(tmp) / SIGNATURE_FILE, Path(tmp) / PUBLIC_KEY_FILE
        bundle_path.write_bytes(bundle)
        key_path.write_bytes(public)
        return verified_digests(bundle_path, key_path)


def _difference(signed: dict[str, str], stored: dict[str, str | None]) -> str | None:
    """How the stored version differs from what was signed, in one line; None if not."""
    changed = sorted(n for n in signed.keys() & stored.keys() if signed[n] != stored[n])
    gone = [n for n in changed if stored[n] is None]
    parts = []
    if changed := [n for n in changed if n not in gone]:
        parts.append(f"{', '.join(changed)} changed since signing")
    if gone:
        parts.append(f"{', '.join(gone)} gone from the store")
    if unsigned := sorted(stored.keys() - signed.keys()):
        parts.append(f"{', '.join(unsigned)} not signed")
    if missing := sorted(signed.keys() - stored.keys()):
        parts.append(f"{', '.join(missing)} signed but not in the record")
    return "; ".join(parts) or None


def _trusted_statement(keys: KeyStore, store: ObjectStore, record: VersionRecord) -> dict[str, str]:
    """name -> sha256 the version's signature names, once it verifies with a key the key
    store trusts; raises SigningError saying why it does not."""
    bundle, _ = _published(store, record)
    try:
        trusted = trusted_public_key(keys, record.signing_key)
    except ValueError as exc:
        raise SigningError(
            f"signature: a signing key in the key store is not a PEM key ({exc})"
        ) from None
    if trusted is None:
        raise SigningError(
            f"signature: made with key {record.signing_key}, which the key store does not "
            f"trust (it is not {layout.SIGNING_KEY}, and there is no "
            f"{layout.retired_signing_key(record.signing_key)}); republish the version, or "
            "restore the retired key"
        )
    try:
        return _signed_digests(bundle, trusted)
    except Exception as exc:  # noqa: BLE001 - every way of failing to verify is a finding
        text = str(exc).strip() or type(exc).__name__
        raise SigningError(
            f"signature: does not verify with key {record.signing_key} ({text})"
        ) from None


def verify_signature(
    registry: Registry,
    keys: KeyStore,
    record: VersionRecord,
    stored_sha256: Mapping[str, str | None] | None = None,
) -> str | None:
    """Why the version's signature does not vouch for its files and record as stored now,
    in one line; None when it does. `stored_sha256`: the files' sha256s as stored, where
    the caller has just read them (None: absent); the others are read here."""
    try:
        signed = _trusted_statement(keys, registry.store, record)
    except SigningError as exc:
        return str(exc)
    record_json = registry.stored(record.repo_id, record.suffix)
    stored = _stored_digests(registry.store, record, record_json, stored_sha256)
    difference = _difference(signed, stored)
    if difference:
        return f"signature: does not match the version as stored ({difference})"
    return None


@dataclass(frozen=True)
class SignedVersion:
    """A version record whose signature verified, read once: the record parsed from the
    very bytes that were checked, and their sha256 (to pin them by). The record's digests
    are what whoever reads the files next must find."""

    record: VersionRecord
    record_sha256: str


def signed_version(
    registry: Registry, keys: KeyStore, reference: str, pinned: str | None = None
) -> SignedVersion:
    """The version `reference` names, its signature verified over its record and the
    digests the record holds, without reading its files (the reader of each file checks
    it as it reads). `pinned`: the record's sha256 as verified before; any other record
    is refused. Raises SigningError with one line naming the reference."""
    repo_id, suffix = registry.locate(reference)
    data = registry.stored(repo_id, suffix)
    digest = hashlib.sha256(data).hexdigest()
    where = f"{repo_id}@{suffix}"
    if pinned is not None and digest != pinned:
        raise SigningError(
            f"{where}: {RECORD_FILE} is not the record that was verified (it changed in the "
            "registry since)"
        )
    record = registry.parsed(repo_id, suffix, data)
    try:
        signed = _trusted_statement(keys, registry.store, record)
    except SigningError as exc:
        raise SigningError(f"{where}: {exc}") from None
    # a per-part entry names no whole-file sha256: the signed record names its parts,
    # which its reader checks; the statement must still name the file
    stated = {RECORD_FILE: digest} | {
        n: e.get("sha256") or signed.get(n) for n, e in record.files.items()
    }
    difference = _difference(signed, stated)
    if difference:
        raise SigningError(f"{where}: signature: does not match the record ({difference})")
    return SignedVersion(record, digest)


def fetch_signed(registry: Registry, record: VersionRecord, dest: Path) -> list[Path]:
    """Write the version into `dest` as its signature covers it: the files (each checked
    against the record's sha256 as it lands), record.json, the bundle and the public key,
    so that `model_signing verify key` checks the directory as it is. `dest` must not exist
    or be empty: the upstream check refuses files the signature does not name."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SigningError(f"{dest} exists and is not an empty directory; choose another")
    store = registry.store
    try:
        bundle, public = _published(store, record)
    except SigningError as exc:
        raise SigningError(f"{record.reference}: {exc}") from None
    prefix, _ = record.location
    written = fetch_files(store, prefix, record.files, dest)
    for name, data in (
        (RECORD_FILE, registry.stored(record.repo_id, record.suffix)),
        (SIGNATURE_FILE, bundle),
        (PUBLIC_KEY_FILE, public),
    ):
        (dest / name).write_bytes(data)
        written.append(dest / name)
    return written
