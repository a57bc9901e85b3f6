"""The OpenAI-compatible HTTP server (FastAPI): routes, streaming, errors, and the engine's thread.

How a request flows (docs/architecture.md has the picture):
1. The route checks the API key, the body size and the JSON, renders chat messages with the model's
   template, tokenizes, and validates the settings (`serving.protocol`); any problem is a 4xx in OpenAI's
   error shape and nothing reaches the engine.
2. It submits one engine `Request` per choice (n) with a listener that forwards each new token from the
   engine's thread into this request's asyncio queue (`call_soon_threadsafe`).
3. The engine's thread (`EngineWorker`) loops over `Engine.step()`: new requests are prefilled between
   decode steps and join the running batch (continuous batching).
4. The route turns queue items into Server-Sent Events (stream) or one JSON reply. A client that goes
   away cancels its requests, which leave the batch at the next step.
An exception inside a step ends the requests in flight with an error (an event, if streaming) and the
server keeps serving. On SIGTERM or Ctrl-C (`serve`) new requests get 503, those in flight may finish for
up to `graceful_seconds`, then what is left ends with an error event, and the process exits.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import traceback
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchllm.errors import ScratchLLMError
from scratchllm.generation.engine import Engine, EngineBusy, Request
from scratchllm.generation.stream import end_of_text_ids
from scratchllm.serving import protocol
from scratchllm.serving.protocol import ApiError


class EngineWorker:
    """Runs `engine.step()` in one background thread while there is work; the HTTP side only submits."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.accepting = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scratchllm-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.engine.wait_for_work(0.05)
            if self.engine.idle:
                continue
            try:
                self.engine.step()
            except Exception as e:  # a failed step must not take the server down
                traceback.print_exc()
                self.engine.fail_all(f"generation failed: {type(e).__name__}: {e}")

    def drain(self, seconds: float) -> None:
        """Refuse new requests (503) and give those in flight up to `seconds` to finish; end the rest with an
        error (streams get an error event and [DONE]), so no client is left hanging on a closed socket."""
        self.accepting = False
        deadline = time.monotonic() + seconds
        while not self.engine.idle and time.monotonic() < deadline:
            time.sleep(0.02)
        self.engine.fail_all("the server is shutting down")

    def stop(self) -> None:
        self.accepting = False
        self._stop.set()
        self._thread.join(timeout=30)
        self.engine.fail_all("the server is shutting down")


def serve(app: FastAPI, host: str, port: int, graceful_seconds: float) -> None:
    """Run `app` on uvicorn until SIGINT/SIGTERM; the first signal drains (see `EngineWorker.drain`), a second
    one exits at once."""
    import uvicorn

    class Server(uvicorn.Server):
        draining = False

        def handle_exit(self, sig, frame) -> None:
            if self.draining:
                return super().handle_exit(sig, frame)
            self.draining = True
            threading.Thread(target=self._drain, daemon=True).start()

        def _drain(self) -> None:
            app.state.worker.drain(graceful_seconds)
            self.should_exit = True

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)).run()


class Settings:
    """What the server was started with (`scratchllm serve` flags). `bind_host` is the address it listens on:
    a keyless server on a loopback address answers only requests addressed to a loopback name."""

    def __init__(self, model_name: str, template=None, api_key: str | None = None, max_request_bytes: int = 1 << 20,
                 max_tokens: int = 4096, bind_host: str | None = None):  # fmt: skip
        self.model_name, self.template, self.api_key = model_name, template, api_key
        self.max_request_bytes, self.max_tokens = max_request_bytes, max_tokens
        self.local_only = bind_host in LOOPBACK


# Names a request to a server on this machine's loopback address can carry in its Host header.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def prefix_report(stats) -> dict:
    """The prefix cache's use: requests that started from it, and the share of prompt positions it served."""
    rate = stats.prefix_tokens / stats.prompt_tokens if stats.prompt_tokens else 0.0
    return {"hits": stats.prefix_hits, "reused_tokens": stats.prefix_tokens, "prompt_tokens": stats.prompt_tokens,
            "hit_rate": round(rate, 4)}


