"""`fastmixer` / `python -m fastmixer`: demo, predict, eval, info, bench.

This module holds every subcommand's arguments and imports only the standard library, so `fastmixer --help` and
`fastmixer <command> --help` answer at once: torch, timm and torchvision are imported by the command that runs, inside
its module (`fastmixer.<module>.<function>(args)`, named by the parser's `handler`). The CLI never imports bench/ (not
installed).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

DEFAULT_MODEL = "mixer_b16_224"
PROVIDERS = ("fastmixer", "fastmixer+compile", "timm", "timm+compile", "cublas")  # fastmixer.bench.harness.PROVIDERS
DTYPES = ("fp32", "fp16", "bf16")  # keys of fastmixer.bench.harness.DTYPES


def _command(sub: Any, name: str, add: Callable[[argparse.ArgumentParser], None], handler: str, **kw: Any) -> None:
    """Subcommand `name`: its help line is the first line of add's docstring, its description the rest (unless kw
    has one); add() adds its options; handler ("module:function" in fastmixer) runs it."""
    help, _, description = inspect.cleandoc(add.__doc__ or "").partition("\n\n")
    p = sub.add_parser(name, help=help, **{"description": description, **kw})
    add(p)
    p.set_defaults(handler=handler)


def _model_args(parser: argparse.ArgumentParser) -> None:
    """Options of predict and eval: PIL's image-size limit, then the model group (picks and loads the model;
    fastmixer.cli_common.model_from_args reads it)."""
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="PIL's decompression-bomb limit: images over 2 x N pixels are refused, over N warned about (default: "
        "PIL's N = 89,478,485); 0 removes the limit",
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="timm or fastmixer name, optionally with a tag: mixer_b16_224.goog_in21k, MixerB16 "
        f"(default {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--checkpoint", metavar="FILE", help="local weights: timm .pth/.safetensors, mmpretrain .pth or JAX .npz"
    )
    g.add_argument("--pretrained", action="store_true", help="fetch timm's pretrained weights (needs network or cache)")
    g.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's, else the model's)")
    g.add_argument("--img-size", type=int, help="input resolution (default: the checkpoint's, else the model's)")
    g.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when available)")


def _demo(p: argparse.ArgumentParser) -> None:
    """Mixer-B/16: logits equal timm's, what the fused path changes, an honest speed comparison

    Builds Mixer-B/16, checks its logits against timm's, shows launches, bytes and saved activations (fastmixer vs
    timm), and times both interleaved. On CPU fastmixer runs timm's own math (the fused Triton kernels need a CUDA
    GPU), so no CPU speed-up is claimed; the kernels are checked under the interpreter.
    """
    p.add_argument("--checkpoint", metavar="FILE", help="timm / mmpretrain / JAX checkpoint (default: random weights)")
    p.add_argument("--batch", type=int, help="timing batch (default: 64 on CUDA, 1 on CPU)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument(
        "--interpreted-blocks",
        type=int,
        default=1,
        help="CPU only: B/16 blocks run through the interpreted Triton kernels against timm (default 1; 0: skip; "
        "about a minute per block on 2 cores)",
    )


def _predict(p: argparse.ArgumentParser) -> None:
    """classify images with a Mixer (timm preprocessing, ImageNet labels)

    Classify images with a Mixer, using the model's own timm preprocessing; prints the top-k classes (scores to 4
    significant digits; --json keeps full precision). A file that cannot be read as an image stops the command with
    one line naming it (exit status 2).
    """
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) (anything PIL reads)")
    p.add_argument("--topk", type=int, default=5, help="how many classes to list (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image (full-precision scores)")
    _model_args(p)


def _eval(p: argparse.ArgumentParser) -> None:
    """top-1/top-5 accuracy on an ImageFolder directory

    Top-1/top-5 accuracy on DIR/<class>/<image>. Class folders sorted by name map to class 0, 1, ...; ImageNet
    synset folders (n01440764, ...) map to their own ImageNet index when the head has that many classes. Images that
    cannot be read are skipped with one warning line each (--strict: stop at the first).
    """
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root (e.g. ImageNet val by synset)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image (exit status 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (full precision)")
    _model_args(p)


def _info(p: argparse.ArgumentParser) -> None:
    """parameters, GFLOPs and input size of a Mixer

    Parameters, per-image GFLOPs (analytic), input size and shapes of a Mixer variant.
    """
    p.add_argument("model", metavar="MODEL", help="mixer_b16_224[.tag], fastmixer_l16_224, MixerH14, ...")
    p.add_argument("--img-size", type=int, help="input resolution (default: the architecture's)")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the architecture's)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


_BENCH_DESCRIPTION = """\
fastmixer vs timm eager vs torch.compile, side by side in one run; with --count(-only), kernel launches and HBM bytes
per forward/backward (counted without a GPU) and a roofline MODEL of the time on an H100.

