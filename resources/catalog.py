"""The catalog: which models to publish, from which hub, and how to validate them.

Loaded and validated up front so a typo fails before any run starts, with an error
that names the entry and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from resources.errors import ModelpubError
from resources.formats.format import artifact_format

# Always `org/name`: the store layout (resources/layout.py) relies on two segments, so
# that no repo id reads as another's path (`acme` at v2 would be `acme/v2`'s directory).
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
MAX_CATALOG_BYTES = 1 << 20
REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


# The five fields of a cron string, with the names each allows, as Dagster's schedules
# read them (and its @-shorthands); checked here so the catalog check needs no Dagster.
CRON_FIELDS = (
    (0, 59, ()),
    (0, 23, ()),
    (1, 31, ()),
    (1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    (0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
CRON_SHORTHANDS = {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}
CRON_ITEM = re.compile(r"^(\*|(\w+)(?:-(\w+))?)(?:/(\d+))?$")
# croniter's extensions, which Dagster's schedules take: `?` for any day, `L` for the last
# day of the month, `1#2` (or `mon#2`) for its second Monday
CRON_DAY_ITEMS = {
    2: re.compile(r"^(\?|l)$"),
    4: re.compile(r"^(\?|([0-7]|sun|mon|tue|wed|thu|fri|sat)#[1-5])$"),
}


def is_cron(value: str) -> bool:
    """A standard five-field cron string (lists, ranges, steps, month and day names)."""
    if value.strip().lower() in CRON_SHORTHANDS:
        return True
    fields = value.lower().split()
    if len(fields) != 5:
        return False
    days: set[int] = set()
    for field, (text, (low, high, names)) in enumerate(zip(fields, CRON_FIELDS, strict=True)):
        values: set[int] = set()
        for item in text.split(","):
            special = CRON_DAY_ITEMS.get(field)
            if special is not None and special.match(item):
                continue
            match = CRON_ITEM.match(item)
            if not match or match.group(4) == "0":
                return False
            first, last = match.group(2) or str(low), match.group(3) or match.group(2) or str(high)
            start, end = (names.index(e) + low if e in names else _number(e) for e in (first, last))
            if not (low <= start <= high and low <= end <= high):
                return False
            wrapped = range(start, high + 1), range(low, end + 1)  # 5-1 wraps round, as in cron
            values.update(*(wrapped if start > end else [range(start, end + 1)]))
        if high == 31:
            days = values
        if high == 12 and values == {2} and len(days) == 1 and days <= {30, 31}:
            return False  # only the 30th or only the 31st of February: never fires
    return True


def _number(text: str) -> int:
    return int(text) if text.isdigit() else -1


class CatalogError(ModelpubError):
    """A catalog that cannot be used; the message names the file, entry and field."""


def partition_key(repo_id: str) -> str:
    """`org/name` -> `org__name`: `/` breaks Dagster paths and `|` is reserved."""
    return repo_id.replace("/", "__")


def adapter_partition_key(base_repo_id: str, adapter_repo_id: str) -> str:
    """`<base key>--<adapter key>`: one adapters partition per (base, adapter) pair."""
    return f"{partition_key(base_repo_id)}--{partition_key(adapter_repo_id)}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSpec(_Strict):
    kind: Literal["git_mirror", "huggingface"]
    root: str | None = Field(None, description="git_mirror: directory of clones, <root>/<repo_id>")
    endpoint: str | None = Field(
        None, description="huggingface: API endpoint (default HF_ENDPOINT)"
    )
    token_env: str = Field("HF_TOKEN", description="huggingface: variable holding the token")


def _check_ref(value: str) -> str:
    if not REF.match(value) or ".." in value:
        raise ValueError(f"{value!r} is not a branch, tag or commit name")
    return value


def _check_repo_id(value: str) -> str:
    if not REPO_ID.match(value) or ".." in value:
        raise ValueError(f"{value!r} is not a Hugging Face repo id like 'org/name'")
    return value


def _check_prompts(value: list[str] | None) -> list[str] | None:
    for prompt in value or []:
        if not prompt.strip() or len(prompt) > 4000:
            raise ValueError("each prompt must be non-empty and at most 4000 characters")
    return value


class AdapterEntry(_Strict):
    """A PEFT LoRA adapter published beside its base model; unset fields follow the base."""

    repo_id: str
    hub: str | None = Field(None, description="default: the base model's hub")
    ref: str = "main"
    prompts: list[str] | None = Field(None, min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, le=512)

    _repo_id = field_validator("repo_id")(_check_repo_id)
    _ref = field_validator("ref")(_check_ref)
    _prompts = field_validator("prompts")(_check_prompts)


LABEL = re.compile(r"^([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")


class GpuSpec(_Strict):
    """What this entry's GPU steps ask Kubernetes for (see assets/gpu.py)."""

    count: int | None = Field(
        None, ge=1, le=16, description="nvidia.com/gpu per GPU step; default tensor_parallel_size"
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="node labels added to the deployment's GPU node selector, e.g. "
        "{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}",
    )

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not LABEL.match(key):
                raise ValueError(f"{key!r} is not a Kubernetes label key")
            if not LABEL_VALUE.match(label):
                raise ValueError(f"{label!r} (for {key}) is not a Kubernetes label value")
        return value


