"""``source: zoo, name: mpnet-base``: all-mpnet-base-v2 (MPNet, 12 layers, 768-d, 109 M parameters).

The base-size sentence encoder of the zoo: about five times MiniLM-L6's cost per sample and a
stronger starting point, which ``fit`` tries when the measured cost and the budget afford it. Its
weights come as a zip split over five packages (:mod:`.archive`); the extracted folder is a plain
transformers folder, so this is :class:`~mmagent.encoders.hf.HFTextEncoder` on it. Mean pooling,
as the model was trained.
"""

from __future__ import annotations

from mmagent.encoders.hf import HFTextEncoder
from mmagent.encoders.zoo.archive import archive_folder
from mmagent.encoders.zoo.base import ZooAssets
from mmagent.specs import EncoderSpec

NAME = "mpnet-base"


class ZooMPNetEncoder(ZooAssets, HFTextEncoder):
    """HFTextEncoder on the extracted folder (tokenizer and config always come from there)."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec.model_copy(update={"name": str(archive_folder(NAME))}))
        self.spec = spec  # keep the zoo name in the spec (pooling / freeze / lora are the same)
