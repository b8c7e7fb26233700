"""Settings shared by every service: where NATS is, and how a bad value stops the process."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from torua.errors import ConfigError

__all__ = ["BaseServiceSettings", "load_settings", "DEFAULT_NATS_URL"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
S = TypeVar("S", bound=BaseSettings)


class BaseServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TORUA_", extra="ignore", frozen=True, populate_by_name=True)

    # The NATS ecosystem's own variable, so no TORUA_ prefix.
    nats_url: str = Field(DEFAULT_NATS_URL, validation_alias="NATS_URL", min_length=1)
    connect_timeout: float = Field(5.0, gt=0)
    log_level: str = Field("INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$")
    log_json: bool = False
    # Prometheus text on http://<host>:<port>/metrics; unset: no HTTP server.
    metrics_port: int | None = Field(None, ge=0, le=65535)


def _env_name(cls: type[BaseSettings], field: str) -> str:
    info = cls.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, str):
        return alias
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Read settings from the environment; a wrong value raises ConfigError naming the variable.

    Call it once, at a process's (or a command's) start, and pass the result down: nothing below
    the entry point reads the environment again.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            value = err.get("input")
            shown = f" (got {value!r})" if isinstance(value, (str, int, float)) else ""
            problems.append(f"{_env_name(cls, field)}: {err['msg']}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
