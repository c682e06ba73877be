"""Encoders: one interface for text, image, audio and numeric inputs; built by ``build_encoder(spec)``.

Importing this package registers the built-in sources. Third-party sources register through the
``mmagent.encoders`` entry-point group (see README, "Adding an encoder").
"""

from mmagent.encoders import builtin, hf, timm_encoders, torchaudio_encoders, torchvision_encoders, zoo  # noqa: F401  (registration side effects)
from mmagent.encoders.base import (
    Encoder,
    EncoderError,
    EncoderOutput,
    Preprocessor,
    available_sources,
    build_encoder,
    register_source,
)

__all__ = [
    "Encoder",
    "EncoderError",
    "EncoderOutput",
    "Preprocessor",
    "available_sources",
    "build_encoder",
    "register_source",
]
