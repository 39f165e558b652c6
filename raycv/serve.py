"""The one Ray Serve application for every task's model.

    raycv classify serve --checkpoint runs/classify/train/checkpoint_...       # from the CLI
    serve run cluster/serve_config.yaml                                       # from a Serve config file

Endpoints (FastAPI; OpenAPI docs at /docs):
    POST /v1/{task}/predict   an image as the raw body (image/png, image/jpeg, ...), as multipart form
                              field `image`, or JSON {"images": [base64, ...]}; answers JSON
    POST /v1/{task}/{route}   a task's own route (Task.routes, e.g. /v1/segment/danmu?text=hi): one
                              image sent as for predict, options as query parameters; answers JSON,
                              or an image/png when the route returns PNG bytes
    POST /v1/{task}/{route}   a route on the task's serve state (Task.state_routes, e.g.
                              /v1/search/index?id=alice): images as for predict, options as query
                              parameters; the state lives in one RouteState replica and persists
                              under ServeOptions.state_dir
    GET  /v1/models           what is served: task, checkpoint, classes, input size, routes
    GET  /healthz

Requests are decoded and validated in the ingress handler, so bad input is answered with a 4xx and
never reaches the model; good images from all concurrent requests meet in one `@serve.batch` queue.
The model code is the task's own `preprocess` / `postprocess` around the network.
"""
# No `from __future__ import annotations` here: FastAPI must see real types on the Serve-wrapped
# handlers (a string "Request" annotation turns the request into a required query parameter).


import asyncio
import base64
import binascii
import json
import os
import threading
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from raycv.data.images import ImageTooLarge, decode_image
from raycv.config import ServeOptions
from raycv.errors import RaycvError

RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/bmp", "image/tiff")


def error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


api = FastAPI(title="raycv", description="Classic computer-vision models served with Ray Serve.")


@serve.deployment
class RouteState:
    """The state of a task's state routes (search: the gallery index), in one replica: every model
    replica talks to the same state, and changes apply one at a time."""

    def __init__(self, checkpoint_path: str, folder: str):
        from raycv.checkpoint import local_copy, read_meta
        from raycv.tasks import get_task

        with local_copy(checkpoint_path) as checkpoint_folder:
            checkpoint_meta = read_meta(checkpoint_folder)
        task = get_task(checkpoint_meta["task"])
        self.routes = task.state_routes
        self.state = task.open_route_state(folder, checkpoint_meta)
        self.lock = threading.Lock()

    def respond(self, route: str, answers: list[Any], options: dict[str, Any]) -> dict[str, Any]:
        """{"result": JSON} or {"error": message}: a RaycvError crosses back as data, not as a
        Ray exception the ingress would have to unwrap."""
        with self.lock:
            try:
                return {"result": self.routes[route].respond(self.state, answers, **options)}
            except RaycvError as problem:
                return {"error": str(problem)}


