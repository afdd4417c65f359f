"""`tasc-edge serve`: the accelerated model over a small OpenAI-compatible HTTP API (Starlette +
uvicorn), for other programs on the device.

  POST /v1/completions       {"prompt", "max_tokens", "temperature", "top_p", "top_k", "seed",
                              "stop", "stream"}: raw text continuation
  POST /v1/chat/completions  {"messages": [{"role", "content"}], ...}: the model's chat template
  GET  /v1/models, /health

One model, one KV cache: requests are served one at a time behind a lock, in arrival order;
at most `queue` wait (more get 503), so concurrent clients queue instead of corrupting the
cache. Bodies are bounded (`max_body` bytes, 413) and so is max_tokens (`max_tokens_cap`);
a prompt longer than the context is a 400 naming the limit. Binds 127.0.0.1 unless told
otherwise. Greedy output is exactly the model's (TASC-spec drafts are verified); sampling
follows the model's distribution. Each response carries the speculative stats under "tasc".
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

from tasc_edge.decode import DEFAULT_MAX_DRAFT, GenerateConfig, generate
from tasc_edge.drafters import make_drafter
from tasc_edge.errors import TascError, require
from tasc_edge.verify import SamplingConfig


@dataclass
class ServeConfig:
    bundle: str | None = None  # exported bundle (model + task tables)
    model: str | None = None  # or a GGUF (default: packaged SmolLM2)
    quant: str = "q4_0"
    task: str | None = None  # table: this bundle task, or a task folder (reference outputs)
    method: str = "tasc-spec"  # tasc-spec | pld | plain
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 4096
    threads: int | None = None
    max_body: int = 256 * 1024
    max_tokens_cap: int = 1024
    default_max_tokens: int = 128
    queue: int = 16  # requests waiting for the model; more are refused with 503
    onnx_spin: bool = False  # onnxruntime workers busy-wait (quiet device); off = shared cores
    prefix_cache_mb: float = 128  # recent prompts' KV: requests of one task share their template


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Engine:
    """The loaded model, its drafter and the lock that serialises generations."""

    def __init__(self, cfg: ServeConfig):
        from tasc_edge.prefix_cache import PrefixCache
        from tasc_edge.runtime.bundle import load_table, open_target
        from tasc_edge.runtime.run import reference_table
        from tasc_edge.tasks import load_task

        self.cfg = cfg
        self.backend, self.model_path, bundle = open_target(cfg.model, cfg.quant, cfg.n_ctx, cfg.threads, cfg.bundle,
                                                            cfg.onnx_spin)
        if cfg.prefix_cache_mb > 0:
            self.backend.prefix_cache = PrefixCache.of_megabytes(cfg.prefix_cache_mb)
        table = None
        if cfg.method == "tasc-spec":
            if bundle is not None and (cfg.task in bundle.tasks or (cfg.task is None and bundle.tasks)):
                table = load_table(bundle, cfg.task or bundle.tasks[0], self.backend.tokenizer_hash)
            elif cfg.task:
                table = reference_table(self.backend, load_task(cfg.task))
            else:
                raise TascError("--method tasc-spec needs a task table: --bundle with tables or --task")
        self.method, self.table = cfg.method, table
        self.lock = threading.Lock()
        self.waiting = 0
        self.count_lock = threading.Lock()
        self.served = 0

    def close(self) -> None:
        self.backend.close()

    def admit(self) -> None:
        with self.count_lock:
            if self.waiting >= self.cfg.queue:
                raise HttpError(503, f"busy: {self.waiting} requests already waiting (--queue {self.cfg.queue})")
            self.waiting += 1

    def run(self, prompt: list[int], params: dict, on_text) -> dict:
        """Generate under the lock; on_text(delta) streams text as tokens commit."""
        try:
            with self.lock:
                with self.count_lock:
                    self.waiting -= 1
                return self._generate(prompt, params, on_text)
        finally:
            with self.count_lock:
                self.served += 1

    def _generate(self, prompt: list[int], params: dict, on_text) -> dict:
        b = self.backend
        if len(prompt) >= b.n_ctx:
            raise HttpError(400, f"prompt is {len(prompt)} tokens; the context holds {b.n_ctx}")
        temperature = float(params.get("temperature") or 0.0)
        sampling = SamplingConfig(temperature, int(params.get("top_k") or 0), float(params.get("top_p") or 1.0))
        seed = params.get("seed")
        rng = np.random.default_rng(seed) if temperature > 0 else None
        stops = params.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        tokens: list[int] = []
        sent = [0]
        stopped = [False]

        def on_tokens(new: list[int]) -> bool:
            tokens.extend(new)
            text = b.detokenize(tokens)
            cut = first_stop(text, stops)
            if cut >= 0:
                text, stopped[0] = text[:cut], True
            elif text.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
                return False
            if len(text) > sent[0]:
                on_text(text[sent[0]:])
                sent[0] = len(text)
            return stopped[0]

        drafter = make_drafter(self.method, self.table) if self.method != "plain" else None
        gen = generate(b, prompt, drafter, GenerateConfig(params["max_tokens"], DEFAULT_MAX_DRAFT, sampling, b.stop_tokens),
                       None, rng, on_tokens)
        text = b.detokenize(gen.tokens)
        if stopped[0]:
            text = text[:first_stop(text, stops)]
        s = gen.stats
        return {"text": text, "finish_reason": "stop" if gen.finish_reason == "stop" else "length",
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(gen.tokens),
                          "total_tokens": len(prompt) + len(gen.tokens),
                          "cached_prompt_tokens": b.reused_tokens},
                "tasc": {"method": self.method, "tau": s.tau, "drafted": s.drafted, "accepted": s.accepted,
                         "seconds": s.total_s}}


def first_stop(text: str, stops: list[str]) -> int:
    """Where the earliest stop string starts in `text`, -1 if none does."""
    return min((i for s in stops if (i := text.find(s)) >= 0), default=-1)


def parse_request(body: bytes, cfg: ServeConfig, chat: bool) -> dict:
    if len(body) > cfg.max_body:
        raise HttpError(413, f"request body is {len(body)} bytes; the limit is {cfg.max_body} (--max-body)")
    try:
        req = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HttpError(400, f"request body is not UTF-8 JSON: {e}") from e
    if not isinstance(req, dict):
        raise HttpError(400, "request body must be a JSON object")
    if chat:
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
                for m in msgs):
            raise HttpError(400, "messages must be a non-empty list of {role, content} objects")
    elif not isinstance(req.get("prompt"), str) or not req["prompt"]:
        raise HttpError(400, "prompt must be a non-empty string")
    n = req.get("max_tokens", min(cfg.default_max_tokens, cfg.max_tokens_cap))
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= cfg.max_tokens_cap:
        raise HttpError(400, f"max_tokens must be an integer in 1..{cfg.max_tokens_cap}")
    t = req.get("temperature", 0.0)
    if not isinstance(t, (int, float)) or t < 0 or t > 5:
        raise HttpError(400, "temperature must be a number in 0..5")
    return {**req, "max_tokens": n}


def build_app(engine: Engine):
    require("starlette", "serve")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    name = engine.model_path.name

    def error(e: HttpError) -> JSONResponse:
        return JSONResponse({"error": {"message": str(e), "type": "invalid_request_error"
                                       if e.status < 500 else "server_busy"}}, status_code=e.status)

    async def read_body(request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > engine.cfg.max_body:
            raise HttpError(413, f"request body is {declared} bytes; the limit is {engine.cfg.max_body}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > engine.cfg.max_body:
                raise HttpError(413, f"request body exceeds {engine.cfg.max_body} bytes")
        return body

    async def completion(request, chat: bool):
        try:
            req = parse_request(await read_body(request), engine.cfg, chat)
            b = engine.backend
            prompt = b.chat_messages(req["messages"]) if chat else b.tokenize(req["prompt"], special=False)
            if not prompt:
                raise HttpError(400, "the prompt tokenizes to nothing")
            engine.admit()
        except HttpError as e:
            return error(e)
        rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}", int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def choice(text: str | None, finish: str | None, delta: bool) -> dict:
            if not chat:
                return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            key = "delta" if delta else "message"
            body = {"content": text} if delta and text is not None else {} if delta else {
                "role": "assistant", "content": text}
            return {"index": 0, key: body, "finish_reason": finish}

        if not req.get("stream"):
            try:
                out = await run_in_threadpool(engine.run, prompt, req, lambda _: None)
            except HttpError as e:
                return error(e)
            return JSONResponse({"id": rid, "object": kind, "created": created, "model": name,
                                 "choices": [choice(out["text"], out["finish_reason"], False)],
                                 "usage": out["usage"], "tasc": out["tasc"]})

        chunks: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                out = engine.run(prompt, req, lambda d: chunks.put(("text", d)))
                chunks.put(("done", out))
            except HttpError as e:
                chunks.put(("error", str(e)))

        threading.Thread(target=work, daemon=True).start()
        chunk_kind = kind + ".chunk" if chat else kind

        def events():
            while True:
                what, value = chunks.get()
                if what == "text":
                    c = choice(value, None, True)
                elif what == "done":
                    c = choice(None if chat else "", value["finish_reason"], True)
                else:
                    yield f"data: {json.dumps({'error': {'message': value}})}\n\n"
                    break
                yield f"data: {json.dumps({'id': rid, 'object': chunk_kind, 'created': created, 'model': name, 'choices': [c]})}\n\n"
                if what == "done":
                    break
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def completions(request):
        return await completion(request, chat=False)

    async def chat_completions(request):
        return await completion(request, chat=True)

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "local"}]})

    async def health(request):
        cache = engine.backend.prefix_cache
        return JSONResponse({"status": "ok", "waiting": engine.waiting, "served": engine.served,
                             "prefix_cache": cache.stats() if cache is not None else None})

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                             Route("/v1/models", models), Route("/health", health)])


def serve(cfg: ServeConfig, log=print) -> None:
    uvicorn = require("uvicorn", "serve")
    engine = Engine(cfg)
    try:
        log(f"serving {engine.model_path.name} ({cfg.method}) on http://{cfg.host}:{cfg.port}/v1")
        uvicorn.run(build_app(engine), host=cfg.host, port=cfg.port, log_level="warning")
    finally:
        engine.close()
