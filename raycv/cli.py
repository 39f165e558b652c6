"""`raycv TASK VERB [--option value ...]`: the command line, one grammar for every task.

    raycv classify synth   --out data/classify --train-size 20000 --val-size 2000
    raycv classify train   --data data/classify --epochs 15 --workers 2 [--gpu]
    raycv classify eval    --checkpoint runs/classify/train/checkpoint_... --data data/classify
    raycv classify predict --checkpoint ... image1.png image2.png
    raycv segment danmu    --checkpoint ... --image in.png --text "hi" --out out.png   # a task's own verb

Training options come from TrainConfig, so every config field is a flag (--batch-size, --lr, ...).
Parsing and checking the arguments import neither torch nor Ray (the flags and defaults come from
raycv.config and the task cards), so --help answers at once and a wrong path fails before Ray starts;
a verb imports the heavy pieces only when it runs. User errors print one line and exit with status 2.
Ray connects to RAY_ADDRESS when it is set (as under `ray job submit`) and starts a local Ray otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raycv.config import CompressOptions, ServeOptions, TrainConfig
from raycv.errors import RaycvError
from raycv.tasks.cards import CARDS, TaskCard

TASK_OPTION_PREFIX = "task_option."  # argparse dest of a task option (TaskCard.train_options)


# ---------------------------------------------------------------------------------------------------
# Flags built from the config dataclasses and the task cards.
# ---------------------------------------------------------------------------------------------------


def add_config_flags(parser: argparse.ArgumentParser, task_name: str) -> None:
    """One flag per TrainConfig field and per task option; unset flags keep the task's defaults."""
    card = CARDS[task_name]
    defaults = card.default_config()
    group = parser.add_argument_group(f"training options (defaults are {task_name}'s)")
    for field in dataclasses.fields(TrainConfig):
        if field.name == "extra":
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        if field.name == "model":
            help_text = f"one of {', '.join(card.model_names)}"
            if card.zoo_models:
                help_text += (f", or any torchvision classifier by name (resnet50, torchvision.resnet18, ...: "
                              f"`raycv {task_name} models` lists them)")
        help_text += f" (default: {getattr(defaults, field.name)!r})"
        if field.metadata.get("hidden"):
            help_text = argparse.SUPPRESS
        if field.type in ("bool", bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            group.add_argument(flag, dest=field.name, type=kind, default=None, metavar=field.name.upper(),
                               help=help_text)
    for name, (default, help_text) in card.train_options.items():
        flag, dest = "--" + name.replace("_", "-"), TASK_OPTION_PREFIX + name
        help_text = f"{help_text} (default: {defaults.extra.get(name, default)!r})"
        if isinstance(default, bool):
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=type(default), default=None, metavar=name.upper(), help=help_text)


def add_inference_flags(parser: argparse.ArgumentParser, card: TaskCard) -> None:
    """eval, predict and serve: `--NAME` for each train option a trained checkpoint may change."""
    for name in card.inference_options:
        default, help_text = card.train_options[name]
        parser.add_argument("--" + name.replace("_", "-"), dest=TASK_OPTION_PREFIX + name, type=type(default),
                            default=None, metavar=name.upper(), help=f"{help_text} (default: the checkpoint's)")


def inference_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, TASK_OPTION_PREFIX + name) for name in CARDS[args.task].inference_options
            if getattr(args, TASK_OPTION_PREFIX + name, None) is not None}


def config_from_args(task_name: str, args: argparse.Namespace) -> TrainConfig:
    """The task's default config with the flags given on the command line, validated."""
    card = CARDS[task_name]
    defaults = card.default_config()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    task_options = {name: getattr(args, TASK_OPTION_PREFIX + name) for name in card.train_options
                    if getattr(args, TASK_OPTION_PREFIX + name, None) is not None}
    if task_options:
        overrides["extra"] = {**defaults.extra, **task_options}
    cfg = defaults.replace(**overrides).validate()
    card.check_model(cfg.model)
    card.check_options(cfg.extra)
    return cfg


