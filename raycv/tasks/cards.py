"""Each task's card: the facts the command line needs before torch is imported.

`raycv TASK VERB --help` and argument checks must answer at once, and importing a task module means
importing torch, torchvision and Ray (seconds). So what the parser shows and checks -- the default
training config, the model names, the task's own options and its default split sizes -- is plain
data here, one card per task (the way Ultralytics keeps its defaults in one file). The task modules
read their card (`Task.card`); a test checks that every card matches its task's models and options.
Importing this module costs what raycv.config costs: no torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raycv.config import COMPRESS_STAGES, TrainConfig
from raycv.errors import RaycvError

DEFAULT_SYNTH_SIZES = {"train": 20_000, "val": 2_000}


@dataclass(frozen=True)
class TaskCard:
    name: str
    summary: str  # one line for `raycv --help`
    config: TrainConfig  # the default training config (flags override it)
    model_names: tuple[str, ...]  # what --model accepts; the first is the default network family's
    # The task's own training options, NAME -> (default, help): `--NAME` on train and tune, stored in
    # TrainConfig.extra[NAME] (every run records them all, defaults included).
    train_options: dict[str, tuple[Any, str]] = field(default_factory=dict)
    # The split sizes `raycv TASK synth` makes by default: those the default config is sized and
    # measured with.
    synth_sizes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SYNTH_SIZES))
    # Checks of task options' values, NAME -> (is_valid(value), what a valid value is), run with the others
    # before anything starts.
    option_checks: dict[str, tuple[Callable[[Any], bool], str]] = field(default_factory=dict)
    # Whether --model also takes torchvision's classification architectures by name (raycv/models/zoo.py).
    zoo_models: bool = False
    # Train options that eval, predict and serve may change on a trained checkpoint (test-time augmentation):
    # `--NAME` on those verbs too.
    inference_options: tuple[str, ...] = ()
    # The stages of `raycv TASK compress` (raycv.compress) the task's model goes through, its default there, and
    # why not the others: they are refused with that reason before any data is read.
    compress_stages: tuple[str, ...] = COMPRESS_STAGES
    compress_refusal: str = ""

    def check_model(self, model: str) -> None:
        if model in self.model_names:
            return
        if not self.zoo_models:
            raise RaycvError(f"unknown model {model!r} for task {self.name}; "
                             f"valid models: {', '.join(self.model_names)}")
        from raycv.models.zoo import closest_names, zoo_model_names, zoo_name  # torchvision: only when needed

        if zoo_name(model, self.model_names) is None:
            close = closest_names(model, list(self.model_names) + zoo_model_names())
            raise RaycvError(f"unknown model {model!r} for task {self.name}; closest: {', '.join(close) or 'none'} "
                             f"(`raycv {self.name} models` lists all)")

    def check_options(self, extra: dict[str, Any]) -> None:
        for name, (is_valid, expected) in self.option_checks.items():
            if name in extra and not is_valid(extra[name]):
                raise RaycvError(f"invalid {name}={extra[name]!r}: expected {expected}")

    def default_config(self) -> TrainConfig:
        """The default config with every task option's default in `extra`, so a run records how it was
        built even after a default changes."""
        defaults = {name: default for name, (default, _) in self.train_options.items()}
        return self.config.replace(extra={**defaults, **self.config.extra})


# Flip test-time augmentation, the same option for classify and segment (raycv.models.common.FlipAveraged).
TTA_OPTION = ("off", "'flip': eval, predict and serve average the logits of each image and its mirror")
TTA_CHECK = (lambda value: value in ("off", "flip"), "off or flip")


def parse_scales(text: str) -> tuple[float, ...]:
    """--tta-scales: comma-separated input scales, e.g. "1,1.25"; a RaycvError names a bad one."""
    try:
        scales = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        scales = ()
    if not scales or not all(0.25 <= scale <= 4 for scale in scales):
        raise RaycvError(f"invalid tta_scales={text!r}: expected comma-separated scales from 0.25 to 4, e.g. 1,1.25")
    return scales

# detect and segment read the same scenes: raycv's own, and users' COCO and YOLO sets of any image size.
SCENE_OPTIONS = {
    "image_size": ("auto", "training resolution: the long side in pixels, each photo letterboxed to a square of it "
                           "(auto: a raycv scene set's own size, 320 for COCO and YOLO sets); a multiple of 32"),
    "crop_size": ("auto", "training windows: the side of the squares cut from the photos at the --image-size scale "
                          "(auto: the image size); smaller trains on parts of photos at the resolution evaluation "
                          "and predictions use, e.g. --image-size 448 --crop-size 320; a multiple of 32"),
}
# torchvision backbones the detector and the UNet take by name (raycv/models/zoo.py BACKBONE_STAGES), with --pretrained
# weights of their classification networks.
SCENE_BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_large")
SCENE_SIDE_CHECK = (lambda value: value == "auto" or (str(value).isdigit() and 32 <= int(value) <= 4096
                                                     and int(value) % 32 == 0),
                    "auto or a multiple of 32 from 32 to 4096")
SCENE_OPTION_CHECKS = {"image_size": SCENE_SIDE_CHECK, "crop_size": SCENE_SIDE_CHECK}

CARDS: dict[str, TaskCard] = {card.name: card for card in [
    TaskCard(
        "captcha", "fixed-length captcha reading (multi-head classifier)",
        # Sized for 15 minutes on 2 CPU cores: three epochs over 100,000 captchas (synth_sizes) at width 0.25
        # on one worker with both cores (400-470 captchas/s; two one-core DDP workers made 282-312/s
        # together, and half the optimizer steps). Fresh captchas beat more passes over few: 3 epochs over
        # 110,000 read 0.9535 of held-out captchas where 4 over 80,000 read 0.9495, and 10 epochs over
        # 20,000 at x0.5 overfit at 0.925.
        TrainConfig(model="convnet", width=0.25, epochs=3, batch_size=64, optimizer="adamw", lr=3e-3,
                    weight_decay=0.05, label_smoothing=0.1, cpus_per_worker=2),
        ("convnet", "resnet18"),
        synth_sizes={"train": 100_000, "val": 2_000}),
    TaskCard(
        "textrec", "text lines of any length: CRNN + CTC (captchas, street numbers)",
        # One worker with both cores: twice the optimizer steps per epoch of two one-core workers and no
        # gradient exchange. 8 epochs of ~95 s fit 15 minutes on 2 CPU cores.
        TrainConfig(model="crnn_lstm", width=0.25, epochs=8, batch_size=64, optimizer="adamw", lr=2e-3,
                    weight_decay=0.01, cpus_per_worker=2),
        ("crnn_lstm", "crnn_gru")),
    TaskCard(
        "classify", "image classification: the book's CIFAR networks and torchvision's model zoo",
        TrainConfig(model="vgg11_bn", epochs=30, batch_size=128, lr=0.1, label_smoothing=0.1),
        ("vgg11_bn", "resnet18"),  # the book's 32-px CIFAR networks; torchvision's as torchvision.resnet18
        train_options={
            "image_size": ("auto", "training resolution, pixels a side (auto: the dataset's for the book's networks, "
                                   "32 for photo folders; 224 for torchvision models)"),
            "val_fraction": (0.1, "share of each class held out for validation when a photo folder has no val/"),
            "mix": ("off", "photos: CutMix or MixUp of each training batch on the CPU workers (off, cutmix, mixup, "
                           "or cutmix_or_mixup: one of the two per batch)"),
            "class_weighting": ("off", "photos: 'balanced' weighs each class's loss by the inverse of its share of "
                                       "the train split, for imbalanced folders"),
            "tta": TTA_OPTION,
        },
        option_checks={
            "image_size": (lambda value: value == "auto" or (str(value).isdigit() and 8 <= int(value) <= 4096),
                           "auto or a whole number of pixels from 8 to 4096"),
            "val_fraction": (lambda value: 0 < value < 1, "a share in (0, 1), e.g. 0.1"),
            "mix": (lambda value: value in ("off", "cutmix", "mixup", "cutmix_or_mixup"),
                    "off, cutmix, mixup or cutmix_or_mixup"),
            "class_weighting": (lambda value: value in ("off", "balanced"), "off or balanced"),
            "tta": TTA_CHECK,
        },
        zoo_models=True, inference_options=("tta",)),
    TaskCard(
        "detect", "object detection: boxes and classes (anchor-free detector)",
        # Sized for 2 CPU cores: 8,000 scenes x 6 epochs on 2 workers take about 10 minutes (the first
        # epoch alone reaches mAP@0.5 0.81 on three classes); raise --width for harder (photo) data.
        TrainConfig(model="resnet18", width=0.25, epochs=6, batch_size=32, lr=2e-3, optimizer="adamw",
                    weight_decay=0.05, workers=2),
        ("resnet18", "resnet10", *(f"torchvision.{name}" for name in SCENE_BACKBONES)),
        train_options=dict(SCENE_OPTIONS),
        option_checks=dict(SCENE_OPTION_CHECKS),
        synth_sizes={"train": 8000, "val": 500}),
    TaskCard(
        "boxreg", "one box per image by regression (IoU metric)",
        TrainConfig(model="resnet18", width=0.5, epochs=6, batch_size=128, optimizer="adamw", lr=3e-3,
                    weight_decay=0.05, workers=2),
        ("resnet18",)),
    TaskCard(
        "segment", "semantic segmentation (UNet) and the danmu demo",
        # Sized for two CPU cores: a half-width network in fp32 (amp "auto": bf16 on GPUs). Forcing bf16
        # on a CPU is a gamble: about 2x faster with AVX-512 BF16, 18x slower on an AVX2-only EPYC.
        # Five epochs over 6,000 scenes fit the 15-minute budget with Ray's start-up (six took 15.8 min).
        TrainConfig(model="unet_resnet18", width=0.5, epochs=5, batch_size=16, lr=3e-3,
                    optimizer="adamw", weight_decay=1e-4, cpus_per_worker=2),
        ("unet_resnet18", "fpn_resnet18", *(f"unet_torchvision.{name}" for name in SCENE_BACKBONES)),
        train_options={**SCENE_OPTIONS, "tta": TTA_OPTION,
                       # The book's class weights: background pixels outnumber object pixels several times
                       # over, and an unweighted loss settles for shrunken masks.
                       "background_weight": (0.3, "the background class's weight in the cross-entropy (the book's "
                                                  "0.3; objects weigh 1): lower widens masks, higher narrows them"),
                       "tta_scales": ("1", "eval, predict and serve average the logit maps of each image resized by "
                                           "these scales, e.g. 1,1.25 (with --tta flip, and their mirrors)")},
        option_checks={**SCENE_OPTION_CHECKS, "tta": TTA_CHECK,
                       "background_weight": (lambda value: 0 < value <= 1, "a weight in (0, 1], e.g. 0.3"),
                       "tta_scales": (lambda value: bool(parse_scales(value)), "comma-separated scales, e.g. 1,1.25")},
        inference_options=("tta", "tta_scales"),
        synth_sizes={"train": 6000, "val": 500}),
    TaskCard(
        "superres", "x2/x4 super-resolution (PSNR/SSIM against bicubic)",
        # Sized for two CPU cores and fifteen minutes. fp32: bf16's 8-bit mantissa is as coarse as
        # the 8-bit pixels whose last decibel the network is there to win.
        TrainConfig(model="residual", width=1.0, epochs=16, batch_size=32, lr=2e-3, optimizer="adamw",
                    weight_decay=0.0, amp="off", cpus_per_worker=2),
        ("residual", "espcn"),
        synth_sizes={"train": 6000, "val": 300}),
    TaskCard(
        "inpaint", "fill holes in photographs (UNet over harmonic and biharmonic fills)",
        # 3 epochs over 3,000 crops: about 13 minutes on 2 CPU cores (13 images/s, two fifths of it the
        # biharmonic fill); 5 epochs scored 0.03 dB more on the validation crops.
        TrainConfig(model="unet_resnet18", width=0.5, epochs=3, batch_size=16, lr=2e-3, optimizer="adamw",
                    weight_decay=1e-4, amp="off", cpus_per_worker=2),
        ("unet_resnet18",),
        train_options={
            "masks": ("varied", "training holes: varied (rectangles, ellipses and brush strokes of many sizes) "
                                "or square (the book's, hole_size wide)"),
        },
        option_checks={"masks": (lambda value: value in ("varied", "square"), "varied or square")},
        compress_stages=("sparse", "channels"),
        compress_refusal=("the model fills the hole with iterative solvers (an image pyramid as deep as the hole "
                          "reaches, conjugate gradients) that torch.export, and so int8 and ONNX, cannot capture "
                          "as one graph; the network itself prunes like any UNet"),
        synth_sizes={"train": 3000, "val": 200}),
    TaskCard(
        "compress_ae", "learned image compression: autoencoder with a quantized latent (bits per pixel)",
        # 6 epochs over 3,000 crops on 2 CPU cores: 317 s for the autoencoder and 376 s with the GAN on an idle
        # machine, 505 s and 524 s with the cores shared (10 epochs had taken 18 minutes then).
        # The factorized codec's inverse GDN grows with the square of its input, and without clipping its
        # first epoch diverged (training loss 1.8e11 at lr 1e-3); ae and aegan are clipped alike.
        TrainConfig(model="ae", width=0.5, epochs=6, batch_size=32, lr=2e-3, optimizer="adamw",
                    weight_decay=1e-4, amp="off", cpus_per_worker=2, grad_clip=1.0),
        ("ae", "aegan", "factorized"),
        train_options={
            # MSE, not the book's L1: under L1 the reconstructions stayed grey (4 % of the target's chroma and
            # 15.5 dB on dead leaves after 600 steps); MSE, whose gradient grows with the error, had learned
            # colour by then (76 %, 19.3 dB).
            "loss": ("mse", "reconstruction loss: mse or l1 (the book's)"),
            "latent_channels": (16, "ae, aegan: channels of the 1/8-resolution latent (16: a quarter symbol "
                                    "per pixel)"),
            "levels": (5, "ae, aegan: symbols per latent value, odd (5: -2..2)"),
            "feature_matching_weight": (0.1, "aegan: weight of the discriminator feature-matching loss"),
            "adversarial_weight": (0.01, "aegan: weight of the generator's adversarial loss"),
            "rd_lambda": (0.01, "factorized: the rate-distortion trade-off, loss = rd_lambda x 255^2 x MSE + bits per "
                                "pixel; higher buys quality with bits (one model per value: sweep it with tune)"),
            "low_contrast_share": (0.0, "the share of training crops whose contrast is lowered (x0.1 to x1, "
                                        "log-uniform), for photographs smoother and fainter than the crops"),
            "refine_steps": (0, "factorized, when coding: gradient steps on each image's latent against the model's "
                                "own rate-distortion loss before it is range-coded (same decoder and bitstream; "
                                "slower encoding)"),
        },
        option_checks={"rd_lambda": (lambda value: value > 0, "a weight > 0, e.g. 0.01"),
                       "low_contrast_share": (lambda value: 0 <= value <= 1, "a share from 0 to 1"),
                       "refine_steps": (lambda value: isinstance(value, int) and 0 <= value <= 10_000,
                                        "a whole number of steps from 0 to 10000")},
        inference_options=("refine_steps",),
        compress_stages=("sparse",),
        compress_refusal=("a codec's code must decode bit-exactly with the symbol probabilities of the model that "
                          "coded it, which int8 arithmetic and the single-output exports do not keep, and channel "
                          "pruning does not know the channels GDN layers couple"),
        synth_sizes={"train": 3000, "val": 200}),
    TaskCard(
        "dcgan", "DCGAN image generation (sliced Wasserstein distance)",
        # Adam's beta1 at 0.5, as in the DCGAN paper. x0.25 and 40 epochs over 6,000 images: 3,750
        # alternating steps (about 1,900 per player) in 613 s on 2 CPU cores, best val SWD 144 against
        # a real-vs-real floor of 87 (x0.5 for 12 epochs, simultaneous updates, batch-normed D: 497+).
        TrainConfig(model="dcgan", width=0.25, epochs=40, batch_size=64, lr=2e-4, optimizer="adamw",
                    momentum=0.5, weight_decay=0.0, schedule="constant", amp="off", cpus_per_worker=2),
        ("dcgan",),
        train_options={
            "conditional": ("off", "'classes': a class-conditional generator, which draws the shape it is given, and a "
                                   "projection discriminator (procedural shapes only; sample n draws class n mod K)"),
        },
        option_checks={"conditional": (lambda value: value in ("off", "classes"), "off or classes")},
        synth_sizes={"train": 6000, "val": 500}),
    TaskCard(
        "search", "identity search: CosFace embeddings and a gallery index",
        # 8 epochs over 30,000 64-px photos (synth_sizes; 75-80 s each through the stride-2 stem, with
        # channels_last, which is 1.2x faster for this network on CPU) fit 15 minutes on 2 CPU cores:
        # recall@1 0.962-0.964 on val, 0.9605-0.9695 on three held-out sets (two runs). At 32 px
        # (stride 1), where an eye or a mole is 1-3 pixels, the same time bought 0.943-0.957. More
        # photos of each identity beat more passes. CosFace's margin makes it slow to fit: with one
        # global average before the embedding layer its recall@1 was 0.860 after 8 epochs over 20,000
        # 32-px photos (softmax 0.866).
        TrainConfig(model="resnet18", width=0.25, epochs=8, batch_size=128, lr=3e-3, optimizer="adamw",
                    weight_decay=5e-4, cpus_per_worker=2, channels_last="on"),
        ("resnet18",),
        train_options={
            "head": ("cosface", "training head: cosface or softmax (the baseline)"),
            "embedding_dim": (512, "embedding size (the book's 512)"),
            "pooled_size": (4, "the last feature map is pooled to a grid this many cells a side before the "
                               "embedding layer (1: one global average, as the book)"),
            "stem_stride": (2, "stride of the first convolution: 2 halves 64-px photos for the stages (the cost "
                               "of 32-px ones at stride 1, with more detail), 1 keeps the input size"),
            "embedding_dropout": (0.0, "dropout rate on the pooled features before the embedding layer (0.2 "
                                       "trailed 0 at every epoch on the procedural identities)"),
            "cosface_scale": (30.0, "CosFace scale s"),
            "cosface_margin": (0.4, "CosFace margin m"),
        },
        synth_sizes={"train": 30_000, "val": 2_000}),  # 30 photos of each training identity
]}
