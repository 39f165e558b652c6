"""Classification on users' photos: torchvision models by name, --pretrained, a folder of the odd files
real folders hold, streaming through Ray Data, and serving a large JPEG."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import saved_checkpoint, served

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def photo(rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    """A photo-like image of one dominant colour: smooth noise around it, a random darker blob."""
    height, width = size
    base = np.array(colour, dtype=np.float32) + rng.normal(0, 25, (height // 8 + 1, width // 8 + 1, 3))
    image = np.asarray(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((width, height),
                                                                                        Image.BILINEAR)).copy()
    y, x = int(rng.integers(height // 2)), int(rng.integers(width // 2))
    image[y:y + height // 3, x:x + width // 3] //= 2
    return Image.fromarray(image)


def write_folder(root: str, per_class: int, seed: int, classes: tuple[str, ...] = tuple(COLOURS)) -> None:
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(2, per_class // 4))):
        for name in classes:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for index in range(count):
                size = (int(rng.integers(60, 140)), int(rng.integers(60, 140)))
                photo(rng, COLOURS[name], size).save(os.path.join(root, split, name, f"{index}.jpg"), quality=90)


def add_odd_files(folder: str) -> dict[str, str]:
    """The files real folders hold, all of class red: returns name -> path."""
    rng = np.random.default_rng(3)
    red = photo(rng, COLOURS["red"], (80, 120))
    paths = {}

    def save(name: str, image: Image.Image, **options) -> None:
        paths[name] = os.path.join(folder, name)
        image.save(paths[name], **options)

    save("cmyk.jpg", red.convert("CMYK"))
    save("grey.png", red.convert("L"))
    save("sixteen.png", Image.fromarray(np.asarray(red.convert("L"), dtype=np.uint16) * 257))
    save("rgba.png", red.convert("RGBA"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": the pixels are stored on their side
    save("rotated.jpg", red.transpose(Image.Transpose.ROTATE_90), exif=exif)
    buffer = io.BytesIO()
    red.save(buffer, format="JPEG")
    paths["truncated.jpg"] = os.path.join(folder, "truncated.jpg")
    with open(paths["truncated.jpg"], "wb") as file:
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return paths


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("photos"))
    write_folder(root, per_class=24, seed=0)
    add_odd_files(os.path.join(root, "train", "red"))
    return root


@pytest.fixture(scope="module")
def zoo_run(ray_session, photo_folder, workdir):
    """torchvision's ResNet-18, 2 DDP workers, 64 px, class-weighted loss and flip test-time augmentation, on
    a folder that holds every odd kind of file. (Not a
    MobileNetV3: its BatchNorm momentum of 0.01 leaves the running statistics near their initial values after
    a few dozen steps, so it evaluates at chance however well it trains.)"""
    from raycv.tasks import get_task
    from raycv.train import fit

    task = get_task("classify")
    cfg = task.default_config().replace(
        model="torchvision.resnet18", epochs=4, workers=2, cpus_per_worker=0.5, batch_size=8, optimizer="adamw",
        lr=1e-3, weight_decay=0.01, storage=str(workdir / "runs"), name="zoo",
        extra={"image_size": "64", "class_weighting": "balanced", "tta": "flip"})
    return fit(task, cfg, photo_folder)


def test_zoo_model_trains_with_two_workers_and_skips_exactly_the_truncated_file(zoo_run):
    history = zoo_run.history
    assert [row["workers"] for row in history] == [2, 2, 2, 2]
    # Six steps a worker per epoch on 72 photos: an epoch's mean loss is noisy (0.72 after 0.66 in one run), so
    # the loss must fall below the first epoch's by a margin at some epoch, and the classes be learnt.
    assert min(row["train_loss"] for row in history[1:]) < history[0]["train_loss"] * 0.8
    assert history[-1]["val_accuracy"] >= 0.9
    assert {row["skipped_files"] for row in history} == {1}


def test_a_zoo_model_is_channel_pruned_and_int8_quantized(zoo_run, photo_folder, tmp_path):
    """Chapter 10 on a torchvision ResNet-18 trained on photos: channels removed for real (fewer parameters),
    and int8 weights, each row scored on the photo folder's validation split."""
    from raycv import compress
    from raycv.config import CompressOptions

    options = CompressOptions(batch_size=8, channel_ratio=0.5, channel_steps=1, channel_finetune_epochs=1,
                              finetune_steps=2, calibration_batches=1, latency_runs=2, latency_batches=(1,),
                              stages=("channels", "int8"))
    rows = compress.compress_checkpoint(zoo_run.best_checkpoint, photo_folder, str(tmp_path), options, "classify")
    by_stage = {row["stage"]: row for row in rows}
    assert set(by_stage) >= {"dense", "int8"} and any(stage.startswith("channels") for stage in by_stage), rows
    pruned = next(row for stage, row in by_stage.items() if stage.startswith("channels"))
    assert pruned["params"] < 0.5 * by_stage["dense"]["params"]
    assert by_stage["int8"]["size_mb"] < 0.5 * by_stage["dense"]["size_mb"]
    assert all(0 <= row["accuracy"] <= 1 for row in rows)