Providers: fastmixer (fused Triton kernels on CUDA; on CPU the reference PyTorch path, timm's own math),
fastmixer+compile, timm (eager), timm+compile, cublas (only the model's GEMMs through torch.mm: cuBLAS on CUDA, the
practical limit; on CPU a CPU matmul reference, not a limit). Levels: model (b16, l16, ...; inference / training)
and op (token_mix / channel_mix; forward / forward+backward).

The tables go to stdout once. Files (JSON, Markdown, PNG) are written only with --out DIR."""


def _bench(p: argparse.ArgumentParser) -> None:
    """fastmixer vs timm eager vs torch.compile vs bare GEMMs (tables; JSON/Markdown/PNG with --out)"""
    p.add_argument("--models", default="b16,l16", help="variants, comma-separated ('none' for no model level)")
    p.add_argument("--ops", default="token_mix,channel_mix", help="fused ops at --op-variant shapes ('none': skip)")
    p.add_argument("--op-variant", default="b16", help="variant whose shapes the op-level cases use")
    p.add_argument("--batch", default=None, help="batch sizes, comma-separated (default: 256 on CUDA, 1 on CPU)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--modes", default="inference,training,forward,forward+backward", help="modes to run")
    p.add_argument("--providers", default=",".join(PROVIDERS), help=f"subset of {','.join(PROVIDERS)}")
    p.add_argument("--blocks", type=int, default=None, help="depth override (default: full on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed calls (default: 20 on CUDA, 3 on CPU)")
    p.add_argument("--cpu-compile", default="forward", help="CPU torch.compile policy: none|forward|inference|all")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; later cases are recorded as skipped")
    p.add_argument("--count", action="store_true", help="also count launches / HBM bytes (no GPU needed)")
    p.add_argument("--count-only", action="store_true", help="only the counts, no timing")
    p.add_argument("--out", metavar="DIR", help="write <name>.json, .md and .png into DIR (default: no files)")
    p.add_argument("--name", default=None, help="file stem (default: <date>-<device>)")
    p.add_argument(
        "--from-json",
        metavar="FILE",
        help="re-render the tables (and with --out, the files) of a saved report JSON, without measuring",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; building it imports nothing beyond the standard library."""
    parser = argparse.ArgumentParser(prog="fastmixer", description="MLP-Mixer with fused Triton kernels (timm drop-in)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(sub, "demo", _demo, "demo:main")
    _command(sub, "predict", _predict, "predict:run")
    _command(sub, "eval", _eval, "evaluate:run")
    _command(sub, "info", _info, "info:run")
    raw = argparse.RawDescriptionHelpFormatter
    _command(sub, "bench", _bench, "bench.harness:main", description=_BENCH_DESCRIPTION, formatter_class=raw)
    return parser


def _handler(spec: str):
    module, function = spec.split(":")
    return getattr(importlib.import_module(f"fastmixer.{module}"), function)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_handler(args.handler)(args) or 0)
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        # bad input and failed fetches/loads: one message, no traceback (OSError covers FileNotFoundError)
        print(f"fastmixer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastmixer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
