"""The Serve app on the test session's Ray: real HTTP requests, bad input, load, autoscaling."""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import free_port, header_only_png, png_bytes

from raycv.checkpoint import load_model
from raycv.cli import main
from raycv.config import ServeOptions
from raycv.synth import open_dataset
from raycv.inference import predict
from raycv.tasks import get_task


@pytest.fixture(scope="module")
def known_image(ddp_run, classify_data):
    """A held-out image whose class the trained model gets right, with the model's local answer."""
    task = get_task("classify")
    splits, meta = open_dataset(task, classify_data)
    batch = splits["val"].take_batch(256)
    images = task.decode(batch, meta)["image"]
    loaded = load_model(ddp_run.best_checkpoint, "classify")
    answers = predict(loaded, list(images))
    index = next(i for i, answer in enumerate(answers) if answer[0]["index"] == batch["label"][i])
    return {"png": bytes(batch["image"][index]), "label": meta["classes"][batch["label"][index]],
            "local": answers[index], "other_pngs": [bytes(b) for b in batch["image"][:32]]}


@pytest.fixture(scope="module")
def server(ray_session, ddp_run):
    from ray import serve

    from raycv.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = ServeOptions(checkpoint=ddp_run.best_checkpoint, task="classify", min_replicas=1, max_replicas=2,
                           target_ongoing_requests=2, batch_size=8, batch_wait_ms=5, cpus_per_replica=0.5,
                           max_body_mb=1, max_pixels=512 * 512, upscale_delay_s=1, downscale_delay_s=4,
                           metrics_interval_s=0.5, look_back_period_s=2)
    serve.run(build_app(options), name="raycv", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def running_replicas() -> int:
    from ray import serve

    deployments = serve.status().applications["raycv"].deployments
    return next(iter(deployments.values())).replica_states.get("RUNNING", 0)


def test_known_image_gets_its_class_in_every_input_form(server, known_image):
    url = f"{server}/v1/classify/predict"
    raw = httpx.post(url, content=known_image["png"], headers={"content-type": "image/png"}, timeout=30)
    form = httpx.post(url, files={"image": ("x.png", known_image["png"], "image/png")}, timeout=30)
    as_json = httpx.post(url, json={"images": [base64.b64encode(known_image["png"]).decode()] * 3}, timeout=30)
    for response in (raw, form, as_json):
        assert response.status_code == 200, response.text
        for answer in response.json()["predictions"]:
            assert answer[0]["class"] == known_image["label"]
            # the served pipeline (decode, batch, preprocess) computes what the model computes locally
            assert abs(answer[0]["probability"] - known_image["local"][0]["probability"]) < 1e-4
    assert len(as_json.json()["predictions"]) == 3


def test_health_models_and_openapi(server, ddp_run):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    models = httpx.get(f"{server}/v1/models").json()
    assert models["task"] == "classify" and len(models["classes"]) == 10 and models["input_size"] == [32, 32]
    assert models["checkpoint"] == ddp_run.best_checkpoint
    assert "/v1/{task}/predict" in httpx.get(f"{server}/openapi.json").json()["paths"]


BAD_REQUESTS = {
    "corrupt image": (dict(content=b"\x89PNG\r\n\x1a\n garbage", headers={"content-type": "image/png"}), 400),
    "text as image": (dict(content=b"hello", headers={"content-type": "image/jpeg"}), 400),
    "bad base64": (dict(json={"images": ["%%%not base64%%%"]}), 400),
    "invalid json": (dict(content=b"{nope", headers={"content-type": "application/json"}), 400),
    "unsupported type": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415),
    "no content type": (dict(content=b"hello"), 415),
    "body over limit": (dict(content=b"\0" * (1024 * 1024 + 10), headers={"content-type": "image/png"}), 413),
    "too many pixels": (dict(content=png_bytes(np.zeros((600, 600, 3), np.uint8)),
                             headers={"content-type": "image/png"}), 413),
    "decompression bomb": (dict(content=header_only_png(20000, 20000), headers={"content-type": "image/png"}), 413),
    "missing json field": (dict(json={"pictures": []}), 422),
    "empty image list": (dict(json={"images": []}), 422),
    "missing form field": (dict(files={"photo": ("x.png", b"1", "image/png")}), 422),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_its_4xx_with_a_reason(server, case):
    kwargs, status = BAD_REQUESTS[case]
    response = httpx.post(f"{server}/v1/classify/predict", timeout=30, **kwargs)
    assert response.status_code == status, (case, response.status_code, response.text)
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


USER_FACING_ANSWERS = {
    "corrupt image": "body: not a readable image: a corrupt or truncated header",
    "text as image": "body: not a readable image: cannot identify the format of 5 bytes (readable: PNG, JPEG",
    "too many pixels": "body: image of 600x600 pixels exceeds the limit of 262144 pixels "
                       "(raycv classify serve --max-pixels)",
    # Pillow refuses this header before raycv's check, but the answer still names raycv's limit.
    "decompression bomb": "body: image of more than 178956970 pixels exceeds the limit of 262144 pixels "
                          "(raycv classify serve --max-pixels)",
}


def test_unreadable_and_oversized_images_are_answered_in_raycvs_terms(server):
    for case, expected in USER_FACING_ANSWERS.items():
        kwargs, status = BAD_REQUESTS[case]
        response = httpx.post(f"{server}/v1/classify/predict", timeout=30, **kwargs)
        assert response.status_code == status, (case, response.text)
        detail = response.json()["detail"]
        assert detail.startswith(expected), (case, detail)
        assert "<" not in detail and "object at 0x" not in detail and "Pillow" not in detail, (case, detail)
    garbage = base64.b64encode(b"GIF89a truncated").decode()
    response = httpx.post(f"{server}/v1/classify/predict", json={"images": [garbage]}, timeout=30)
    assert response.status_code == 400 and response.json()["detail"].startswith("images[0]: not a readable image")


def test_wrong_task_route_is_404(server, known_image):
    response = httpx.post(f"{server}/v1/detect/predict", content=known_image["png"],
                          headers={"content-type": "image/png"})
    assert response.status_code == 404 and "classify" in response.json()["detail"]


def test_load_with_mixed_requests_scales_up_and_back_down(server, known_image):
    """1,000 requests from 16 concurrent clients, a quarter of them bad: no 5xx, every good one
    answered; the load brings a second replica up, and it goes away once the load stops."""
    url = f"{server}/v1/classify/predict"
    bad = list(BAD_REQUESTS.values())
    good = known_image["other_pngs"]
    peak = []
    stop = threading.Event()

    def watch_replicas():
        while not stop.is_set():
            peak.append(running_replicas())
            time.sleep(0.5)

    def send(index: int):
        with httpx.Client(timeout=60) as client:
            if index % 4 == 3:
                kwargs, expected = bad[index % len(bad)]
                return expected, client.post(url, **kwargs).status_code
            response = client.post(url, content=good[index % len(good)], headers={"content-type": "image/png"})
            return 200, response.status_code

    watcher = threading.Thread(target=watch_replicas)
    watcher.start()
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(send, range(1000)))
        # On a slow machine the 1,000 may be over before the autoscaler acts: keep the load on.
        deadline = time.time() + 60
        while max(peak, default=0) < 2 and time.time() < deadline:
            outcomes += list(pool.map(send, range(0, 64, 4)))  # good requests only
    statuses = Counter(status for _, status in outcomes)
    assert not [s for s in statuses if s >= 500], statuses
    assert all(expected == status for expected, status in outcomes), Counter(outcomes)
    assert max(peak) == 2, f"replicas seen during load: {Counter(peak)}"
    deadline = time.time() + 60
    while running_replicas() != 1 and time.time() < deadline:
        time.sleep(1)
    stop.set()
    watcher.join()
    assert running_replicas() == 1
    assert httpx.get(f"{server}/healthz").status_code == 200  # still answering after the storm


def test_predict_cli_over_http(server, known_image, tmp_path, capsys):
    image = tmp_path / "known.png"
    image.write_bytes(known_image["png"])
    assert main(["classify", "predict", "--url", server, str(image)]) == 0
    assert f'"class": "{known_image["label"]}"' in capsys.readouterr().out


def test_serve_config_file_builds_the_same_app(ddp_run):
    import importlib
    from pathlib import Path

    import yaml
    from ray import serve

    from raycv.errors import RaycvError

    config = yaml.safe_load((Path(__file__).parents[1] / "cluster" / "serve_config.yaml").read_text())
    application = config["applications"][0]
    module, attribute = application["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attribute)
    built = builder({**application["args"], "checkpoint": ddp_run.best_checkpoint})
    assert isinstance(built, serve.Application)
    with pytest.raises(RaycvError, match="unknown serve arg.*replicas_max"):
        builder({"checkpoint": ddp_run.best_checkpoint, "replicas_max": 3})
    with pytest.raises(RaycvError, match="invalid max_replicas=0"):
        builder({"checkpoint": ddp_run.best_checkpoint, "max_replicas": 0})
