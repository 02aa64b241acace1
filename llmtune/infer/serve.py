"""`llmtune serve`: an OpenAI-compatible chat-completions server for a model, a run directory or an adapter.

The server is transformers' own (`transformers serve`: FastAPI + uvicorn, /v1/chat/completions streaming and not,
/v1/completions); this module is only the glue. Its model manager loads models by Hub id on demand, so instead we
hand it the model we loaded (adapter merged, stop ids set from the chat template) under one name and pin the server
to it: a request for any other model gets HTTP 400 naming the served one. Its /v1/models lists the HF cache and
its /reset and /load_model would unload or fetch models, so those routes are replaced by one that lists ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune import console
from llmtune.errors import UserError, require_module
from llmtune.infer.load import Loaded, load_for_inference, quiet_loading

REPLACED_ROUTES = ("/v1/models", "/reset", "/load_model")


def check_serve_packages() -> None:
    for name in ("fastapi", "uvicorn", "openai"):
        require_module(name, "llmtune serve")


def served_model(loaded: Loaded) -> Any:
    """The model the server runs: an adapter merged into its base, stopping at the template's end of turn."""
    from llmtune.infer.generate import set_stop_ids

    if loaded.head != "causal_lm":
        raise UserError(f"llmtune serve: {loaded.label} is a classifier; serve answers chat, use `llmtune predict`")
    model = loaded.model.merge_and_unload() if loaded.adapter is not None else loaded.model
    set_stop_ids(model, loaded.tokenizer)
    return model.eval()


def build_app(model: Any, tokenizer: Any, name: str) -> Any:
    """transformers' serving app with `model` preloaded as `name` and the server pinned to it."""
    from fastapi.responses import JSONResponse
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager, TimedModel
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    manager = ModelManager(device=str(model.device), model_timeout=-1)
    manager.force_model = name
    key = manager.process_model_name(name)
    manager.loaded_models[key] = TimedModel(model, timeout_seconds=-1, processor=tokenizer)
    state = GenerationState()
    app = build_server(
        manager,
        ChatCompletionHandler(model_manager=manager, generation_state=state, chat_template_kwargs={}),
        completion_handler=CompletionHandler(model_manager=manager, generation_state=state),
        response_handler=ResponseHandler(model_manager=manager, generation_state=state, chat_template_kwargs={}),
        transcription_handler=TranscriptionHandler(manager, state),
        systemone_handler=SystemOneHandler(model_manager=manager, generation_state=state, chat_template_kwargs={}),
        generation_state=state,
    )
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in REPLACED_ROUTES]

    @app.get("/v1/models")
    def list_models() -> Any:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "llmtune"}]})

    @app.middleware("http")
    async def known_model_only(request: Any, call_next: Any) -> Any:
        """A request naming another model gets OpenAI's own answer: 404 model_not_found, with the served name."""
        import json

        if request.method == "POST" and request.url.path.startswith("/v1/"):
            try:
                asked = json.loads(await request.body() or b"{}").get("model")
            except (ValueError, AttributeError):
                asked = None
            if asked is not None and asked != name:
                message = f"model {asked!r} is not served here; this server serves {name!r}"
                error = {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
                return JSONResponse({"error": error}, status_code=404)
        return await call_next(request)

    return app


def serve(
    model: str | None,
    adapter: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    dtype: str = "auto",
    endpoint: str | None = None,
) -> None:
    """Load, merge and serve until interrupted."""
    check_serve_packages()
    import uvicorn

    loaded = load_for_inference(model, adapter, dtype=dtype, endpoint=endpoint)
    name = name or Path(loaded.label).name
    with quiet_loading():
        app = build_app(served_model(loaded), loaded.tokenizer, name)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.warn(f"serving on {host}: anyone who can reach this address can use the model (no authentication)")
    console.info(f"serving {name!r} at http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)", markup=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")
