"""What a run leaves for people to read: config.json, metrics.csv and curves.png in the run folder."""

from __future__ import annotations

import csv
import io
from typing import Any

from raycv import storage
from raycv.config import TrainConfig


def write_bytes(path: str, data: bytes) -> None:
    fs, inner = storage.resolve(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(data)


def metrics_csv(history: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def curves_png(history: list[dict[str, Any]], metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    if "val_loss" in history[0]:
        loss_axis.plot(epochs, [row["val_loss"] for row in history], marker="o", label="val")
    loss_axis.set(title="loss", xlabel="epoch")
    loss_axis.legend()
    metric_axis.plot(epochs, [row[f"val_{metric}"] for row in history], marker="o", color="tab:green")
    metric_axis.set(title=f"val {metric}", xlabel="epoch")
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def write_run_report(run_dir: str, cfg: TrainConfig, history: list[dict[str, Any]], metric: str) -> None:
    storage.write_json(storage.join(run_dir, "config.json"), cfg.to_dict())
    storage.write_text(storage.join(run_dir, "metrics.csv"), metrics_csv(history))
    write_bytes(storage.join(run_dir, "curves.png"), curves_png(history, metric))


def table(rows: list[dict[str, Any]], title: str = "") -> str:
    """A plain aligned text table for terminals and job logs."""
    if not rows:
        return title
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_format(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) for r in cells]
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The same rows as a GitHub Markdown table (values as they are, for READMEs and notes)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return str(value)
