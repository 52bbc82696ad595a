"""The REST API: ``polymodal serve --model M [--index IDX]`` (FastAPI + uvicorn, OpenAPI at /openapi.json).

    from polymodal.api import load_model
    from polymodal.serve import ServeSettings, create_app

    model, proc = load_model("runs/world_retrieval")
    app = create_app(model, proc, index=None, settings=ServeSettings(api_key="s3cret"))

Every endpoint lives under ``/v1``; images arrive as multipart uploads, everything else as form fields
(``/v1/chat`` takes a JSON body with base64 images).
Requests for the same operation are micro-batched (:mod:`polymodal.serve.batcher`), every input is
checked before it reaches the model (:mod:`polymodal.serve.guards`), and every error is a JSON body
``{"error": {"code": ..., "message": ...}}`` (:mod:`polymodal.serve.errors`).
"""

from polymodal.serve.app import create_app
from polymodal.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