def add_compress_flags(parser: argparse.ArgumentParser, defaults: CompressOptions) -> None:
    """One flag per CompressOptions field, defaulting to `defaults`; tuples are comma-separated (--sparsities
    0.5,0.7,0.9)."""
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


def options_from_args(options: type, args: argparse.Namespace, **fixed: Any) -> Any:
    return options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options) if f.name not in fixed},
                   **fixed).validate()


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


def require_path(path: str, what: str) -> None:
    """A local path that must exist, checked before Ray starts; URIs (s3://, gs://, ...) are left to the
    storage layer, which names the bucket when it cannot read one."""
    if "://" not in path and not os.path.exists(path):
        raise RaycvError(f"{what} not found: {path}")


def check_user_data(task, data: str, cfg: TrainConfig) -> None:
    """What can be checked of a run's inputs before Ray starts: the task's listing of a user's dataset
    (raycv's own datasets, recognised by their manifest, need none) and the --pretrained file."""
    from raycv.synth import MANIFEST

    if "://" not in data and not os.path.exists(os.path.join(data, MANIFEST)):
        task.check_data(data, cfg)
    if cfg.pretrained:
        from raycv.checkpoint import read_pretrained

        read_pretrained(cfg.pretrained)


def init_ray_for(args: argparse.Namespace, gpu_layout: tuple[int, float, str] | None = None) -> None:
    """Start or join Ray; with `gpu_layout` (processes, GPUs each, what), refuse, once joined to a cluster, a
    layout it can never place (the local machine's was checked before Ray started)."""
    from raycv.runtime import init_ray

    init_ray(verbose=args.verbose)
    if gpu_layout is not None:
        from raycv.devices import check_cluster_gpus

        check_cluster_gpus(*gpu_layout)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show the INFO logs and warnings of Ray")


# ---------------------------------------------------------------------------------------------------
# The verbs every task has: arguments, then the run that imports what it needs.
# ---------------------------------------------------------------------------------------------------


