"""Offline batch prediction of a folder with Ray Data and an actor pool (no Serve app running)."""

from raycv.synth import open_dataset
from raycv.inference import predict_folder
from raycv.tasks import get_task


def test_batch_prediction_of_a_folder(ray_session, ddp_run, classify_data, tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    splits, _ = open_dataset(get_task("classify"), classify_data)
    for index, data in enumerate(splits["val"].take_batch(32)["image"]):
        (folder / ("nested" if index % 2 else "") / f"{index}.png").write_bytes(data)
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "predictions.csv"
    summary = predict_folder(ddp_run.best_checkpoint, str(folder), str(out), "classify", concurrency=1, batch_size=8,
                             cpus_per_actor=0.5)
    assert summary["images"] == 33 and summary["failed"] == 1 and summary["images_per_s"] > 0
    lines = out.read_text().splitlines()
    assert len(lines) == 34 and lines[0] == "path,prediction,error"
    assert sum("not a readable image" in line for line in lines) == 1