@pytest.mark.parametrize("cache_data", ["on", "off"])
def test_training_rows_are_shuffled_across_classes_every_epoch(ray_session, photo_folder, cache_data):
    """Folders list their files class by class; the trainers' local shuffle buffer holds a few batches, so
    without a global shuffle each batch would hold one class and training would not converge. Cached and
    streamed reads both draw a new order each epoch."""
    from raycv.tasks import get_task
    from raycv.train import prepare_datasets

    task = get_task("classify")
    cfg = task.default_config().replace(model="torchvision.resnet18", cache_data=cache_data,
                                        extra={"image_size": "32"})
    datasets, meta = prepare_datasets(task, photo_folder, cfg)
    epochs = [np.concatenate([batch["label"] for batch in datasets["train"].iter_batches(batch_format="numpy")])
              for _ in range(2)]
    for labels in epochs:
        assert len(labels) == meta["rows"]["train"]
        assert np.bincount(labels).tolist() == np.bincount(epochs[0]).tolist()  # every row, once
        assert len(set(labels[:12].tolist())) >= 2, labels[:12]
    assert epochs[0].tolist() != epochs[1].tolist()  # a new order each epoch


def test_a_relative_pretrained_path_reaches_the_workers_absolute(tmp_path, monkeypatch):
    """Ray Train workers run in a directory of Ray's: a path relative to the user's would not be found there."""
    from raycv.tasks import get_task
    from raycv.train import for_workers

    monkeypatch.chdir(tmp_path)
    cfg = get_task("classify").default_config()
    assert for_workers(cfg.replace(pretrained="runs/classify/a/best")).pretrained == str(
        tmp_path / "runs" / "classify" / "a" / "best")
    assert for_workers(cfg.replace(pretrained="s3://bucket/w.pth")).pretrained == "s3://bucket/w.pth"
    assert for_workers(cfg).pretrained == cfg.pretrained


def test_photos_arrive_upright_and_in_colour():
    from raycv.data.images import decode_image

    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red: upright, red is on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", exif=exif, quality=95)
    upright = decode_image(buffer.getvalue())
    assert upright.shape == (20, 40, 3)
    assert upright[10, 5, 0] > 200 and upright[10, 5, 2] < 60  # red on the left again
    assert upright[10, 35, 2] > 200 and upright[10, 35, 0] < 60


def test_pretrained_replaces_the_head_of_another_class_count(zoo_run, tmp_path):
    import torch

    from raycv import checkpoint
    from raycv.tasks import get_task

    task = get_task("classify")
    cfg = task.default_config().replace(model="torchvision.resnet18")
    meta = task.training_meta({"classes": ["a", "b"], "format": "imagefolder"}, cfg.replace(
        extra={"image_size": "64"}))
    model = task.build_model(cfg, meta)
    fresh = checkpoint.load_pretrained(model, checkpoint.read_pretrained(zoo_run.best_checkpoint),
                                       task.head(model, meta), zoo_run.best_checkpoint)
    assert fresh == ["net.fc.weight", "net.fc.bias"]
    trained = checkpoint.load_weights(zoo_run.best_checkpoint)
    assert torch.equal(model.state_dict()["net.conv1.weight"], trained["net.conv1.weight"])

    # torchvision's own file layout (the bare network) loads too; a file of another shape is one line.
    torchvision_file = str(tmp_path / "resnet18.pth")
    torch.save({k.removeprefix("net."): v for k, v in trained.items() if k.startswith("net.")}, torchvision_file)
    checkpoint.load_pretrained(model, checkpoint.read_pretrained(torchvision_file), task.head(model, meta),
                               torchvision_file)
    wrong = dict(trained)
    wrong["net.conv1.weight"] = torch.zeros(8, 3, 7, 7)
    torch.save(wrong, torchvision_file)
    with pytest.raises(Exception, match=r"does not fit layer net\.conv1\.weight: the file's shape "
                                        r"\(8, 3, 7, 7\), the model's \(64, 3, 7, 7\)"):
        checkpoint.load_pretrained(model, checkpoint.read_pretrained(torchvision_file), task.head(model, meta),
                                   torchvision_file)


