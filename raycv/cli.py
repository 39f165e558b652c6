"""`raycv TASK VERB [--option value ...]`: the command line, one grammar for every task.

    raycv classify synth   --out data/classify --train-size 20000 --val-size 2000
    raycv classify train   --data data/classify --epochs 15 --workers 2 [--gpu]
    raycv classify eval    --checkpoint runs/classify/train/checkpoint_... --data data/classify
    raycv classify predict --checkpoint ... image1.png image2.png
    raycv segment danmu    --checkpoint ... --image in.png --text "hi" --out out.png   # a task's own verb

Training options come from TrainConfig, so every config field is a flag (--batch-size, --lr, ...).
User errors print one line and exit with status 2; Ray connects to RAY_ADDRESS when it is set
(as under `ray job submit`), and starts a local Ray otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any
from collections.abc import Sequence

from raycv.config import ServeOptions, TrainConfig
from raycv.errors import RaycvError
from raycv.runtime import init_ray
from raycv.tasks import TASK_MODULES, get_task

TASK_OPTION_PREFIX = "task_option."  # argparse dest of a Task.train_options flag
VERBS = ("synth", "train", "eval", "tune", "compress", "predict", "serve")


def add_config_flags(parser: argparse.ArgumentParser, task_name: str) -> None:
    """One flag per TrainConfig field; unset flags keep the task's defaults."""
    task = get_task(task_name)
    defaults = task.default_config()
    group = parser.add_argument_group(f"training options (defaults are {task_name}'s)")
    for field in dataclasses.fields(TrainConfig):
        if field.name == "extra":
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        if field.name == "model":
            help_text = f"one of {', '.join(task.model_names)}"
        help_text += f" (default: {getattr(defaults, field.name)!r})"
        if field.type in ("bool", bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            group.add_argument(flag, dest=field.name, type=kind, default=None, metavar=field.name.upper(),
                               help=help_text)
    # The task's own options (Task.train_options), stored in config.extra.
    for name, (default, help_text) in getattr(task, "train_options", {}).items():
        flag, dest = "--" + name.replace("_", "-"), TASK_OPTION_PREFIX + name
        help_text = f"{help_text} (default: {defaults.extra.get(name, default)!r})"
        if isinstance(default, bool):
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=type(default), default=None, metavar=name.upper(), help=help_text)


