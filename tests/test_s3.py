"""Storage on S3 end to end, against a real S3 API on loopback (moto's server): synth -> train -> stop ->
resume -> eval -> sweep -> serve, every artefact on s3://, credentials and endpoint from the environment
(tests/conftest.py sets them before Ray starts, as a cluster's nodes get them)."""

from __future__ import annotations

import logging
import os
import time

import httpx
import pyarrow.dataset
import pyarrow.fs as pafs
import pytest

from conftest import S3_PORT, TINY, served
from raycv import storage
from raycv.cli import main
from raycv.errors import RaycvError
from raycv.inference import evaluate_checkpoint
from raycv.synth import MANIFEST, synthesize
from raycv.tasks import get_task
from raycv.train import fit
from raycv.tune import parse_space, sweep

BUCKET = "raycv-test"


@pytest.fixture(scope="module")
def bucket():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    # Only bucket creation needs its own filesystem: raycv never creates buckets, a cluster's come with it.
    pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(BUCKET)
    yield f"s3://{BUCKET}"
    server.stop()


def bucket_keys(prefix: str) -> set[str]:
    fs, inner = storage.resolve(prefix)
    return {info.path.removeprefix(inner + "/")
            for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True))}


def first_png(data: str, split: str) -> bytes:
    fs, inner = storage.resolve(storage.join(data, split))
    return pyarrow.dataset.dataset(inner, filesystem=fs, format="parquet").head(1)["image"][0].as_py()


def test_synth_train_resume_eval_sweep_serve_all_on_s3(ray_session, bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to the working directory instead of the bucket shows here
    task = get_task("classify")
    data = f"{bucket}/data/shapes"
    synthesize(task, data, {"train": 256, "val": 64}, seed=3)
    assert MANIFEST in bucket_keys(data)
    assert any(key.startswith("train/") and key.endswith(".parquet") for key in bucket_keys(data))

    cfg = task.default_config().replace(epochs=2, workers=1, storage=f"{bucket}/runs", name="s3", max_failures=0,
                                        **{**TINY, "width": 0.125})
    with pytest.raises(Exception, match="injected fault"):
        fit(task, cfg.replace(fail_at_epoch=2), data)  # stops after epoch 1 was checkpointed to the bucket
    assert any(key.startswith("checkpoint_") for key in bucket_keys(f"{bucket}/runs/classify/s3"))
    result = fit(task, cfg, data)  # same storage and name: resumes from the bucket
    assert result.resumed_at == [2]
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.best_checkpoint == f"{bucket}/runs/classify/s3/best"
    run_keys = bucket_keys(result.run_dir)
    assert {"config.json", "metrics.csv", "curves.png", "best/model.pt", "best/meta.json"} <= run_keys

    metrics = evaluate_checkpoint(result.best_checkpoint, data, task_name="classify")
    assert metrics["samples"] == 64

    base = cfg.replace(epochs=1, cpus_per_worker=0.9, name="")
    swept = sweep(task, base, data, parse_space(["lr=grid:0.003"], base), name="lr", asha=False)
    assert swept.best_checkpoint == f"{bucket}/runs/classify/tune/lr/best"
    assert {"best.json", "results.txt", "tradeoff.png", "best/model.pt"} <= bucket_keys(swept.path)

    with served(result.best_checkpoint, "classify") as url:
        response = httpx.post(f"{url}/v1/classify/predict", content=first_png(data, "val"),
                              headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    classes = storage.read_json(storage.join(data, MANIFEST))["meta"]["classes"]
    assert response.json()["predictions"][0][0]["class"] in classes
    # Local files are caches only: Ray's session folder (with Tune's driver staging) and checkpoint downloads,
    # both under the temporary folder
    assert os.listdir(tmp_path) == []


def test_s3_path_without_credentials_is_one_line_naming_the_bucket(tmp_path, monkeypatch, capsys):
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    # No credentials file or instance role to fall back on either.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    started = time.perf_counter()
    assert main(["classify", "predict", "--checkpoint", "s3://some-bucket/runs/best", str(image)]) == 2
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err.strip()
    assert err.startswith("raycv: error: ") and "\n" not in err, err
    assert "s3://some-bucket" in err, err


def test_options_in_a_storage_uri_are_refused_by_name():
    with pytest.raises(RaycvError, match=r"s3://raycv-test/data: options .*\(endpoint_override, scheme\)"):
        synthesize(get_task("classify"), f"s3://{BUCKET}/data?endpoint_override=127.0.0.1:9&scheme=http", {"val": 8})