def test_serve_answers_a_large_jpeg_as_local_prediction_does(zoo_run):
    """A 3000x2000 JPEG through Serve gets the answer the model gives the same photo in-process: the same
    centre crop at the training resolution, whatever the upload's size. (Which class the few-step test
    model names is not its point; the quality run measures that.)"""
    import httpx

    from raycv.checkpoint import load_model
    from raycv.data.images import decode_image
    from raycv.inference import predict

    rng = np.random.default_rng(11)
    buffer = io.BytesIO()
    photo(rng, COLOURS["green"], (2000, 3000)).save(buffer, format="JPEG", quality=85)
    with served(zoo_run.best_checkpoint, "classify") as url:
        response = httpx.post(f"{url}/v1/classify/predict", files={"image": ("big.jpg", buffer.getvalue())},
                              timeout=60)
    assert response.status_code == 200, response.text
    served_top = response.json()["predictions"][0]
    local_top = predict(load_model(zoo_run.best_checkpoint, "classify"), [decode_image(buffer.getvalue())])[0]
    assert [row["class"] for row in served_top] == [row["class"] for row in local_top]
    assert served_top[0]["probability"] == pytest.approx(local_top[0]["probability"], abs=1e-4)
    assert sorted(row["class"] for row in served_top) == ["blue", "green", "red"]


