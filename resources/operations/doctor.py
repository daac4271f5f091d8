"""`modelpub doctor`: what a publish needs, checked before anyone waits on a run.

Every check returns a `Check` instead of raising, so one missing dependency never hides
the others: the operator sees every problem, and what to do about it, in one go.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from resources.catalog import Catalog, CatalogError, HubSpec, load_catalog
from resources.errors import ModelpubError
from resources.settings import Settings, hub_token
from resources.sources.hub import HuggingFaceHub
from resources.storage.s3 import S3Store
from resources.storage.store import LocalStore, ObjectStore
from resources.stores import artifact_store, key_store

# The checkout's lock, beside the package: `make install` installs exactly it.
LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
DISTRIBUTION = "modelpub"
# vLLM's plugin group, and what modelpub registers there: the CPU loading fix, and the
# `modelpub` load format (two entry points: the loader imports the formats, which import
# resources.vllm, so it cannot live there).
PLUGIN_GROUP = "vllm.general_plugins"
PLUGINS = {
    "resources.vllm.plugin:register": "vLLM would load HF-tensorized models without the CPU fix",
    "resources.serving.loader:register": "vLLM would not know load_format='modelpub' "
    "(modelpub serve)",
}
MIN_FREE_BYTES = 1 << 30
HUB_TIMEOUT_S = 10.0
# Listed, never written: a prefix that holds nothing, so listing it costs one request.
PROBE = ".modelpub-doctor"
GIB = float(1 << 30)
REINSTALL = "run make install"
SHOWN = 5  # mismatched packages named on the line; a stale venv can have hundreds


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.name}: {self.detail}"
        return f"FAIL  {self.name}: {self.detail}" + (f" -> {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Lock:
    """What `make lock` recorded: the Python it ran and every package's version."""

    python: str
    pins: dict[str, str]  # PEP 503 name -> version