def add_compress_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per CompressOptions field; tuples are comma-separated (--sparsities 0.5,0.7,0.9)."""
    from raycv.compress import CompressOptions

    defaults = CompressOptions()
    for field in dataclasses.fields(CompressOptions):
        default = getattr(defaults, field.name)
        if isinstance(default, tuple):
            item = type(default[0])
            kind = lambda text, item=item: tuple(item(value) for value in text.split(",") if value)  # noqa: E731
            shown = ",".join(map(str, default))
        else:
            kind, shown = (float if default is None else type(default)), default
        parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=kind, default=default,
                            help=f"{field.metadata.get('help', '')} (default: {shown})")


DEFAULT_SYNTH_SIZES = {"train": 20_000, "val": 2_000}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raycv", description="Classic computer vision on Ray.")
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for task_name in TASK_MODULES:
        task = get_task(task_name)
        task_parser = tasks.add_parser(task_name, help=f"the {task_name} task")
        verbs = task_parser.add_subparsers(dest="verb", required=True, metavar="VERB")

        synth = verbs.add_parser("synth", help="synthesize a dataset with Ray Data (Parquet + manifest)")
        synth.add_argument("--out", required=True, help="output folder or URI (s3://...)")
        sizes = {**DEFAULT_SYNTH_SIZES, **getattr(task, "synth_sizes", {})}
        synth.add_argument("--train-size", type=int, default=sizes["train"],
                           help=f"training samples (default: {sizes['train']})")
        synth.add_argument("--val-size", type=int, default=sizes["val"],
                           help=f"validation samples (default: {sizes['val']})")
        synth.add_argument("--seed", type=int, default=0)
        synth.add_argument("--workers", type=int, default=None,
                           help="CPUs the synthesis may use, one task per CPU (default: all of the cluster's)")
        synth.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                           help="generator parameter (repeatable)")
        synth.add_argument("--overwrite", action="store_true")

        train = verbs.add_parser("train", help="train with Ray Train (DDP over --workers)")
        train.add_argument("--data", required=True, help="dataset folder or URI")
        add_config_flags(train, task_name)

        tune = verbs.add_parser("tune", help="sweep config values with Ray Tune (each trial a Ray Train run; ASHA)",
                                description="The sweep is named by --name (default 'sweep'); re-running a name "
                                            "resumes it. Search space: --space KEY=KIND:ARGS, KIND one of "
                                            "loguniform:LOW:HIGH, uniform:LOW:HIGH, randint:LOW:HIGH, "
                                            "grid:V1,V2,..., choice:V1,V2,...")
        tune.add_argument("--data", required=True)
        tune.add_argument("--space", action="append", default=[], metavar="KEY=KIND:ARGS", required=True,
                          help="e.g. lr=loguniform:1e-3:1e-1 or sparsity=grid:0.5,0.7,0.9 (repeatable)")
        tune.add_argument("--samples", type=int, default=1, help="samples per grid point (num_samples)")
        tune.add_argument("--max-concurrent", type=int, default=None,
                          help="trials at once (default: as resources allow)")
        tune.add_argument("--gpus-per-trial", type=float, default=0.0, help="e.g. 0.25: four trials share a GPU")
        tune.add_argument("--no-asha", dest="asha", action="store_false", help="run every trial to the end")
        tune.add_argument("--grace-period", type=int, default=1, help="epochs before ASHA may stop a trial")
        add_config_flags(tune, task_name)

        compress = verbs.add_parser("compress",
                                    help="sparsify, channel-prune, quantize (int8) and export a checkpoint, "
                                         "with accuracy, size and CPU latency per stage")
        compress.add_argument("--checkpoint", required=True)
        compress.add_argument("--data", required=True, help="dataset for fine-tuning, calibration and evaluation")
        compress.add_argument("--out", required=True, help="folder for the table and the compressed models")
        add_compress_flags(compress)

        evaluate = verbs.add_parser("eval", help="evaluate a checkpoint on a dataset split")
        evaluate.add_argument("--checkpoint", required=True)
        evaluate.add_argument("--data", required=True)
        evaluate.add_argument("--split", default="val")
        evaluate.add_argument("--batch-size", type=int, default=256)

        predict = verbs.add_parser("predict", help="predict images: locally, through a running Serve app (--url), "
                                                   "or a whole folder with Ray Data (--folder)")
        source = predict.add_mutually_exclusive_group(required=True)
        source.add_argument("--checkpoint", help="run the model in this process (or, with --folder, on Ray)")
        source.add_argument("--url", help="a running `raycv serve` app, e.g. http://127.0.0.1:8000")
        predict.add_argument("--folder",
                             help="predict every image under this folder with Ray Data (needs --checkpoint)")
        predict.add_argument("--out", help="with --folder: predictions file, .csv or .json (default: print)")
        predict.add_argument("--concurrency", type=int, default=2, help="with --folder: model replicas (actors)")
        predict.add_argument("--batch-size", type=int, default=64, help="with --folder: images per model call")
        predict.add_argument("--cpus-per-actor", type=float, default=1.0, help="with --folder: CPUs per model actor")
        predict.add_argument("--gpus-per-actor", type=float, default=0.0, help="with --folder: GPUs per model actor")
        predict.add_argument("images", nargs="*", help="image files (PNG, JPEG, ...)")

        serve_parser = verbs.add_parser("serve", help="serve a checkpoint over HTTP with Ray Serve (autoscaled)")
        serve_parser.add_argument("--checkpoint", required=True)
        serve_parser.add_argument("--host", default="127.0.0.1", help="use 0.0.0.0 to listen on all interfaces")
        serve_parser.add_argument("--port", type=int, default=8000)
        for field in dataclasses.fields(ServeOptions):
            if field.name in ("checkpoint", "task"):
                continue
            flags = ["--" + field.name.replace("_", "-")]
            extra = {"nargs": "?", "const": 1.0} if field.name == "gpu" else {}  # bare --gpu: one GPU
            if field.name == "target_ongoing_requests":
                flags.append("--target-ongoing")
            serve_parser.add_argument(*flags, dest=field.name, type=type(field.default), default=field.default,
                                      help=f"{field.metadata.get('help', '')} (default: {field.default})", **extra)

        # Verbs only this task has (Task.cli_verbs); argparse refuses one that repeats a common verb.
        for verb, (add_arguments, run_verb) in getattr(task, "cli_verbs", {}).items():
            add_arguments(verbs.add_parser(verb, help=(run_verb.__doc__ or verb).strip().splitlines()[0]))
    return parser


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RaycvError(f"invalid --param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def config_from_args(task_name: str, args: argparse.Namespace) -> TrainConfig:
    task = get_task(task_name)
    defaults = task.default_config()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    task_options = {name: getattr(args, TASK_OPTION_PREFIX + name) for name in getattr(task, "train_options", {})
                    if getattr(args, TASK_OPTION_PREFIX + name, None) is not None}
    if task_options:
        overrides["extra"] = {**defaults.extra, **task_options}
    return defaults.replace(**overrides).validate()


def run(args: argparse.Namespace) -> int:
    from raycv.report import table

    task = get_task(args.task)
    task_verbs = getattr(task, "cli_verbs", {})
    if args.verb in task_verbs:
        return task_verbs[args.verb][1](args)
    if args.verb == "synth":
        from raycv.synth import synthesize

        init_ray()
        manifest = synthesize(task, args.out, {"train": args.train_size, "val": args.val_size}, seed=args.seed,
                              params=parse_params(args.param), workers=args.workers, overwrite=args.overwrite)
        print(table([{"split": s, "samples": n} for s, n in manifest["splits"].items()],
                    f"{task.name} dataset written to {args.out} in {manifest['seconds']} s"))
    elif args.verb == "train":
        from raycv.train import fit

        cfg = config_from_args(args.task, args)
        init_ray()
        result = fit(task, cfg, args.data)
        print(table([result.best_metrics], f"best epoch of {result.run_dir}"))
        print(f"best checkpoint: {result.best_checkpoint}")
    elif args.verb == "tune":
        from raycv.tune import parse_space, sweep

        cfg = config_from_args(args.task, args)
        if args.gpus_per_trial > 0:
            cfg = cfg.replace(gpu=True, gpus_per_worker=args.gpus_per_trial / cfg.workers)
        space = parse_space(args.space, cfg)
        init_ray()
        result = sweep(task, cfg, args.data, space, name=cfg.name or "sweep", samples=args.samples,
                       max_concurrent=args.max_concurrent, asha=args.asha, grace_period=args.grace_period)
        print(table([{k: v for k, v in row.items() if k != "checkpoint"} for row in result.rows],
                    f"sweep {result.path}, best first"))
        print(f"best config and checkpoint: {result.path}/best.json, {result.best_checkpoint}")
    elif args.verb == "compress":
        from raycv.compress import CompressOptions, compress_checkpoint

        options = CompressOptions(**{f.name: getattr(args, f.name)
                                     for f in dataclasses.fields(CompressOptions)}).validate()
        init_ray()
        rows = compress_checkpoint(args.checkpoint, args.data, args.out, options, task.name)
        print(table(rows, f"{task.name} compress: {args.checkpoint}"))
        print(f"tables and models: {args.out}")
    elif args.verb == "eval":
        from raycv.inference import evaluate_checkpoint

        init_ray()
        metrics = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, task.name)
        print(table([metrics], f"{task.name} {args.split} metrics"))
    elif args.verb == "predict":
        run_predict(task.name, args)
    elif args.verb == "serve":
        from raycv.serve import run_server

        options = ServeOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeOptions)
                                  if f.name != "task"}, task=task.name)
        run_server(options, args.host, args.port)
    return 0


def run_predict(task_name: str, args: argparse.Namespace) -> None:
    from raycv import inference

    if args.folder:
        if not args.checkpoint:
            raise RaycvError("--folder needs --checkpoint (batch prediction runs the model on Ray, not over HTTP)")
        init_ray()
        summary = inference.predict_folder(args.checkpoint, args.folder, args.out, task_name,
                                           concurrency=args.concurrency, batch_size=args.batch_size,
                                           cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor)
        print(json.dumps(summary))
        return
    if not args.images:
        raise RaycvError("no images given: pass image files, or --folder DIR")
    if args.url:
        answers = inference.predict_over_http(args.url, task_name, args.images)
    else:
        from raycv.checkpoint import load_model

        loaded = load_model(args.checkpoint, task_name, inference.default_device())
        answers = inference.predict(loaded, inference.read_image_files(args.images,
                                                                       getattr(loaded.task, "image_mode", "RGB")))
    for path, answer in zip(args.images, answers, strict=False):
        print(f"{path}: {json.dumps(answer)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except RaycvError as error:
        print(f"raycv: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raycv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