def run_cli(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raycv.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(("case", "expected"), [
    ("one_class", "at least two classes"),
    ("empty_class", "purple holds no photos"),
    ("missing_in_csv", "missing.jpg"),
    ("unknown_model", "closest: resnet50"),
    ("image_size_0", "invalid image_size='0'"),
    ("pretrained_not_state_dict", "is not a state_dict"),
    ("unknown_mix", "invalid mix='blend'"),
])
def test_bad_input_is_one_line_before_ray_starts(case, expected, tmp_path, monkeypatch, capsys):
    """In this process, with Ray's start refused: an error found only after Ray starts fails the test. The
    one_class case runs as a user runs it instead, in a fresh process, where nothing but the raycv line may
    print."""
    import raycv.runtime
    from raycv.cli import main

    def no_ray(**_):
        raise AssertionError("Ray was started before the bad input was found")

    root = tmp_path / "photos"
    write_folder(str(root), per_class=2, seed=1)
    args = ["classify", "train", "--data", str(root), "--epochs", "1"]
    if case == "one_class":
        one = tmp_path / "one"
        write_folder(str(one), per_class=2, seed=1, classes=("red",))
        args[3] = str(one)
    elif case == "empty_class":
        os.makedirs(root / "train" / "purple")
    elif case == "missing_in_csv":
        listing = tmp_path / "train.csv"
        listing.write_text(f"path,label\n{root}/train/red/0.jpg,red\n{root}/train/red/missing.jpg,red\n"
                           f"{root}/train/blue/0.jpg,blue\n")
        args[3] = str(listing)
    elif case == "unknown_model":
        args += ["--model", "resnet5"]
    elif case == "image_size_0":
        args += ["--image-size", "0"]
    elif case == "pretrained_not_state_dict":
        (tmp_path / "notes.pth").write_text("not weights")
        args += ["--pretrained", str(tmp_path / "notes.pth")]
    elif case == "unknown_mix":
        args += ["--mix", "blend"]
    if case == "one_class":
        result = run_cli(*args)
        code, stderr = result.returncode, result.stderr
    else:
        monkeypatch.setattr(raycv.runtime, "init_ray", no_ray)
        code, stderr = main(args), capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raycv: error:") and expected in lines[0], stderr
    assert "Ray" not in stderr


def test_streaming_through_an_object_store_smaller_than_the_decoded_set(tmp_path):
    """A Ray of its own with Ray's smallest object store (75 MB), and 210 photos of 165 MB decoded at 512 px:
    auto caching streams them, and the run completes. The model is the zoo's cheapest per pixel on a CPU
    (MobileNetV3-Small, about 6 images/s at 512 px on one core): training time grows with the decoded bytes."""
    root = str(tmp_path / "photos")
    write_folder(root, per_class=56, seed=5)
    script = f"""
import json, ray
from raycv.runtime import init_ray
from raycv.tasks import get_task
from raycv.train import fit, decoded_bytes, should_cache, prepare_datasets
init_ray(num_cpus=2, object_store_memory=75 * 1024 ** 2)
task = get_task("classify")
cfg = task.default_config().replace(model="mobilenet_v3_small", epochs=1, batch_size=16, optimizer="adamw", lr=1e-3,
                                    storage={str(tmp_path / 'runs')!r}, extra={{"image_size": "512"}})
_, meta = prepare_datasets(task, {root!r}, cfg)
result = fit(task, cfg, {root!r})
print(json.dumps({{"decoded": decoded_bytes(meta), "store": ray.cluster_resources()["object_store_memory"],
                  "cached": should_cache("auto", meta), "epochs": len(result.history)}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode == 0, done.stderr[-3000:]
    facts = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert facts["decoded"] > 2 * facts["store"]
    assert facts["cached"] is False and facts["epochs"] == 1


def test_saved_checkpoint_of_a_zoo_model_rebuilds(tmp_path):
    from raycv.checkpoint import load_model
    from raycv.tasks import get_task

    task = get_task("classify")
    cfg = task.default_config().replace(model="torchvision.resnet18", extra={"image_size": "48"})
    meta = task.training_meta({"classes": ["a", "b", "c"], "format": "imagefolder"}, cfg)
    loaded = load_model(saved_checkpoint(task, cfg, meta, str(tmp_path / "ckpt")), "classify")
    assert type(loaded.model.net).__name__ == "ResNet" and loaded.model.net.fc.out_features == 3
    assert loaded.dataset_meta["image_size"] == [48, 48]


def encoded_photos(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    encoded, labels = [], []
    for index in range(count):
        buffer = io.BytesIO()
        photo(rng, list(COLOURS.values())[index % 3], (72, 96)).save(buffer, format="JPEG")
        encoded.append(buffer.getvalue())
        labels.append(index % 3)
    return np.array(encoded, dtype=object), np.array(labels, dtype=np.int64)


@pytest.mark.parametrize("mix", ["cutmix", "mixup", "cutmix_or_mixup"])
def test_mixing_and_class_weights_happen_in_the_training_decode(mix):
    from raycv.tasks import get_task

    task = get_task("classify")
    cfg = task.default_config().replace(model="torchvision.resnet18", extra={
        "image_size": "32", "mix": mix, "class_weighting": "balanced"})
    meta = task.training_meta({"classes": list(COLOURS), "format": "imagefolder",
                               "class_counts": {"train": [30, 10, 20], "val": [3, 1, 2]}}, cfg)
    assert meta["class_weights"] == pytest.approx([60 / 90, 2.0, 1.0])
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    encoded, labels = encoded_photos(12, seed=4)
    rows = task.decode_train({"image": encoded, "label": labels}, meta)
    assert rows["image"].shape == (12, 32, 32, 3) and rows["image"].dtype == np.uint8
    soft = rows["label"]
    assert soft.shape == (12, 3) and soft.dtype == np.float32
    assert np.allclose(soft.sum(axis=1), 1)
    assert ((soft > 0).sum(axis=1) == 2).any()  # at least one image is a blend of two classes
    assert np.allclose(rows["weight"], soft @ np.array(meta["class_weights"], dtype=np.float32))
    # validation rows stay plain: class indices, no weights
    plain = task.decode({"image": encoded, "label": labels}, meta)
    assert plain["label"].tolist() == labels.tolist() and "weight" not in plain


def test_weighted_loss_is_cross_entropy_with_class_weights_and_takes_soft_labels():
    import torch

    from raycv.tasks import get_task

    task = get_task("classify")
    cfg = task.default_config().replace(label_smoothing=0.0)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 3, 3))
    images = torch.randint(0, 256, (6, 4, 4, 3), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    weights = torch.tensor([0.5, 3.0, 1.5])
    with torch.no_grad():
        logits = model(images.permute(0, 3, 1, 2).float() / 255)
        weighted = task.loss(model, {"image": images, "label": labels, "weight": weights[labels]}, cfg)
        soft = task.loss(model, {"image": images, "label": torch.nn.functional.one_hot(labels, 3).float()}, cfg)
    assert float(weighted) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels, weight=weights)),
                                            rel=1e-5)
    assert float(soft) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)


def test_flip_tta_averages_an_image_and_its_mirror_in_eval_only():
    import torch

    from raycv.models.common import FlipAveraged, Normalized

    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    plain = Normalized(net, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    averaged = FlipAveraged(net, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    x = torch.rand(2, 3, 8, 8)
    plain(x)  # materialise the lazy layer
    assert averaged.state_dict().keys() == plain.state_dict().keys()
    assert torch.equal(averaged.train()(x), plain.train()(x))
    plain.eval(), averaged.eval()
    expected = (plain(x) + plain(x.flip(-1))) / 2
    assert torch.allclose(averaged(x), expected, atol=1e-6)
    assert not torch.allclose(averaged(x), plain(x), atol=1e-3)  # the mirror really changes the answer


def test_mix_and_class_weighting_refuse_sets_augmented_on_the_device():
    from raycv.errors import RaycvError
    from raycv.tasks import get_task

    task = get_task("classify")
    cfg = task.default_config().replace(extra={"mix": "cutmix"})
    with pytest.raises(RaycvError, match=r"--mix cutmix: only photo folders and lists.*this cifar10 set"):
        task.training_meta({"classes": list("abc"), "format": "cifar10", "image_size": [32, 32]}, cfg)
