"""The one settings object: every knob is an environment variable prefixed ``TAGSTREAM_``.

Nested groups use a double underscore, e.g. ``TAGSTREAM_FETCH__MAX_BYTES``. The README's
settings table is generated from these fields' descriptions (``tagstream settings``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_type_hints

from pydantic import BaseModel, Field, create_model, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.config import SETTING, ModelConfig, PipelineConfig, SearchConfig
from schemas import TAG_SUGGESTIONS, SchemaError, builtin_registry
from streams.events import EventLimits
from streams.logs import LogFormat

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class TopicSettings(BaseModel):
    uploads: str = Field("image-uploaded", description="Input topic of ImageUploaded events.")
    suggestions: str = Field("tag-suggestions", description="Output topic of TagSuggestions events.")
    suggestions_schema_version: int | None = Field(
        None,
        ge=1,
        description="TagSuggestions schema version the worker writes; default: the latest. Set the previous one "
        "during an upgrade until every reader of the topic knows the latest (version 1 has no copies).",
    )
    dead_letters: str = Field(
        "image-uploaded.dlq", description="Dead-letter topic: every event that could not be processed, with its reason."
    )
    partitions: int = Field(1, description="Partitions used when the worker creates missing topics.")
    replication: int = Field(
        1,
        ge=1,
        description="Replication factor of the topics the worker creates (its output and Faust's internal ones); on a "
        "cluster set it to the uploads topic's, or losing one broker makes them unavailable.",
    )

    @field_validator("suggestions_schema_version")
    @classmethod
    def _a_shipped_version(cls, version: int | None) -> int | None:
        """Refused at start-up, not at the first upload: a worker that cannot write its output must not run."""
        if version is not None:
            try:
                builtin_registry().version(TAG_SUGGESTIONS, version)
            except SchemaError as exc:
                raise ValueError(str(exc)) from None
        return version


class FetchSettings(BaseModel):
    allow_private_networks: bool = Field(
        False,
        description="Allow image URLs on loopback/private/link-local addresses (SSRF guard off; for tests and demos only).",
    )
    max_bytes: int = Field(20 * 1024 * 1024, description="Largest image download accepted, in bytes.")
    max_pixels: int = Field(
        40_000_000,
        description="Largest image accepted, in pixels, checked from its header before decoding (decompression-bomb guard).",
    )
    working_max_side: int = Field(
        2048,
        description="Images with a longer side are reduced to it as they are decoded (the matcher works at <= 1024 px); "
        "boxes are mapped back to the original pixels. Bounds memory per image: 2048 x 2048 x 3 bytes = 12 MB.",
    )
    max_batch_pixels: int = Field(
        64_000_000,
        description="Decoded pixels a micro-batch holds at once: its events are worked through in groups needing at most "
        "max_batch_pixels / working_max_side^2 images (an event needing more goes alone).",
    )
    max_redirects: int = Field(
        3, description="Redirects followed per image, each re-checked against the address rules."
    )
    connect_timeout_s: float = Field(5.0, description="TCP/TLS connect timeout per image request.")
    read_timeout_s: float = Field(15.0, description="Overall deadline per image download.")
    max_concurrency: int = Field(16, description="Image downloads in flight at once per worker.")
    max_decodes: int = Field(
        2,
        description="Image decodes at once per worker; each briefly holds one image at full size (max_pixels x 3 bytes).",
    )
    attempts: int = Field(
        3, description="Attempts for a transient fetch error (timeout, 5xx, 429) before dead-lettering."
    )
    backoff_s: float = Field(0.5, description="First retry delay for transient fetch errors; doubles per attempt.")
    cache_images: int = Field(
        256, description="Decoded images kept in memory by URL (source images repeat across uploads)."
    )
    cache_bytes: int = Field(
        256 * 1024 * 1024, description="Memory the decoded-image cache may use, in bytes (at working resolution)."
    )


def library_section(config: type[Any], **extra: Any) -> type[BaseModel]:
    """A settings section holding the fields of the library's ``config`` marked as settings.

    Same names, types and defaults, described by the library (``inference.config.setting``),
    plus ``extra`` fields (pydantic ``(type, Field)`` pairs) that only the deployment knows.
    """
    hints = get_type_hints(config)
    exposed: dict[str, Any] = {
        f.name: (hints[f.name], Field(f.default, description=f.metadata[SETTING]))
        for f in dataclasses.fields(config)
        if SETTING in f.metadata
    }
    return create_model(f"{config.__name__}Settings", **exposed, **extra)


def library_config(config: type[T], section: BaseModel) -> T:
    """``config`` built from a :func:`library_section`: its settings fields, its own defaults elsewhere."""
    values = section.model_dump()
    return config(**{f.name: values[f.name] for f in dataclasses.fields(config) if f.name in values})


if TYPE_CHECKING:  # the checker sees the library's fields, which is what the sections hold

    class ModelSettings(ModelConfig):
        offline: bool

    SearchSettings = SearchConfig
else:
    ModelSettings = library_section(
        ModelConfig,
        offline=(
            bool,
            Field(
                False,
                description="Use random-init models of the real architectures (built into cache_dir) instead of "
                "pretrained weights.",
            ),
        ),
    )
    SearchSettings = library_section(SearchConfig)


class SinkSettings(BaseModel):
    db: str = Field(
        "sqlite:///tagstream-suggestions.db",
        description="Product database: postgresql://user:pass@host:5432/db (libpq URL; e.g. "
        "?options=-csearch_path%3Dtagstream picks a schema) or sqlite:///relative.db, sqlite:////absolute.db.",
    )
    group_id: str = Field("", description="Consumer group of the product-DB sink; default: '<app_id>-sink'.")
    max_batch: int = Field(200, description="Most suggestion events the sink writes in one database transaction.")
    dead_letters: str = Field(
        "tag-suggestions.dlq",
        description="Topic for suggestion events the sink cannot decode or store; empty: log and count them only.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAGSTREAM_", env_nested_delimiter="__", extra="ignore")

    broker: str = Field(
        "kafka://127.0.0.1:9092", description="Kafka bootstrap URL(s), e.g. kafka://host:9092;host2:9092."
    )
    app_id: str = Field("tagstream", description="Faust app id: the consumer group of the suggestion workers.")
    max_batch: int = Field(8, description="Micro-batch size: events taken from the stream at once.")
    batches_in_flight: int = Field(
        2, description="Micro-batches a worker holds at once: the next batch is fetched while the model runs this one."
    )
    max_wait_s: float = Field(
        0.05,
        description="Longest wait to fill a micro-batch before processing what arrived (while the model is busy, "
        "batches fill on their own).",
    )
    fetch_wait_s: float = Field(
        0.1,
        description="Longest time the broker may hold a fetch of the worker, sink or replay open waiting for new "
        "events. Kafka answers as soon as data arrives; brokers that always wait it out (Tansu) add up to this "
        "much latency per event.",
    )
    max_sources: int = Field(
        16, description="Most source images one upload event may carry; more dead-letters it (too_many_sources)."
    )
    max_tags: int = Field(
        64, description="Most tags (over all sources) one upload event may carry; more dead-letters it (too_many_tags)."
    )
    pipeline_attempts: int = Field(
        2, description="Attempts for an event whose inference raises before it is dead-lettered."
    )
    session_timeout_s: float = Field(10.0, description="Kafka consumer session timeout.")
    producer_max_request_bytes: int = Field(
        1_000_000,
        gt=0,
        description="Largest record the worker publishes (the broker's message.max.bytes should be at least this). A "
        "suggestion over it becomes a publish_error dead letter; a dead letter over it loses the original bytes.",
    )
    max_event_bytes: int = Field(
        256 * 1024,
        le=512 * 1024,
        description="Largest encoded upload event accepted; larger ones are dead-lettered (event_too_large) with their "
        "first max_event_bytes bytes. At most 512 KiB, so a dead letter always fits Kafka's 1 MB default.",
    )
    max_id_chars: int = Field(
        256, description="Longest event_id, upload_id or product_id accepted (they are echoed into every answer)."
    )
    max_attribute_bytes: int = Field(
        16 * 1024, description="Largest attributes map accepted (keys and values, UTF-8 bytes); echoed into answers."
    )
    model_load_attempts: int = Field(
        3,
        ge=1,
        description="Attempts to load the models before the worker gives up, leaves its group (so its partitions move "
        "to a healthy worker) and exits with status 3.",
    )
    probe_interval_s: float = Field(
        2.0, gt=0, description="How often the worker checks the broker and its consumer lag (for /ready and /metrics)."
    )
    stall_timeout_s: float = Field(
        120.0,
        gt=0,
        description="/ready turns false when events wait but none was taken or answered for this long (a stalled "
        "worker); longer than the slowest micro-batch.",
    )
    web_port: int = Field(6066, description="Port of the worker's web server (HTTP API, health, metrics).")
    web_host: str = Field("127.0.0.1", description="Bind address of the worker's web server.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "tagstream", description="Where offline models and other caches live."
    )
    pipeline_factory: str = Field(
        "",
        description="Optional 'module:function' returning a Pipeline-like object (plugins, fault injection in tests).",
    )
    log_level: str = Field("info", description="Log level of the worker.")
    log_format: LogFormat = Field(
        "text", description="Worker log lines: text (for people) or json (one object per line, for log pipelines)."
    )
    topics: TopicSettings = Field(default_factory=TopicSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)

    @property
    def fetch_wait_ms(self) -> int:
        """``fetch_wait_s`` in the whole milliseconds Kafka clients take (at least 1)."""
        return max(1, round(self.fetch_wait_s * 1000))

    def event_limits(self) -> EventLimits:
        """The limits every upload is checked against, on the stream and on the HTTP API alike."""
        return EventLimits(
            max_sources=self.max_sources,
            max_tags=self.max_tags,
            max_event_bytes=self.max_event_bytes,
            max_id_chars=self.max_id_chars,
            max_attribute_bytes=self.max_attribute_bytes,
        )

    def pipeline_config(self) -> PipelineConfig:
        """The inference library's view of these settings (it never reads the environment).

        With ``models.offline`` the model names are still the configured ones: building the
        random-init stand-ins is the loader's business (``streams.worker.engine``), not I/O
        for a settings object.
        """
        return PipelineConfig(
            models=library_config(ModelConfig, cast(BaseModel, self.models)),
            search=library_config(SearchConfig, cast(BaseModel, self.search)),
        )