def add_synth_arguments(parser: argparse.ArgumentParser, card: TaskCard) -> None:
    parser.add_argument("--out", required=True, help="output folder or URI (s3://...)")
    parser.add_argument("--train-size", type=int, default=card.synth_sizes["train"],
                        help=f"training samples (default: {card.synth_sizes['train']})")
    parser.add_argument("--val-size", type=int, default=card.synth_sizes["val"],
                        help=f"validation samples (default: {card.synth_sizes['val']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="CPUs the synthesis may use, one task per CPU (default: all of the cluster's)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="generator parameter (repeatable)")
    parser.add_argument("--overwrite", action="store_true")
    add_verbose_flag(parser)


def run_synth(args: argparse.Namespace) -> None:
    params = parse_params(args.param)
    from raycv.report import table
    from raycv.synth import synthesize
    from raycv.tasks import get_task

    task = get_task(args.task)
    init_ray_for(args)
    manifest = synthesize(task, args.out, {"train": args.train_size, "val": args.val_size}, seed=args.seed,
                          params=params, workers=args.workers, overwrite=args.overwrite)
    print(table([{"split": s, "samples": n} for s, n in manifest["splits"].items()],
                f"{task.name} dataset written to {args.out} in {manifest['seconds']} s"))


def add_train_arguments(parser: argparse.ArgumentParser, card: TaskCard) -> None:
    parser.add_argument("--data", required=True, help="dataset folder or URI")
    add_config_flags(parser, card.name)


def run_train(args: argparse.Namespace) -> None:
    cfg = config_from_args(args.task, args)
    require_path(args.data, "dataset")
    from raycv.devices import check_local_gpus
    from raycv.report import table
    from raycv.tasks import get_task
    from raycv.train import fit

    gpu_layout = (cfg.workers, cfg.gpus_per_worker if cfg.gpu else 0, f"training with {cfg.workers} workers")
    check_local_gpus(*gpu_layout)

    task = get_task(args.task)
    check_user_data(task, args.data, cfg)
    init_ray_for(args, gpu_layout)
    result = fit(task, cfg, args.data)
    print(table([result.best_metrics], f"best epoch of {result.run_dir}"))
    print(f"best checkpoint: {result.best_checkpoint}")


def add_tune_arguments(parser: argparse.ArgumentParser, card: TaskCard) -> None:
    parser.add_argument("--data", required=True)
    parser.add_argument("--space", action="append", default=[], metavar="KEY=KIND:ARGS", required=True,
                        help="a config field or task option, e.g. lr=loguniform:1e-3:1e-1, "
                             "sparsity=grid:0.5,0.7,0.9, rd_lambda=grid:0.003,0.01 (repeatable)")
    parser.add_argument("--samples", type=int, default=1, help="samples per grid point (num_samples)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="e.g. 0.25: four trials share a GPU")
    parser.add_argument("--no-asha", dest="asha", action="store_false", help="run every trial to the end")
    parser.add_argument("--grace-period", type=int, default=1, help="epochs before ASHA may stop a trial")
    add_config_flags(parser, card.name)


def run_tune(args: argparse.Namespace) -> None:
    cfg = config_from_args(args.task, args)
    require_path(args.data, "dataset")
    if args.gpus_per_trial > 0:  # a trial's GPUs, split among its workers
        share = args.gpus_per_trial / cfg.workers
        if cfg.workers > 1 and not share.is_integer():
            raise RaycvError(f"--gpus-per-trial {args.gpus_per_trial:g} with {cfg.workers} workers gives each DDP "
                             f"worker {share:g} of a GPU, and NCCL cannot put two ranks on one GPU; give whole GPUs "
                             f"per worker (--gpus-per-trial {cfg.workers}) or share GPUs with --workers 1")
        cfg = cfg.replace(gpu=True, gpus_per_worker=share)
    from raycv.devices import check_local_gpus
    from raycv.report import table
    from raycv.tasks import get_task
    from raycv.tune import parse_space, sweep

    space = parse_space(args.space, cfg, args.task)
    gpu_layout = (cfg.workers, cfg.gpus_per_worker if cfg.gpu else 0, f"a trial with {cfg.workers} workers")
    check_local_gpus(*gpu_layout)
    task = get_task(args.task)
    check_user_data(task, args.data, cfg)
    init_ray_for(args, gpu_layout)
    result = sweep(task, cfg, args.data, space, name=cfg.name or "sweep", samples=args.samples,
                   max_concurrent=args.max_concurrent, asha=args.asha, grace_period=args.grace_period)
    print(table([{k: v for k, v in row.items() if k != "checkpoint"} for row in result.rows],
                f"sweep {result.path}, best first"))
    print(f"best config and checkpoint: {result.path}/best.json, {result.best_checkpoint}")


def add_compress_arguments(parser: argparse.ArgumentParser, card: TaskCard) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="dataset for fine-tuning, calibration and evaluation")
    parser.add_argument("--out", required=True, help="folder for the table and the compressed models")
    add_compress_flags(parser, CompressOptions(stages=card.compress_stages))
    add_verbose_flag(parser)


def run_compress(args: argparse.Namespace) -> None:
    from raycv.compress import check_stages, compress_checkpoint
    from raycv.report import table

    options = options_from_args(CompressOptions, args)
    check_stages(CARDS[args.task], options.stages)
    require_path(args.checkpoint, "checkpoint")
    require_path(args.data, "dataset")

    init_ray_for(args)
    rows = compress_checkpoint(args.checkpoint, args.data, args.out, options, args.task)
    print(table(rows, f"{args.task} compress: {args.checkpoint}"))
    print(f"tables and models: {args.out}")


def add_eval_arguments(parser: argparse.ArgumentParser, card: TaskCard) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=256)
    add_inference_flags(parser, card)
    add_verbose_flag(parser)


def run_eval(args: argparse.Namespace) -> None:
    require_path(args.checkpoint, "checkpoint")
    require_path(args.data, "dataset")
    from raycv.inference import evaluate_checkpoint
    from raycv.report import table

    init_ray_for(args)
    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.task,
                                  inference_options_from_args(args))
    print(table([metrics], f"{args.task} {args.split} metrics"))