def _host_name(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1'; '[::1]:8000' -> '::1'."""
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    """The FastAPI application serving `engine` (which must have a tokenizer)."""
    if engine.tokenizer is None:
        raise ScratchLLMError("serving needs a tokenizer: pass --tokenizer")
    worker = EngineWorker(engine)
    tokenizer = engine.tokenizer
    stop_ids = end_of_text_ids(tokenizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="scratchllm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: HttpRequest, exc: StarletteHTTPException):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    def check_key(http: HttpRequest) -> None:
        if settings.api_key is not None:
            if http.headers.get("authorization", "") != f"Bearer {settings.api_key}":
                raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                               code="invalid_api_key")  # fmt: skip
            return
        # Without a key, a web page the user visits must not be able to use the server: a page from another
        # origin (its fetch carries that Origin), or one reached through a name rebound to 127.0.0.1 (DNS
        # rebinding: the Host header names the attacker's domain).
        host, origin = http.headers.get("host", ""), http.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != host:
            raise ApiError(403, f"requests from the web page origin {origin} are refused by a server without "
                           "--api-key; start it with --api-key to allow them", code="origin_not_allowed")  # fmt: skip
        if settings.local_only and _host_name(host) not in LOOPBACK:
            raise ApiError(403, f"Host {host!r} is refused: this server listens on a loopback address without "
                           "--api-key, so it answers only 127.0.0.1, localhost and [::1]", code="host_not_allowed")

    async def read_body(http: HttpRequest) -> dict:
        check_key(http)
        declared = http.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_request_bytes:
            raise ApiError(413, f"request body over {settings.max_request_bytes} bytes")
        # Read the body as it arrives and stop at the limit: a chunked upload with no Content-Length is never
        # buffered beyond max_request_bytes.
        chunks, size = [], 0
        async for chunk in http.stream():
            size += len(chunk)
            if size > settings.max_request_bytes:
                raise ApiError(413, f"request body over {settings.max_request_bytes} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        except RecursionError:
            raise ApiError(400, "the request body is JSON nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != settings.model_name:
            raise ApiError(404, f"the model '{model}' does not exist; this server has '{settings.model_name}'",
                           "model", "model_not_found")  # fmt: skip
        return body

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, allowed_special="all")

    @app.get("/health")
    async def health():
        return {"status": "ok" if worker.accepting else "stopping", "running": len(engine.active),
                "waiting": len(engine._waiting), "forked_prefills": engine.stats.forked_prefills,
                "prefill": {"forwards": engine.stats.prefill_forwards,
                            "largest_batch": engine.stats.largest_prefill_batch, "budget": engine.prefill_budget},
                "prefix_cache": prefix_report(engine.stats)}  # fmt: skip

    card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "scratchllm",
            "max_model_len": engine.max_seq_len}  # fmt: skip

    @app.get("/v1/models")
    async def models(http: HttpRequest):
        check_key(http)
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, http: HttpRequest):  # the client's models.retrieve
        check_key(http)
        if model_id != settings.model_name:
            raise ApiError(404, f"the model '{model_id}' does not exist; this server has '{settings.model_name}'",
                           "model", "model_not_found")  # fmt: skip
        return card

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files("scratchllm.serving").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.post("/v1/completions")
    async def completions(http: HttpRequest):
        body = await read_body(http)
        vocab = engine.model.config.vocab_size
        prompts = protocol.prompt_list(body.get("prompt"))
        ids = [encode(p) if isinstance(p, str) else p for p in prompts]
        for i, p in enumerate(ids):
            if min(p) < 0 or max(p) >= vocab:
                raise ApiError(400, f"prompt {i}: token ids must be in [0, {vocab})", "prompt")
        parts = [protocol.parse_settings(body, p, chat=False, max_seq_len=engine.max_seq_len,
                                         max_tokens_limit=settings.max_tokens, stop_ids=stop_ids)
                 for p in ids]  # fmt: skip
        parsed = protocol.merge(parts)
        return await respond(http, parsed, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest):
        body = await read_body(http)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list", "messages")
        turns = [dict(zip(("role", "content"), protocol.message_text(m, i))) for i, m in enumerate(messages)]
        if settings.template is None:
            raise ApiError(400, "this model has no chat template, so chat requests cannot be rendered; use "
                                "/v1/completions, or start the server with --template", "messages",
                           "no_chat_template")  # fmt: skip
        ids = encode(settings.template.render(turns, protocol.thinking(body)))
        parsed = protocol.parse_settings(body, ids, chat=True, max_seq_len=engine.max_seq_len,
                                         max_tokens_limit=settings.max_tokens, stop_ids=stop_ids,
                                         extra_stops=settings.template.stop_strings)  # fmt: skip
        return await respond(http, parsed, chat=True)

    async def respond(http: HttpRequest, parsed: protocol.Parsed, chat: bool):
        if not worker.accepting:
            raise ApiError(503, "the server is shutting down")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        def listener(index: int):  # each choice's tokens reach the reply's queue tagged with its index
            return lambda r, out: loop.call_soon_threadsafe(queue.put_nowait, (index, r, out))

        items = [(parsed.prompts[i], cfg, listener(i)) for i, cfg in enumerate(parsed.configs)]
        if parsed.configs[0].json_schema is not None:  # a schema the grammar engine refuses is the client's error
            try:
                engine.json_matcher(parsed.configs[0].json_schema)
            except ScratchLLMError as e:
                raise ApiError(400, str(e), "response_format") from None
        try:
            requests: list[Request] = engine.submit_all(items)  # all choices or none: nothing to cancel
        except EngineBusy as e:
            raise ApiError(429, f"{e}; retry later") from None
        except ScratchLLMError as e:
            raise ApiError(400, str(e), "prompt") from None
        reply_id = protocol.new_id("chatcmpl" if chat else "cmpl")
        if parsed.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream(queue, requests, parsed, chat, reply_id), media_type="text/event-stream",
                                     headers=headers)  # fmt: skip
        return await complete(http, queue, requests, parsed, chat, reply_id)

    async def complete(http, queue, requests, parsed, chat, reply_id):
        try:
            while not all(r.done for r in requests):
                try:
                    await asyncio.wait_for(queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        return JSONResponse({}, status_code=499)
        finally:
            for r in requests:
                if not r.done:
                    engine.cancel(r)
        failed = next((r for r in requests if r.finish_reason == "error"), None)
        if failed is not None:
            return JSONResponse(ApiError(503, failed.error or "generation failed").body(), status_code=503)
        choices = []
        for index, r in enumerate(requests):
            choice = {"index": index, "logprobs": None, "finish_reason": protocol.finish_reason(r)}
            echoed = tokenizer.decode(parsed.prompts[index]) if parsed.echo else ""
            if parsed.logprobs is not None:
                outs = r.prompt_logprobs + r.logprobs if parsed.echo else r.logprobs
                choice["logprobs"] = (protocol.chat_logprobs(tokenizer, outs) if chat
                                      else protocol.completion_logprobs(tokenizer, outs))  # fmt: skip
            if chat:
                choice["message"] = {"role": "assistant", "content": r.text}
            else:
                choice["text"] = echoed + r.text
            choices.append(choice)
        kind = "chat.completion" if chat else "text_completion"
        reply = protocol.envelope(kind, reply_id, settings.model_name, choices)
        reply["usage"] = protocol.usage(parsed.prompt_tokens, requests)
        return reply

    async def stream(queue, requests, parsed, chat, reply_id):
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def event(choices: list[dict], **extra) -> str:
            chunk = protocol.envelope(kind, reply_id, settings.model_name, choices, created)
            if parsed.include_usage:
                chunk["usage"] = None
            chunk.update(extra)
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        def choice(index: int, text: str | None, finish: str | None, logprobs=None, role: bool = False) -> dict:
            c = {"index": index, "logprobs": logprobs, "finish_reason": finish}
            if chat:
                c["delta"] = ({"role": "assistant", "content": ""} if role else {}) | (
                    {"content": text} if text else {})
            else:
                c["text"] = text or ""
            return c

        try:
            if chat:
                for index in range(len(requests)):
                    yield event([choice(index, None, None, role=True)])
            pending = len(requests)
            offsets = [0] * len(requests)
            # Each chunk carries the logprobs of the tokens whose text it carries: a token whose text is held
            # back (a possible stop string's beginning) sends its logprobs with the text when it is released.
            held: list[list] = [[] for _ in requests]

            def logprobs_of(index: int):
                outs, held[index] = held[index], []
                if parsed.logprobs is None or not outs:
                    return None
                return (protocol.chat_logprobs(tokenizer, outs) if chat
                        else protocol.completion_logprobs(tokenizer, outs, offsets[index]))  # fmt: skip

            while pending:
                index, r, out = await queue.get()
                if out is None:
                    pending -= 1
                    if r.finish_reason == "error":
                        yield f"data: {json.dumps(ApiError(503, r.error or 'generation failed').body())}\n\n"
                        break
                    if r.finish_reason == "cancelled":
                        break
                    if held[index]:  # tokens with no text of their own (an end-of-text id, a stop string)
                        yield event([choice(index, None, None, logprobs_of(index))])
                    yield event([choice(index, None, protocol.finish_reason(r))])
                    continue
                if parsed.logprobs is not None and out.token >= 0:
                    held[index].append(out)
                if out.text:
                    yield event([choice(index, out.text, None, logprobs_of(index))])
                    offsets[index] += len(out.text)
            else:
                if parsed.include_usage:
                    yield event([], usage=protocol.usage(parsed.prompt_tokens, requests))
            yield "data: [DONE]\n\n"
        finally:
            for r in requests:
                if not r.done:
                    engine.cancel(r)

    return app