class ModelEntry(_Strict):
    repo_id: str
    hub: str
    ref: str = "main"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    encrypt: bool = True
    prompts: list[str] = Field(min_length=1, max_length=64)
    max_tokens: int = Field(16, ge=1, le=512)
    logprob_tolerance: float = Field(0.01, gt=0, le=1.0)
    adapters: list[AdapterEntry] = Field(default_factory=list)
    # auto: the vLLM-tensorized format on a CUDA host, the HF-tensorized one elsewhere.
    format: Literal["auto", "hf", "vllm"] = "auto"
    tensor_parallel_size: int = Field(1, ge=1, le=16)
    gpu: GpuSpec = Field(default_factory=GpuSpec)

    _repo_id = field_validator("repo_id")(_check_repo_id)
    _ref = field_validator("ref")(_check_ref)
    _prompts = field_validator("prompts")(_check_prompts)

    @model_validator(mode="after")
    def _parallelism(self) -> ModelEntry:
        chosen = artifact_format(self.format) if self.format != "auto" else None
        if self.tensor_parallel_size > 1 and chosen is not None and not chosen.per_rank:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs format 'vllm' or "
                "'auto': vLLM loads the HF-tensorized format on one rank only"
            )
        if self.gpu.count is not None and self.gpu.count < self.tensor_parallel_size:
            raise ValueError(
                f"gpu.count {self.gpu.count} is less than tensor_parallel_size "
                f"{self.tensor_parallel_size}: every rank needs its own GPU"
            )
        return self

    @property
    def key(self) -> str:
        return partition_key(self.repo_id)

    @property
    def gpu_count(self) -> int:
        return self.gpu.count or self.tensor_parallel_size

    def adapter_key(self, adapter: AdapterEntry) -> str:
        return adapter_partition_key(self.repo_id, adapter.repo_id)


class AdapterTarget(_Strict):
    """An adapter with its base entry, and the base's settings filled in where unset."""

    key: str
    base: ModelEntry
    adapter: AdapterEntry

    @property
    def hub(self) -> str:
        return self.adapter.hub or self.base.hub

    @property
    def prompts(self) -> list[str]:
        return self.adapter.prompts or self.base.prompts

    @property
    def max_tokens(self) -> int:
        return self.adapter.max_tokens or self.base.max_tokens


class WatchSpec(_Strict):
    """The sensor that publishes new commits of every entry's tracked ref."""

    running: bool = Field(False, description="on when the code loads (the UI toggle wins)")
    interval_s: int = Field(60, ge=5, le=86400, description="seconds between ticks")
    chunk: int = Field(50, ge=1, le=1000, description="entries polled per tick")
    budget_s: float = Field(20.0, gt=0, le=45, description="time one tick may spend polling")


class RepublishSpec(_Strict):
    """A schedule over the published versions that some aliases point at."""

    cron: str
    aliases: list[str] = Field(default_factory=lambda: ["latest"], min_length=1)
    timezone: str = "UTC"
    running: bool = Field(False, description="on when the code loads (the UI toggle wins)")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not is_cron(value):
            raise ValueError(f"{value!r} is not a cron string like '0 3 * * *'")
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        from resources.registry.registry import ALIAS

        for alias in value:
            if not ALIAS.match(alias):
                raise ValueError(f"{alias!r} is not an alias name like 'latest' or 'stable'")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone like 'UTC'") from None
        return value


class Automation(_Strict):
    watch: WatchSpec = WatchSpec()
    reverify: RepublishSpec = RepublishSpec(cron="0 3 * * *")
    rotate_keys: RepublishSpec = RepublishSpec(cron="0 4 1 * *")