def parse_lock(text: str) -> Lock:
    """`name==version` lines and a `# python: X.Y` header, as `make lock` writes them."""
    python, pins = None, {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# python:"):
            python = line.removeprefix("# python:").strip()
        if not line or line.startswith("#"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            raise ValueError(f"{line!r} is not a requirement") from None
        specs = list(requirement.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise ValueError(f"{line!r} does not pin one version")
        pins[canonicalize_name(requirement.name)] = specs[0].version
    if python is None:
        raise ValueError("no '# python: X.Y' line")
    return Lock(python, pins)


def check_python(lock: Lock) -> Check:
    """The lock's wheels and markers were resolved for one Python."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if lock.python == running:
        return Check("python", True, f"{running}, as in requirements.lock")
    return Check(
        "python",
        False,
        f"{running} runs modelpub, requirements.lock was made with {lock.python}",
        f"{REINSTALL} (or make lock with Python {running})",
    )


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages(lock: Lock) -> Check:
    wrong = []
    for name, locked in sorted(lock.pins.items()):
        have = _installed_version(name)
        if have is None:
            wrong.append(f"{name} not installed, {locked} locked")
        elif have != locked:
            wrong.append(f"{name} {have} installed, {locked} locked")
    if wrong:
        more = f"; and {len(wrong) - SHOWN} more" if len(wrong) > SHOWN else ""
        return Check("packages", False, "; ".join(wrong[:SHOWN]) + more, REINSTALL)
    return Check("packages", True, f"{len(lock.pins)} installed as locked in requirements.lock")


def check_lock(lock_path: Path) -> list[Check]:
    """Python and every installed package against the lock `make install` installed."""
    try:
        lock = parse_lock(lock_path.read_text())
    except (OSError, ValueError) as exc:
        return [Check("packages", False, f"cannot read {lock_path}: {exc}", "run make lock")]
    return [check_python(lock), check_packages(lock)]


def check_libsodium() -> Check:
    """tensorizer encrypts through libsodium and says so only when it first encrypts;
    `tensorizer._crypt.available` is what tensorizer itself consults."""
    try:
        import tensorizer._crypt as crypt
    except ImportError as exc:
        return Check("libsodium", False, f"tensorizer does not import: {exc}", REINSTALL)
    if crypt.available:
        return Check("libsodium", True, "loadable: tensorizer can encrypt and decrypt")
    return Check(
        "libsodium",
        False,
        "tensorizer could not load libsodium (missing or too old): encrypted entries fail",
        "install it (apt-get install libsodium23)",
    )


def check_curl() -> Check:
    path = shutil.which("curl")
    if path:
        return Check("curl", True, f"{path} (tensorizer's S3 reads)")
    return Check(
        "curl",
        False,
        "not on PATH; tensorizer reads s3:// artifacts through it",
        "install curl (apt-get install curl)",
    )


def check_vllm_plugin(distribution: str = DISTRIBUTION) -> Check:
    """Read from the installed metadata: importing vLLM would take longer than all the
    other checks together."""
    try:
        points = importlib.metadata.distribution(distribution).entry_points
    except importlib.metadata.PackageNotFoundError:
        return Check("vllm plugin", False, f"{distribution} is not installed", REINSTALL)
    found = {p.value for p in points if p.group == PLUGIN_GROUP}
    for value, without in PLUGINS.items():
        if value not in found:
            return Check(
                "vllm plugin",
                False,
                f"{value} is not in {distribution}'s {PLUGIN_GROUP} entry points: {without}",
                REINSTALL,
            )
    return Check(
        "vllm plugin", True, f"{', '.join(PLUGINS)} in {distribution}'s {PLUGIN_GROUP} entry points"
    )


def check_catalog(path: str) -> tuple[Check, Catalog | None]:
    try:
        catalog = load_catalog(path)
    except CatalogError as exc:
        return Check("catalog", False, str(exc), f"fix {path}"), None
    detail = f"{path}: {len(catalog.models)} model and {len(catalog.adapters)} adapter entries"
    return Check("catalog", True, detail), catalog


def _first_repo(catalog: Catalog, hub: str) -> tuple[str, str] | None:
    """(repo id, ref) of the first model or adapter the hub serves."""
    items = [(m.repo_id, m.ref, m.hub) for m in catalog.models]
    items += [(t.adapter.repo_id, t.adapter.ref, t.hub) for t in catalog.adapters]
    return next(((repo, ref) for repo, ref, h in items if h == hub), None)


def check_hub(
    catalog: Catalog, name: str, spec: HubSpec, settings: Settings, timeout_s: float
) -> Check:
    """A mirror is a directory; a Hugging Face hub must resolve the first ref it serves."""
    label = f"hub {name}"
    if spec.kind == "git_mirror":
        root = Path(spec.root or ".")
        if root.is_dir():
            return Check(label, True, f"mirror directory {root}")
        return Check(
            label,
            False,
            f"mirror directory {root} does not exist",
            f"clone the repos under it, or fix hubs.{name}.root in the catalog",
        )
    repo = _first_repo(catalog, name)
    if repo is None:
        return Check(label, True, "no entry uses it; not contacted")
    hub = HuggingFaceHub(
        spec.endpoint or settings.hf_endpoint,
        hub_token(spec.token_env, settings.hf_token),
        timeout_s=timeout_s,
    )
    try:
        sha = hub.resolve(*repo)
    except ModelpubError as exc:
        return Check(label, False, str(exc), f"check the endpoint and {spec.token_env}")
    return Check(label, True, f"{repo[0]}@{repo[1]} is {sha[:12]}")


def _existing_ancestor(path: Path) -> Path:
    """The directory a publish would create `path` in (the path itself if it exists)."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def _probe(name: str, store: ObjectStore) -> Check:
    """One listing with the store's own credentials; a local store must be writable."""
    try:
        store.list(PROBE)
    except ModelpubError as exc:
        return Check(name, False, str(exc))
    if isinstance(store, LocalStore):
        parent = _existing_ancestor(store.root)
        if not (parent.is_dir() and os.access(parent, os.W_OK)):
            return Check(name, False, f"{parent} is not a writable directory", "fix its mode")
    return Check(name, True, f"{store.uri('')} reachable")


def _shares_credentials(store: ObjectStore, keys: ObjectStore) -> bool:
    return (
        isinstance(store, S3Store)
        and isinstance(keys, S3Store)
        and store.access_key() == keys.access_key()
    )


def _key_store_check(settings: Settings, store: ObjectStore) -> Check:
    try:
        keys = key_store(settings).store
        if _shares_credentials(store, keys):
            return Check(
                "key store",
                False,
                f"{keys.uri('')} uses the artifact store's access key: whoever can read the "
                "artifacts can read their keys",
                "set MODELPUB_KEYS_S3_ACCESS_KEY_ID and MODELPUB_KEYS_S3_SECRET_ACCESS_KEY",
            )
    except ModelpubError as exc:
        return Check("key store", False, str(exc), "check MODELPUB_KEYS")
    return _probe("key store", keys)


def check_stores(settings: Settings) -> list[Check]:
    """Both stores reachable, and the keys kept from the artifacts: in a place of their
    own and, on S3, under credentials of their own."""
    try:
        store = artifact_store(settings)
    except ModelpubError as exc:
        return [Check("object store", False, str(exc), "check MODELPUB_STORE")]
    return [_probe("object store", store), _key_store_check(settings, store)]


def check_staging(staging: Path, min_free: int = MIN_FREE_BYTES) -> Check:
    """A publish stages the whole serialized model there before uploading it."""
    where = _existing_ancestor(staging)
    free = shutil.disk_usage(where).free
    detail = f"{free / GIB:.1f} GiB free at {where} (minimum {min_free / GIB:.1f} GiB)"
    if free >= min_free:
        return Check("staging space", True, detail)
    return Check(
        "staging space", False, detail, "free space there, or point MODELPUB_CACHE elsewhere"
    )


def _guarded(name: str, check: Callable[..., Check | list[Check]], *args) -> list[Check]:
    """A check that breaks is reported as its own failure, not as a traceback that hides
    the checks after it."""
    try:
        result = check(*args)
    except Exception as exc:  # noqa: BLE001 - reported, never swallowed
        return [Check(name, False, f"the check itself failed: {type(exc).__name__}: {exc}")]
    return result if isinstance(result, list) else [result]


def run_checks(
    settings: Settings,
    lock: Path = LOCK,
    min_free: int = MIN_FREE_BYTES,
    hub_timeout_s: float = HUB_TIMEOUT_S,
) -> list[Check]:
    """Every check, in the order a publish meets them; the hubs only if the catalog loads."""
    results = _guarded("packages", check_lock, lock)
    results += _guarded("libsodium", check_libsodium)
    results += _guarded("curl", check_curl)
    results += _guarded("vllm plugin", check_vllm_plugin)
    catalog_check, loaded = check_catalog(settings.catalog)
    results.append(catalog_check)
    for name, spec in loaded.hubs.items() if loaded else ():
        results += _guarded(f"hub {name}", check_hub, loaded, name, spec, settings, hub_timeout_s)
    results += _guarded("stores", check_stores, settings)
    results += _guarded("staging space", check_staging, Path(settings.staging), min_free)
    return results