def add_predict_arguments(parser: argparse.ArgumentParser, card: TaskCard) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run the model in this process (or, with --folder, on Ray)")
    source.add_argument("--url", help="a running `raycv serve` app, e.g. http://127.0.0.1:8000")
    parser.add_argument("--folder", help="predict every image under this folder with Ray Data (needs --checkpoint)")
    parser.add_argument("--out", help="with --folder: predictions file, .csv or .json lines (default: print); detect "
                                      "and segment: a .json file in COCO's results format, or a folder of YOLO "
                                      "label files (detect) or PNG masks (segment)")
    parser.add_argument("--concurrency", type=int, default=2, help="with --folder: model replicas (actors)")
    parser.add_argument("--batch-size", type=int, default=64, help="with --folder: images per model call")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="with --folder: CPUs per model actor")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="with --folder: GPUs per model actor")
    parser.add_argument("images", nargs="*", help="image files (PNG, JPEG, ...)")
    add_inference_flags(parser, card)
    add_verbose_flag(parser)


def run_predict(args: argparse.Namespace) -> None:
    options = inference_options_from_args(args)
    if options and args.url:
        raise RaycvError(f"--{next(iter(options)).replace('_', '-')} changes a local model: a Serve app at --url "
                         "answers as it was started (give the option to `raycv serve`)")
    if args.checkpoint:
        require_path(args.checkpoint, "checkpoint")
    if args.folder:
        if not args.checkpoint:
            raise RaycvError("--folder needs --checkpoint (batch prediction runs the model on Ray, not over HTTP)")
        require_path(args.folder, "image folder")
        from raycv import inference

        init_ray_for(args)
        summary = inference.predict_folder(args.checkpoint, args.folder, args.out, args.task,
                                           concurrency=args.concurrency, batch_size=args.batch_size,
                                           cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                                           options=options)
        print(json.dumps(summary))
        return
    if not args.images:
        raise RaycvError("no images given: pass image files, or --folder DIR")
    from raycv import inference

    if args.url:
        answers = inference.predict_over_http(args.url, args.task, args.images)
    else:
        from raycv.checkpoint import load_model
        from raycv.devices import default_device

        loaded = load_model(args.checkpoint, args.task, default_device(), options)
        answers = inference.predict(loaded, inference.read_image_files(args.images, loaded.task.image_mode))
    for path, answer in zip(args.images, answers, strict=True):
        print(f"{path}: {json.dumps(answer)}")


def add_serve_arguments(parser: argparse.ArgumentParser, card: TaskCard) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--host", default="127.0.0.1", help="use 0.0.0.0 to listen on all interfaces")
    parser.add_argument("--port", type=int, default=8000)
    for field in dataclasses.fields(ServeOptions):
        if field.name in ("checkpoint", "task", "inference_options"):
            continue
        flags = ["--" + field.name.replace("_", "-")]
        extra = {"nargs": "?", "const": 1.0} if field.name == "gpu" else {}  # bare --gpu: one GPU
        if field.name == "target_ongoing_requests":
            flags.append("--target-ongoing")
        parser.add_argument(*flags, dest=field.name, type=type(field.default), default=field.default,
                            help=f"{field.metadata.get('help', '')} (default: {field.default})", **extra)
    add_inference_flags(parser, card)
    add_verbose_flag(parser)


