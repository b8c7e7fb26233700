"""Settings shared by every service: where NATS is, how to authenticate to it, and how a bad value
stops the process."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from torua.connect import NatsAuth
from torua.errors import ConfigError
from torua.eventloop import EventLoop

__all__ = [
    "BaseServiceSettings",
    "NatsConnectionSettings",
    "load_settings",
    "nats_auth_from_env",
    "DEFAULT_NATS_URL",
    "NATS_AUTH_VARIABLES",
]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
S = TypeVar("S", bound=BaseSettings)

# The variables NatsConnectionSettings reads (besides NATS_URL), in docs/security.md's order.
NATS_AUTH_VARIABLES = (
    "TORUA_NATS_USER",
    "TORUA_NATS_PASSWORD",
    "TORUA_NATS_PASSWORD_FILE",
    "TORUA_NATS_TOKEN",
    "TORUA_NATS_TOKEN_FILE",
    "TORUA_NATS_NKEY_SEED",
    "TORUA_NATS_CREDS",
    "TORUA_NATS_TLS_CA",
    "TORUA_NATS_TLS_CERT",
    "TORUA_NATS_TLS_KEY",
)


def _readable(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"{value} is not a readable file")
    return value


class NatsConnectionSettings(BaseSettings):
    """NATS credentials and TLS: the one definition every service, the CLI and the client read.

    At most one way to authenticate: user (+ password or password file), token (or token file),
    nkey seed file, or creds file. TLS: a CA to verify the server, a cert and key for mutual TLS.
    File settings hold paths (docker secrets mount as files under /run/secrets).
    """

    model_config = SettingsConfigDict(env_prefix="TORUA_", extra="ignore", frozen=True, populate_by_name=True)

    nats_user: str | None = Field(None, min_length=1)
    nats_password: SecretStr | None = None
    nats_password_file: Path | None = None
    nats_token: SecretStr | None = None
    nats_token_file: Path | None = None
    nats_nkey_seed: Path | None = None
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None

    @field_validator(
        "nats_user", "nats_password", "nats_password_file", "nats_token", "nats_token_file", "nats_nkey_seed",
        "nats_creds", "nats_tls_ca", "nats_tls_cert", "nats_tls_key", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # compose passes unset options as empty strings (`${TORUA_NATS_USER:-}`).
        return None if value == "" else value

    _files = field_validator(
        "nats_password_file", "nats_token_file", "nats_nkey_seed", "nats_creds",
        "nats_tls_ca", "nats_tls_cert", "nats_tls_key",
    )(_readable)

    @model_validator(mode="after")
    def _one_method(self) -> NatsConnectionSettings:
        password = self.nats_password is not None or self.nats_password_file is not None
        token = self.nats_token is not None or self.nats_token_file is not None
        methods = [m for m, on in (("TORUA_NATS_USER", self.nats_user), ("TORUA_NATS_TOKEN", token),
                                   ("TORUA_NATS_NKEY_SEED", self.nats_nkey_seed),
                                   ("TORUA_NATS_CREDS", self.nats_creds)) if on]
        if len(methods) > 1:
            raise ValueError(f"set one way to authenticate to NATS, not {' and '.join(methods)}")
        if password and not self.nats_user:
            raise ValueError("TORUA_NATS_PASSWORD needs TORUA_NATS_USER")
        if self.nats_password is not None and self.nats_password_file is not None:
            raise ValueError("set TORUA_NATS_PASSWORD or TORUA_NATS_PASSWORD_FILE, not both")
        if self.nats_token is not None and self.nats_token_file is not None:
            raise ValueError("set TORUA_NATS_TOKEN or TORUA_NATS_TOKEN_FILE, not both")
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ValueError("TORUA_NATS_TLS_CERT and TORUA_NATS_TLS_KEY go together")
        return self

    @property
    def nats_auth(self) -> NatsAuth:
        """The connection's credentials (password and token files read now)."""
        password = self.nats_password.get_secret_value() if self.nats_password is not None else None
        if self.nats_password_file is not None:
            password = _read_secret(self.nats_password_file, "TORUA_NATS_PASSWORD_FILE")
        token = self.nats_token.get_secret_value() if self.nats_token is not None else None
        if self.nats_token_file is not None:
            token = _read_secret(self.nats_token_file, "TORUA_NATS_TOKEN_FILE")
        return NatsAuth(
            user=self.nats_user, password=password, token=token or None, nkey_seed=self.nats_nkey_seed,
            creds=self.nats_creds, tls_ca=self.nats_tls_ca, tls_cert=self.nats_tls_cert, tls_key=self.nats_tls_key,
        )


def _read_secret(path: Path, variable: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"invalid configuration: {variable}: cannot read {path} ({exc.strerror})") from None


class BaseServiceSettings(NatsConnectionSettings):
    model_config = SettingsConfigDict(env_prefix="TORUA_", extra="ignore", frozen=True, populate_by_name=True)

    # The NATS ecosystem's own variable, so no TORUA_ prefix.
    nats_url: str = Field(DEFAULT_NATS_URL, validation_alias="NATS_URL", min_length=1)
    connect_timeout: float = Field(5.0, gt=0)
    log_level: str = Field("INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$")
    log_json: bool = False
    # uvloop where installed (torua.eventloop); "asyncio" rules the loop out when debugging.
    event_loop: EventLoop = "uvloop"
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
            field = str(err["loc"][0]) if err["loc"] else ""
            value = err.get("input")
            # Secrets are never echoed back.
            secret = "password" in field or "token" in field
            shown = f" (got {value!r})" if isinstance(value, (str, int, float)) and not secret else ""
            name = f"{_env_name(cls, field)}: " if field else ""
            problems.append(f"{name}{err['msg']}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def nats_auth_from_env() -> NatsAuth:
    """NATS credentials and TLS from the TORUA_NATS_* variables (for scripts using the client)."""
    return load_settings(NatsConnectionSettings).nats_auth