class Catalog(_Strict):
    hubs: dict[str, HubSpec]
    models: list[ModelEntry] = Field(default_factory=list)
    automation: Automation = Automation()

    def entry(self, key: str) -> ModelEntry:
        for model in self.models:
            if model.key == key:
                return model
        known = ", ".join(m.key for m in self.models) or "none"
        raise CatalogError(f"no catalog entry with key {key!r} (known: {known})")

    @property
    def keys(self) -> list[str]:
        return [m.key for m in self.models]

    @property
    def adapters(self) -> list[AdapterTarget]:
        return [
            AdapterTarget(key=m.adapter_key(a), base=m, adapter=a)
            for m in self.models
            for a in m.adapters
        ]

    def is_adapter(self, name: str) -> bool:
        """Whether `name` (a partition key or repo id) names an adapter, not a model entry."""
        return partition_key(name) not in self.keys and self._find_adapter(name) is not None

    def _find_adapter(self, name: str) -> AdapterTarget | None:
        return next(
            (
                t
                for t in self.adapters
                if name in (t.key, t.adapter.repo_id, partition_key(t.adapter.repo_id))
            ),
            None,
        )

    def adapter(self, name: str) -> AdapterTarget:
        """The adapter with partition key, adapter repo id or adapter key `name`."""
        target = self._find_adapter(name)
        if target is not None:
            return target
        known = ", ".join(t.key for t in self.adapters) or "none"
        raise CatalogError(f"no catalog adapter {name!r} (known: {known})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys instead of keeping the last, and
    aliases (`*ref`), which let a small file expand to an enormous one."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise CatalogError(f"line {mark.line + 1}: YAML aliases are not allowed")
        return super().compose_node(parent, index)


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise CatalogError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _describe(error: dict, data: dict) -> str:
    """`models[0] (org/base).adapters[1] (org/lora).ref: ...`: entries named by repo id."""
    loc, parts, node, i = error["loc"], [], data, 0
    while i + 1 < len(loc) and loc[i] in ("models", "adapters") and isinstance(loc[i + 1], int):
        try:
            node = node[loc[i]][loc[i + 1]]
            label = f" ({node['repo_id']})"
        except (IndexError, KeyError, TypeError):
            node, label = None, ""
        parts.append(f"{loc[i]}[{loc[i + 1]}]{label}")
        i += 2
    rest = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc[i:])
    where = ".".join(parts + [rest] if rest else parts).replace(".[", "[")
    return f"{where}: {error['msg']}"


def _adapter_problems(catalog: Catalog) -> list[str]:
    """An adapter is registered under its own repo id, so each may appear only once."""
    problems = []
    models = {m.repo_id for m in catalog.models}
    seen: set[str] = set()
    for i, model in enumerate(catalog.models):
        for j, adapter in enumerate(model.adapters):
            where = f"models[{i}] ({model.repo_id}).adapters[{j}] ({adapter.repo_id})"
            if adapter.hub is not None and adapter.hub not in catalog.hubs:
                problems.append(
                    f"{where}.hub: unknown hub {adapter.hub!r}"
                    f" (defined: {', '.join(catalog.hubs) or 'none'})"
                )
            if adapter.repo_id in models:
                problems.append(f"{where}: is listed as a model too; an adapter is not a model")
            if partition_key(adapter.repo_id) in seen:
                problems.append(
                    f"{where}: listed twice; an adapter is published for one base model"
                )
            seen.add(partition_key(adapter.repo_id))
    return problems


def parse_catalog(text: str, source: str = "catalog", base_dir: Path | None = None) -> Catalog:
    """Parse catalog YAML; relative hub roots resolve against `base_dir`."""
    if len(text) > MAX_CATALOG_BYTES:
        raise CatalogError(f"{source}: larger than {MAX_CATALOG_BYTES} bytes; split it up")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from None
    except CatalogError as exc:
        raise CatalogError(f"{source}: {exc}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: expected a mapping with 'hubs' and 'models'")
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, data) for e in exc.errors())
        raise CatalogError(f"{source}: {problems}") from None
    problems = []
    seen: set[str] = set()
    for i, model in enumerate(catalog.models):
        if model.hub not in catalog.hubs:
            problems.append(
                f"models[{i}] ({model.repo_id}).hub: unknown hub {model.hub!r}"
                f" (defined: {', '.join(catalog.hubs) or 'none'})"
            )
        if model.key in seen:
            problems.append(f"models[{i}] ({model.repo_id}): listed twice")
        seen.add(model.key)
    problems += _adapter_problems(catalog)
    for name, hub in catalog.hubs.items():
        if hub.kind == "git_mirror" and not hub.root:
            problems.append(f"hubs.{name}.root: required for a git_mirror hub")
    if problems:
        raise CatalogError(f"{source}: " + "; ".join(problems))
    if base_dir is not None:
        hubs = {
            name: hub.model_copy(update={"root": str((base_dir / hub.root).resolve())})
            if hub.root
            else hub
            for name, hub in catalog.hubs.items()
        }
        catalog = catalog.model_copy(update={"hubs": hubs})
    return catalog


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc.strerror}") from None
    return parse_catalog(text, source=str(path), base_dir=path.resolve().parent)
