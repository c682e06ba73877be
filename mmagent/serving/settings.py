"""Server settings: one validated object, filled from arguments and ``MMAGENT_*`` environment variables.

Every field can be set from the environment as ``MMAGENT_<FIELD>`` (upper case), e.g.
``MMAGENT_MAX_BATCH_SIZE=16``. API keys come from ``MMAGENT_API_KEYS`` (comma-separated) and/or
``MMAGENT_API_KEY_FILE`` (one key per line, ``#`` comments); they are never written into the
settings JSON that worker processes inherit.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

ENV_PREFIX = "MMAGENT_"
ENV_SETTINGS = "MMAGENT_SERVE_SETTINGS"  # JSON of ServeSettings, handed to uvicorn worker processes
ENV_RUN_DIR = "MMAGENT_SERVE_RUN_DIR"
ENV_API_KEYS = "MMAGENT_API_KEYS"
ENV_API_KEY_FILE = "MMAGENT_API_KEY_FILE"


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = Field("127.0.0.1", description="address to bind; anything but loopback requires an API key")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes (each loads the model)")
    max_batch_size: int = Field(32, ge=1, description="records per model call when micro-batching (1 = off)")
    max_wait_ms: float = Field(5.0, ge=0, description="how long the first request of a batch waits for others")
    max_queue: int = Field(2048, ge=1, description="records waiting for the model before new requests get 503")
    max_records: int = Field(256, ge=1, description="records per request")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="request body limit (413 beyond)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="width x height limit per image (decompression bombs)")
    max_audio_seconds: float = Field(60.0, gt=0, description="duration limit per audio clip")
    max_audio_sample_rate: int = Field(48_000, ge=1, description="sample-rate limit per audio clip (Hz)")
    max_audio_channels: int = Field(2, ge=1, description="channel limit per audio clip")
    # Decoded sizes, known from the headers before anything is decoded: a few KB of solid-colour
    # PNG decode to hundreds of MB, so the body limit alone does not bound memory.
    max_request_pixels: int = Field(50_000_000, ge=1, description="decoded pixels per request, all its images together (413 beyond)")
    max_request_audio_samples: int = Field(20_000_000, ge=1, description="decoded audio samples (frames x channels) per request (413 beyond)")
    max_queue_pixels: int = Field(200_000_000, ge=1, description="decoded pixels held by all requests in progress (503 beyond)")
    max_queue_audio_samples: int = Field(100_000_000, ge=1, description="decoded audio samples held by all requests in progress (503 beyond)")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this many seconds of the request (408 and close beyond)")
    max_text_chars: int = Field(100_000, ge=1, description="characters per text field")
    explain: bool = Field(True, description="/v1/act: per-input contributions (costs one extra forward pass per input)")
    drift_window: int = Field(1000, ge=0, description="recent records the drift watch scores on /metrics (0 = off; needs the run's drift_profile.json)")
    device: str = Field("cpu", description="torch device for the model: cpu, cuda, cuda:N or auto (cuda when available)")
    backend: Literal["torch", "onnx"] = Field("torch", description="what runs the model: torch, or onnx (its ONNX export in ONNX Runtime, CPU)")
    torch_threads: int | None = Field(
        None, ge=1, description="model intra-op threads (default: usable cores per worker minus one for the event loop; see serving/threads.py)"
    )
    watch_s: float = Field(5.0, ge=0, description="seconds between checks for a new model version (live swap); 0 turns watching off")
    registry: str | None = Field(None, description="serve the version a registry alias points at (with `alias`) instead of a run folder")
    alias: str = Field("production", description="the registry alias to serve")
    api_key_file: Path | None = Field(None, description="file with one API key per line")
    api_keys: list[SecretStr] = Field(default_factory=list, exclude=True, description="accepted API keys (not serialized)")
    log_level: str = Field("info")
    access_log: bool = True

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError(f"unknown log level {v!r}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", v):
            raise ValueError(f"unknown device {v!r}; use cpu, cuda, cuda:N or auto")
        return v

    @model_validator(mode="after")
    def _backend_device(self) -> ServeSettings:
        if self.backend == "onnx" and self.device.startswith("cuda"):
            raise ValueError(f"backend onnx runs on the CPU (onnxruntime's CPU provider); use device cpu or auto, not {self.device}")
        return self

    def torch_device(self) -> str:
        """The device to load the model on: ``auto`` is cuda when torch sees a GPU, else cpu (always
        cpu for the onnx backend)."""
        if self.backend == "onnx":
            return "cpu"
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    # -- keys ---------------------------------------------------------------------------------
    def load_keys(self) -> list[str]:
        """Keys from ``api_keys``, ``MMAGENT_API_KEYS`` and the key file (deduplicated, non-empty)."""
        keys = [k.get_secret_value() for k in self.api_keys]
        keys += [k.strip() for k in os.environ.get(ENV_API_KEYS, "").split(",")]
        key_file = self.api_key_file or (Path(os.environ[ENV_API_KEY_FILE]) if os.environ.get(ENV_API_KEY_FILE) else None)
        if key_file is not None:
            keys += read_key_file(key_file)
        seen: list[str] = []
        for k in keys:
            if k and k not in seen:
                seen.append(k)
        return seen

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    # -- environment --------------------------------------------------------------------------
    @classmethod
    def from_env(cls, **overrides: Any) -> ServeSettings:
        """Settings JSON handed down by ``mmagent serve`` (if any), then ``MMAGENT_<FIELD>``
        variables, then ``overrides`` (those that are not None)."""
        raw: dict[str, Any] = {}
        if os.environ.get(ENV_SETTINGS):
            import json

            raw.update(json.loads(os.environ[ENV_SETTINGS]))
        for name in cls.model_fields:
            if name in ("api_keys",):
                continue
            value = os.environ.get(ENV_PREFIX + name.upper())
            if value is not None and name not in raw:
                raw[name] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
            raise ValueError(f"invalid server settings: {problems}") from None


def read_key_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"API key file not found: {path}")
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(line)
    if not keys:
        raise ValueError(f"API key file {path} holds no key")
    return keys


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; an empty host or 0.0.0.0 / :: binds everything."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address
