"""Serving an :class:`~mmagent.agent.Agent` over HTTP (FastAPI + uvicorn), with dynamic
micro-batching, API keys, input limits and redacted logs.

    from mmagent.serving import ServeSettings, create_app
    app = create_app("runs/cs", ServeSettings(max_batch_size=32))

or from the shell: ``mmagent serve runs/cs --port 8000``.
"""

from mmagent.serving.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):  # keep `import mmagent.serving` light (no FastAPI / torch until used)
    if name == "create_app":
        from mmagent.serving.app import create_app

        return create_app
    raise AttributeError(name)
