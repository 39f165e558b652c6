import time

import numpy as np
import pytest
import ray

from raycv import storage
from raycv.synth import MANIFEST, block_bounds, open_dataset, synthesize
from raycv.errors import RaycvError
from raycv.tasks import get_task


def rows_by_id(path):
    splits, _ = open_dataset(get_task("classify"), path)
    rows = splits["train"].to_pandas().sort_values("id").reset_index(drop=True)
    return rows


def synthesis_task_spans(since: float) -> list[tuple[float, float]]:
    """(start, end) in seconds of the Ray Data tasks that ran since `since` (time.time())."""
    events = ray.timeline()
    return sorted((event["ts"] / 1e6, (event["ts"] + event["dur"]) / 1e6) for event in events
                  if event.get("ph") == "X" and event["name"].endswith("_map_task") and event["ts"] / 1e6 >= since)


@pytest.mark.parametrize("count, workers", [(5000, 2), (40_000, 16), (2500, 1), (300, 2), (1, 4)])
def test_blocks_cover_every_sample_once_and_shrink_towards_the_end(count, workers):
    sizes = np.diff(block_bounds(count, workers, max_block=512))
    assert sizes.sum() == count and sizes.min() >= 1 and sizes.max() <= 512
    assert all(later <= earlier for earlier, later in zip(sizes, sizes[1:], strict=False)), sizes
    if workers > 1 and count >= 64 * workers * 4:
        # the last block of each worker is small, so none waits long for the last to finish
        assert sizes[-workers:].max() <= 64 and len(sizes) <= 10 * workers, sizes


def test_same_seed_same_bytes_with_one_or_two_workers(ray_session, tmp_path):
    task = get_task("classify")
    started = time.time()
    one = synthesize(task, str(tmp_path / "one"), {"train": 300}, seed=3, workers=1, batch_size=64)
    # One fused read -> synthesize -> write task per Parquet file, never two at once with workers=1. Task
    # events reach the timeline about a second after the task ends.
    files = len(list((tmp_path / "one" / "train").glob("*.parquet")))
    deadline = time.time() + 15
    while len(spans := synthesis_task_spans(started)) < files and time.time() < deadline:
        time.sleep(0.5)
    assert files >= 4 and len(spans) == files
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False)), spans
    two = synthesize(task, str(tmp_path / "two"), {"train": 300}, seed=3, workers=2, batch_size=32)
    assert one["splits"] == two["splits"] == {"train": 300}
    a, b = rows_by_id(str(tmp_path / "one")), rows_by_id(str(tmp_path / "two"))
    assert list(a["id"]) == list(range(300))
    assert list(a["label"]) == list(b["label"])
    assert all(x == y for x, y in zip(a["image"], b["image"], strict=False))
    # another seed really gives other images
    synthesize(task, str(tmp_path / "other"), {"train": 300}, seed=4, workers=2)
    c = rows_by_id(str(tmp_path / "other"))
    assert sum(x != y for x, y in zip(a["image"], c["image"], strict=False)) > 290


def test_dataset_is_complete_and_labelled(classify_data):
    manifest = storage.read_json(storage.join(classify_data, MANIFEST))
    assert manifest["task"] == "classify" and manifest["splits"] == {"train": 3072, "val": 256}
    assert len(manifest["meta"]["classes"]) == 10
    splits, meta = open_dataset(get_task("classify"), classify_data)
    assert splits["val"].count() == 256
    decoded = get_task("classify").decode(splits["train"].take_batch(64), meta)
    assert decoded["image"].shape == (64, 32, 32, 3) and decoded["image"].dtype == np.uint8
    counts = np.bincount(splits["train"].to_pandas()["label"], minlength=10)
    assert counts.min() > 200, counts  # every class is present in quantity
    # no temporary folder is left next to the dataset
    parent = classify_data.rsplit("/", 1)[0]
    assert not [name for name in storage.list_dir(parent) if ".tmp-" in name]


def test_bad_synth_requests(ray_session, tmp_path, classify_data):
    task = get_task("classify")
    with pytest.raises(RaycvError, match="unknown classify synth parameter.*colour"):
        synthesize(task, str(tmp_path / "x"), {"train": 10}, params={"colour": 1})
    with pytest.raises(RaycvError, match="invalid background='grass': expected textured or plain"):
        synthesize(task, str(tmp_path / "x"), {"train": 10}, params={"background": "grass"})
    with pytest.raises(RaycvError, match="invalid size -5 for split 'train': expected an integer >= 0"):
        synthesize(task, str(tmp_path / "x"), {"train": -5})
    with pytest.raises(RaycvError, match="already exists"):
        synthesize(task, classify_data, {"train": 10})
    with pytest.raises(RaycvError, match="dataset not found: .*nowhere"):
        open_dataset(task, str(tmp_path / "nowhere"))


def test_held_out_split_alone_matches_the_same_split_of_a_full_set(ray_session, tmp_path, classify_data):
    """Samples are keyed by split name: a val-only set (train size 0) reproduces a full set's val rows."""
    task = get_task("classify")
    manifest = synthesize(task, str(tmp_path / "val-only"), {"train": 0, "val": 8}, seed=7)
    assert manifest["splits"] == {"val": 8}
    alone = open_dataset(task, str(tmp_path / "val-only"))[0]["val"].to_pandas().sort_values("id")
    full = open_dataset(task, classify_data)[0]["val"].to_pandas().sort_values("id").head(8)
    assert list(alone["image"]) == list(full["image"])
    assert list(alone["label"]) == list(full["label"])
    with pytest.raises(RaycvError, match="every split has size 0"):
        synthesize(task, str(tmp_path / "none"), {"train": 0, "val": 0})
