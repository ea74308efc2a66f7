"""`arflows train`: train a flow on a dataset and write a run directory."""

from __future__ import annotations

import argparse
import inspect
import logging
from typing import Any

from arflows.cli.common import (
    UsageError,
    add_data_arguments,
    add_device_arguments,
    data_options_from_args,
    prepare_run_dir,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("arflows.cli")

EPILOG = """\
examples:
  arflows train --model pixelcnn --data digits --out runs/digits --filters 32 --blocks 2 --epochs 5
  arflows train --model pixelcnn_pp --data mnist:data/mnist --download --out runs/mnist \\
      --precision bf16 --max-minutes 60 --eval-every 30min
  arflows train --model wavenet --data wav:recordings --segment-length 4000 --out runs/speech
  arflows train --out runs/mnist --resume --max-steps 200000
  torchrun --nproc-per-node 4 -m arflows train --model pixelcnn_pp --data cifar10:data/cifar10 \\
      --out runs/c10

intervals (--eval-every, --checkpoint-every): a number of optimizer steps ("500"), minutes of wall time
("10min" or "10m") or "epoch" (at the end of each epoch). When training ends, the final weights are
validated and saved to last.pt (after a signal they are only saved).

audio (wav:PATH): training takes one random crop of --segment-length samples per clip and step. Clips
shorter than the crop are skipped, and their count is logged as a warning (an error when no clip is long
enough). The receptive field of the WaveNet is logged at the start and stored in config.json and the
checkpoints. A crop shorter than it is allowed with a warning, because the network zero-pads before the
first sample. Validation and 'arflows evaluate' use whole clips of any length.

signals: on SIGINT (Ctrl-C) or SIGTERM the current step finishes, last.pt is written and the command
exits with status 128 + signal number (130 for SIGINT, 143 for SIGTERM); a second signal stops at once.
Exit status 2 means invalid input (nothing trained), 1 a failed run (for example a non-finite loss).
"""

# Flag → (create_flow keyword, type, help). Each flag applies to the models whose network takes it.
MODEL_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--filters": ("num_filters", int, "hidden channels of the image networks"),
    "--blocks": ("num_blocks", int, "residual or gated blocks (per stage for pixelcnn_pp)"),
    "--components": ("num_components", int, "logistic mixture components (pixelcnn_pp, wavenet --output dmol)"),
    "--dropout": ("dropout", float, "dropout probability in [0, 1) inside the blocks"),
    "--kernel-size": ("kernel_size", int, ("kernel size of the blocks (pixelcnn, gated_pixelcnn) or of "
                                           "the dilated convolutions (wavenet)")),
    "--first-kernel-size": ("first_kernel_size", int, "kernel size of the first masked convolution (pixelcnn)"),
    "--stages": ("num_stages", int, "resolution stages of the U-net (pixelcnn_pp)"),
    "--residual-channels": ("residual_channels", int, "residual channels (wavenet)"),
    "--dilation-channels": ("dilation_channels", int, "channels of the gated dilated convolutions (wavenet)"),
    "--skip-channels": ("skip_channels", int, "skip-connection channels (wavenet)"),
    "--layers": ("num_layers", int, "dilated layers per cycle, dilations 1, 2, ..., 2**(layers-1) (wavenet)"),
    "--cycles": ("num_cycles", int, "repetitions of the dilation cycle (wavenet)"),
    "--output": ("output", str, "wavenet output: categorical (K logits) or dmol (logistic mixture)"),
}

# Settings a resumed run may change; every other setting must match the stored run.
RESUMABLE_OVERRIDES = ("epochs", "max_steps", "max_minutes", "device", "num_workers", "eval_every",
                       "checkpoint_every", "log_every", "eval_batch_size", "compile")

# Defaults of the training flags. The parser keeps None, so a resumed run can tell which flags were given.
DEFAULTS = {
    "batch_size": 64,
    "lr": 1e-3,
    "lr_decay": 0.999995,
    "seed": 0,
    "device": "auto",
    "precision": "float32",
    "ema_decay": 0.9995,
    "num_workers": 0,
    "eval_every": "epoch",
    "checkpoint_every": "10min",
    "log_every": 50,
    "compile": False,
}