@serve.deployment
@serve.ingress(api)
class ModelServer:
    def __init__(self, options: dict[str, Any], route_state: Any = None):
        from raycv.checkpoint import load_model

        self.route_state = route_state  # a handle on the RouteState deployment, if the task has one
        self.options = ServeOptions(**options)
        device = torch.device("cuda" if self.options.gpu > 0 and torch.cuda.is_available() else "cpu")
        if device.type == "cpu":
            torch.set_num_threads(max(1, int(self.options.cpus_per_replica)))
        self.loaded = load_model(self.options.checkpoint, self.options.task, device, self.options.inference_options)
        self.image_mode = self.loaded.task.image_mode  # Task.image_mode, see tasks/base.py
        self.device = device
        self.predict_batch.set_max_batch_size(self.options.batch_size)
        self.predict_batch.set_batch_wait_timeout_s(self.options.batch_wait_ms / 1000)

    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    def models(self) -> dict[str, Any]:
        meta = self.loaded.meta
        return {"task": meta["task"], "checkpoint": self.loaded.path, "model": meta["config"]["model"],
                "width": meta["config"]["width"], "epoch": meta["epoch"], "classes": meta["dataset"].get("classes"),
                "input_size": meta["dataset"].get("image_size"), "device": str(self.device),
                "routes": ["predict", *self.loaded.task.routes,
                           *self.loaded.task.state_routes],
                "batch_size": self.options.batch_size, "batch_wait_ms": self.options.batch_wait_ms}

    @api.post("/v1/{task}/predict")
    async def predict(self, task: str, request: Request) -> JSONResponse:
        self.check_task(task)
        images = await self.read_images(request)
        answers = await asyncio.gather(*(self.predict_batch(image) for image in images))
        return JSONResponse({"task": task, "predictions": answers})

    @api.post("/v1/{task}/{route}")
    async def task_route(self, task: str, route: str, request: Request) -> Response:
        """A task's own route: the query is checked first (a bad one never reaches the model), the image
        goes through the same decoding and batched prediction as /predict, and the route's respond
        function turns image and answer into the response."""
        self.check_task(task)
        routes = self.loaded.task.routes
        state_routes = self.loaded.task.state_routes
        if route in state_routes:
            return await self.state_route(task, route, state_routes[route], request)
        if route not in routes:
            raise error(404, f"task {task!r} has no route {route!r}; routes: "
                             f"{', '.join(['predict', *routes, *state_routes])}")
        parse_query, respond = routes[route]
        try:
            options = parse_query({key: request.query_params.getlist(key) for key in request.query_params})
        except RaycvError as problem:
            raise error(422, str(problem)) from None
        images = await self.read_images(request)
        if len(images) != 1:
            raise error(422, f"/v1/{task}/{route} takes one image per request, got {len(images)}")
        answer = await self.predict_batch(images[0])
        try:
            result = await asyncio.to_thread(respond, images[0], answer, **options)
        except RaycvError as problem:
            raise error(422, str(problem)) from None
        if isinstance(result, bytes):
            return Response(result, media_type="image/png")
        return JSONResponse(result)

    async def state_route(self, task: str, route: str, spec: Any, request: Request) -> JSONResponse:
        """A route on the task's serve state: query checked first, then the images (if the route
        takes any) through the batched model, then the route's respond in the RouteState replica."""
        try:
            options = spec.parse_query({key: request.query_params.getlist(key) for key in request.query_params})
        except RaycvError as problem:
            raise error(422, str(problem)) from None
        answers = []
        if spec.images:
            images = await self.read_images(request)
            answers = await asyncio.gather(*(self.predict_batch(image) for image in images))
        reply = await self.route_state.respond.remote(route, list(answers), options)
        if "error" in reply:
            raise error(422, f"/v1/{task}/{route}: {reply['error']}")
        return JSONResponse(reply["result"])

    def check_task(self, task: str) -> None:
        if task != self.loaded.task.name:
            raise error(404, f"this app serves task {self.loaded.task.name!r}, not {task!r}")

    async def read_images(self, request: Request) -> list[np.ndarray]:
        limit = int(self.options.max_body_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise error(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if len(body) > limit:
            raise error(413, f"request body of {len(body)} bytes exceeds the limit of {limit} bytes")
        if content_type in RAW_IMAGE_TYPES:
            if not body:
                raise error(422, "empty request body: send the image bytes")
            return [self.decode(body, "body")]
        if content_type == "multipart/form-data":
            return [self.decode(await self.form_image(request), "form field 'image'")]
        if content_type == "application/json":
            return [self.decode(data, f"images[{index}]") for index, data in enumerate(self.json_images(body))]
        raise error(415, f"unsupported content type {content_type or '(none)'!r}: send one of "
                         f"{', '.join(RAW_IMAGE_TYPES)}, multipart/form-data with field 'image', "
                         "or application/json {\"images\": [base64, ...]}")

    def decode(self, data: bytes, what: str) -> np.ndarray:
        """The image in `data` (`what` part of the request), or 400 for unreadable bytes and 413 for too many
        pixels, naming the option that sets the limit when it is this app's."""
        try:
            return decode_image(data, mode=self.image_mode, max_pixels=self.options.max_pixels)
        except ImageTooLarge as problem:
            ours = problem.limit == self.options.max_pixels  # else Pillow's, which --max-pixels cannot raise
            option = f" (raycv {self.loaded.task.name} serve --max-pixels)" if ours else ""
            raise error(413, f"{what}: {problem}{option}") from None
        except ValueError as problem:
            raise error(400, f"{what}: {problem}") from None

    @staticmethod
    async def form_image(request: Request) -> bytes:
        try:
            form = await request.form()
        except Exception as problem:  # starlette raises several types for malformed multipart bodies
            raise error(400, f"malformed multipart body: {problem}") from None
        field = form.get("image")
        if field is None:
            raise error(422, f"missing form field 'image' (fields sent: {', '.join(form.keys()) or 'none'})")
        return await field.read() if hasattr(field, "read") else str(field).encode()

    def json_images(self, body: bytes) -> list[bytes]:
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as problem:
            raise error(400, f"body is not valid JSON: {problem}") from None
        if not isinstance(payload, dict) or "images" not in payload:
            raise error(422, "missing field 'images': send {\"images\": [base64, ...]}")
        items = payload["images"]
        if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
            raise error(422, "field 'images' must be a non-empty list of base64 strings")
        if len(items) > self.options.max_images_per_request:
            raise error(413, f"{len(items)} images in one request exceed the limit of "
                             f"{self.options.max_images_per_request}")
        decoded = []
        for index, item in enumerate(items):
            try:
                decoded.append(base64.b64decode(item.split(",", 1)[-1], validate=True))  # tolerate data: URLs
            except (binascii.Error, ValueError):
                raise error(400, f"images[{index}] is not valid base64") from None
        return decoded

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, images: list[np.ndarray]) -> list[Any]:
        # Inference runs in a worker thread so the replica keeps accepting and decoding requests.
        return await asyncio.to_thread(self.infer, images)

    def infer(self, images: list[np.ndarray]) -> list[Any]:
        from raycv.inference import predict

        return predict(self.loaded, images)


def state_folder(options: ServeOptions) -> str:
    """Where the task's serve state lives: --state-dir, else serve_state/ beside the checkpoint
    (in its run folder, e.g. runs/search/train/serve_state for runs/search/train/best)."""
    from raycv import storage

    if options.state_dir:
        return storage.absolute(options.state_dir)
    return storage.join(storage.absolute(options.checkpoint).rstrip("/").rsplit("/", 1)[0], "serve_state")


def build_app(options: ServeOptions) -> serve.Application:
    from raycv.checkpoint import check_inference_options, local_copy, read_meta
    from raycv.tasks import get_task

    options.validate()
    task_name = options.task
    if task_name is None:  # only then read the checkpoint here: building an app touches no storage
        with local_copy(options.checkpoint) as folder:
            task_name = read_meta(folder)["task"]
    task = get_task(task_name)
    check_inference_options(task, options.inference_options)  # here, not in every replica
    route_state = None
    if task.state_routes:
        # One replica on purpose: the state must be the same for every model replica.
        route_state = RouteState.options(num_replicas=1, ray_actor_options={"num_cpus": 0.1}).bind(
            options.checkpoint, state_folder(options))
    return ModelServer.options(
        autoscaling_config={
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
            "upscale_delay_s": options.upscale_delay_s,
            "downscale_delay_s": options.downscale_delay_s,
            "metrics_interval_s": options.metrics_interval_s,
            "look_back_period_s": options.look_back_period_s,
        },
        # A replica must be able to hold a full batch, plus the next one queuing behind it.
        max_ongoing_requests=2 * options.batch_size,
        ray_actor_options={"num_cpus": options.cpus_per_replica, "num_gpus": options.gpu},
    ).bind(asdict(options), route_state)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The import path for Serve config files and RayService: `raycv.serve:app_builder`, with the
    ServeOptions fields as `args` (checkpoint is required)."""
    if "checkpoint" not in args:
        raise RaycvError("serve config args need 'checkpoint' (a raycv checkpoint folder or URI)")
    known = set(ServeOptions.__dataclass_fields__)
    unknown = sorted(set(args) - known)
    if unknown:
        raise RaycvError(f"unknown serve arg(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    options = ServeOptions(**args)
    options.checkpoint = os.path.abspath(options.checkpoint) if "://" not in options.checkpoint else options.checkpoint
    return build_app(options)


def run_server(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False) -> None:
    """Deploy on the connected Ray cluster (or a local one) and stay up until interrupted. Unless `verbose`,
    Serve's own bookkeeping is not shown; the replicas' access log (a line per request) and errors are."""
    import logging
    import time

    from raycv.runtime import init_ray

    app = build_app(options)
    init_ray(verbose=verbose)
    if not verbose:
        # Serve's driver-side notices (started, connecting, ready): the address is printed below instead.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # The controller's and proxies' INFO lines are endpoint updates and replica bookkeeping.
    serve.start(http_options={"host": host, "port": port}, logging_config=None if verbose else {"log_level": "WARNING"})
    serve.run(app, name="raycv", route_prefix="/")
    print(f"raycv serving {options.checkpoint}\n  POST http://{host}:{port}/v1/{options.task}/predict\n"
          f"  docs: http://{host}:{port}/docs   (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
