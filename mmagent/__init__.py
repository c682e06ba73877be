"""mmagent: turn pretrained encoders into task-specific multimodal agents."""

__version__ = "0.1.0"