def model_hyperparameters(model: str) -> tuple[str, ...]:
    """Return the `create_flow` keywords that `model` accepts besides shape and K."""
    from arflows import nets

    network = {"pixelcnn": nets.PixelCNN, "gated_pixelcnn": nets.GatedPixelCNN,
               "pixelcnn_pp": nets.PixelCNNPlusPlus, "wavenet": nets.WaveNet}[model]
    names = [name for name in inspect.signature(network.__init__).parameters
             if name not in ("self", "num_channels", "num_bins", "num_outputs")]
    if model == "wavenet":
        # The flow, not the network, interprets these: the output type sets the network's output count.
        names += ["output", "num_components"]
    return tuple(names)


def _interval(text: str) -> str:
    from arflows.training import Interval

    try:
        return str(Interval.parse(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `arflows train`."""
    from arflows.flows import MODELS

    parser = subparsers.add_parser(
        "train", help="train a flow and write a run directory",
        description="Train an autoregressive flow by maximum likelihood and write RUN_DIR: config.json, "
                    "metrics.jsonl, last.pt, best.pt (best validation bits/dim) and TensorBoard events "
                    "when tensorboard is installed. Runs on several processes under torchrun.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--model", choices=MODELS, default=None,
                           help="network family (required unless --resume)")
    run_group.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    run_group.add_argument("--resume", action="store_true",
                           help="continue the run in RUN_DIR from its last.pt; flags that are given must "
                                "match the stored run, except the stop conditions, intervals, --device, "
                                "--num-workers, --eval-batch-size and --compile")
    run_group.add_argument("--force", action="store_true",
                           help="start a new run in a non-empty RUN_DIR, deleting the previous run's files")

    model_group = parser.add_argument_group("model size (unset flags keep the network's defaults)")
    for flag, (_, kind, text) in MODEL_FLAGS.items():
        extra = {"choices": ("categorical", "dmol")} if flag == "--output" else {}
        model_group.add_argument(flag, type=kind, default=None, help=text, **extra)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help=f"global batch size in examples, split across processes (default: "
                            f"{DEFAULTS['batch_size']})")
    optim.add_argument("--eval-batch-size", type=int, default=None, metavar="N",
                       help="validation batch size per process (default: the per-process training batch)")
    optim.add_argument("--lr", type=float, default=None,
                       help=f"initial Adam learning rate, betas (0.95, 0.9995) (default: {DEFAULTS['lr']:g})")
    optim.add_argument("--lr-decay", type=float, default=None,
                       help="learning-rate decay factor per step: step s uses lr * decay**s "
                            f"(default: {DEFAULTS['lr_decay']})")
    optim.add_argument("--ema-decay", type=float, default=None,
                       help="decay per step of the Polyak (exponential moving) average of the weights, "
                            f"which evaluation uses; 0 disables it (default: {DEFAULTS['ema_decay']})")
    optim.add_argument("--grad-clip", type=float, default=None, metavar="NORM",
                       help="clip the global gradient L2 norm to NORM (default: no clipping)")
    optim.add_argument("--seed", type=int, default=None,
                       help=f"seed of initialisation, data order and dropout (default: {DEFAULTS['seed']})")

    stop = parser.add_argument_group("duration (the first limit reached stops; with none, 10 epochs)")
    stop.add_argument("--epochs", type=int, default=None, help="passes over the training split")
    stop.add_argument("--max-steps", type=int, default=None, help="total optimizer steps, resumed runs included")
    stop.add_argument("--max-minutes", type=float, default=None,
                      help="wall-clock minutes of this invocation")
    stop.add_argument("--eval-every", type=_interval, default=None, metavar="INTERVAL",
                      help="validate every N steps, Nmin minutes or 'epoch' "
                           f"(default: {DEFAULTS['eval_every']})")
    stop.add_argument("--checkpoint-every", type=_interval, default=None, metavar="INTERVAL",
                      help="write last.pt every N steps, Nmin minutes or 'epoch' "
                           f"(default: {DEFAULTS['checkpoint_every']})")
    stop.add_argument("--log-every", type=int, default=None, metavar="STEPS",
                      help=f"steps per metrics.jsonl line (default: {DEFAULTS['log_every']})")

    hardware = parser.add_argument_group("hardware")
    add_device_arguments(hardware, training=True)
    hardware.add_argument("--num-workers", type=int, default=None,
                          help=f"DataLoader worker processes per training process (default: "
                               f"{DEFAULTS['num_workers']})")
    hardware.add_argument("--compile", action="store_true", default=None,
                          help="run the network through torch.compile, or eagerly with a warning if compiling "
                               "fails. Compiling takes minutes before the first step, and on a 2-core CPU "
                               "compiled PixelCNN++ training was slower than eager, so this is off by default")

    add_data_arguments(parser, required=False, training=True)
    for action in parser._actions:
        if action.dest == "segment_length":
            action.help = ("length in samples of the random audio crops used for training (required for audio "
                           "data, unused for images); clips shorter than it are skipped with a logged count")
    parser.set_defaults(handler=run)
    return parser


def _hyperparameters_from_args(args: argparse.Namespace, model: str) -> dict[str, Any]:
    accepted = model_hyperparameters(model)
    hyperparameters = {}
    for flag, (keyword, _, _) in MODEL_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if keyword not in accepted:
            usable = [name for name, (key, _, _) in MODEL_FLAGS.items() if key in accepted]
            raise UsageError(f"{flag} does not apply to {model}; its size flags are {', '.join(usable)}")
        hyperparameters[keyword] = value
    return hyperparameters


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Return the TrainingConfig fields whose flags were given explicitly."""
    names = ("batch_size", "eval_batch_size", "lr", "lr_decay", "epochs", "max_steps", "max_minutes",
             "seed", "device", "precision", "ema_decay", "grad_clip", "num_workers", "eval_every",
             "checkpoint_every", "log_every", "segment_length", "compile")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def build_config(args: argparse.Namespace) -> Any:
    """Resolve the command line (and for --resume the stored run) into a TrainingConfig."""
    from arflows import checkpoint
    from arflows.training import TrainingConfig

    given = _given_settings(args)
    if not args.resume:
        if args.model is None or args.data is None:
            raise UsageError("--model and --data are required for a new run (or pass --resume)")
        if args.data.startswith("wav:") and args.segment_length is None:
            raise UsageError(f"--segment-length is required for audio data ({args.data}): the length in samples "
                             "of the random training crops, for example 4000 (0.5 s at 8 kHz)")
        values = {**DEFAULTS, **given, "model": args.model, "data": args.data, "out": args.out,
                  "hyperparameters": _hyperparameters_from_args(args, args.model),
                  "data_options": data_options_from_args(args)}
        try:
            return TrainingConfig.from_dict(values)
        except ValueError as error:
            raise UsageError(str(error)) from error

    try:
        stored = checkpoint.load_checkpoint(args.out, prefer="last")["config"]
    except checkpoint.CheckpointError as error:
        raise UsageError(f"cannot resume: {error}") from error
    explicit = dict(given)
    if args.model is not None:
        explicit["model"] = args.model
    if args.data is not None:
        explicit["data"] = args.data
    model = args.model or stored["model"]
    hyperparameters = _hyperparameters_from_args(args, model)
    for key, value in hyperparameters.items():
        if stored["hyperparameters"].get(key) != value:
            raise UsageError(f"cannot resume with {key}={value!r}: the run in {args.out} was trained with "
                             f"{key}={stored['hyperparameters'].get(key)!r}")
    for key, value in data_options_from_args(args).items():
        if stored["data_options"].get(key) != value:
            raise UsageError(f"cannot resume with the data option {key}={value!r}: the run in {args.out} "
                             f"used {stored['data_options'].get(key)!r}")
    for key, value in explicit.items():
        if key not in RESUMABLE_OVERRIDES and stored.get(key) != value:
            raise UsageError(f"cannot resume with {key}={value!r}: the run in {args.out} used "
                             f"{stored.get(key)!r}; only {', '.join(RESUMABLE_OVERRIDES)} may change")

    values = {**stored, **{key: value for key, value in given.items() if key in RESUMABLE_OVERRIDES},
              "out": args.out}
    try:
        return TrainingConfig.from_dict(values)
    except ValueError as error:
        raise UsageError(str(error)) from error


def run(args: argparse.Namespace) -> int:
    """Run `arflows train`; return the exit status."""
    from arflows.training import RUN_FILES, ConfigurationError, NonFiniteLossError, train

    config = build_config(args)
    prepare_run_dir(args.out, force=args.force, resume=args.resume, run_files=RUN_FILES)

    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            summary = train(config, resume=args.resume)
    except ConfigurationError as error:
        raise UsageError(str(error)) from error
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return 1

    if summary.signal_number is not None:
        return 128 + summary.signal_number
    return 0