def run_serve(args: argparse.Namespace) -> None:
    options = options_from_args(ServeOptions, args, task=args.task, inference_options=inference_options_from_args(args))
    require_path(args.checkpoint, "checkpoint")
    from raycv.devices import check_local_gpus
    from raycv.serve import run_server

    gpu_layout = (options.max_replicas, options.gpu, f"serving up to {options.max_replicas} replicas")
    check_local_gpus(*gpu_layout)
    init_ray_for(args, gpu_layout)
    run_server(options, args.host, args.port, verbose=args.verbose)


@dataclass(frozen=True)
class Verb:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser, TaskCard], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None


COMMON_VERBS = {
    "synth": Verb("synthesize a dataset with Ray Data (Parquet + manifest)", add_synth_arguments, run_synth),
    "train": Verb("train with Ray Train (DDP over --workers)", add_train_arguments, run_train),
    "eval": Verb("evaluate a checkpoint on a dataset split", add_eval_arguments, run_eval),
    "tune": Verb("sweep config values with Ray Tune (each trial a Ray Train run; ASHA)", add_tune_arguments,
                 run_tune,
                 "The sweep is named by --name (default 'sweep'); re-running a name resumes it. Search space: "
                 "--space KEY=KIND:ARGS, KIND one of loguniform:LOW:HIGH, uniform:LOW:HIGH, randint:LOW:HIGH, "
                 "grid:V1,V2,..., choice:V1,V2,..."),
    "compress": Verb("sparsify, channel-prune, quantize (int8) and export a checkpoint, with accuracy, size and "
                     "CPU latency per stage", add_compress_arguments, run_compress),
    "predict": Verb("predict images: locally, through a running Serve app (--url), or a whole folder with Ray "
                    "Data (--folder)", add_predict_arguments, run_predict),
    "serve": Verb("serve a checkpoint over HTTP with Ray Serve (autoscaled)", add_serve_arguments, run_serve),
}


def verbs_of(task_name: str) -> dict[str, Verb]:
    """Every verb of a task: the common ones, then the task's own (raycv/verbs/), which take the parser only."""
    from raycv.verbs import task_verbs

    verbs = dict(COMMON_VERBS)
    for name, (add_arguments, run) in task_verbs(task_name).items():
        if name in verbs:
            raise RaycvError(f"task {task_name} redefines the common verb {name!r}")
        verbs[name] = Verb((run.__doc__ or name).strip().splitlines()[0],
                           lambda parser, card, add_arguments=add_arguments: add_arguments(parser), run)
    return verbs


def add_submit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("running on a cluster")
    group.add_argument("--submit", action="store_true",
                       help="run this command as a Ray job on a cluster (raycv/submit.py) and stream its logs; "
                            "give paths as URIs or absolute paths the cluster can read")
    group.add_argument("--address", help="the cluster's dashboard URL for --submit (default: $RAY_ADDRESS, "
                                         "else http://127.0.0.1:8265)")


def build_parser(task_names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of `raycv`; with `task_names`, only those tasks get their verbs' flags (the others are
    listed by name), which is all one command line needs."""
    parser = argparse.ArgumentParser(prog="raycv", description="Classic computer vision on Ray.")
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, card in CARDS.items():
        task_parser = tasks.add_parser(name, help=card.summary, description=card.summary)
        if task_names is not None and name not in task_names:
            continue
        verbs = task_parser.add_subparsers(dest="verb", required=True, metavar="VERB")
        for verb_name, verb in verbs_of(name).items():
            verb_parser = verbs.add_parser(verb_name, help=verb.help, description=verb.description or verb.help)
            verb.add_arguments(verb_parser, card)
            add_submit_flags(verb_parser)
            verb_parser.set_defaults(run=verb.run)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line, building the flags of its task alone (argparse exits on a bad one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return build_parser([argv[0]] if argv and argv[0] in CARDS else ()).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        if args.submit:
            from raycv.submit import submit

            return submit(argv, args.address)
        return args.run(args) or 0
    except RaycvError as error:
        print(f"raycv: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raycv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
