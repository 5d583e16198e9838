"""``qwen-vla-ros make-checkpoint``, ``qwen-vla-ros bench`` and ``qwen-vla-ros export``.

Registering the subcommands must not import torch (every ``qwen-vla-ros`` call would pay
for it), so the handlers import the model modules when they run.
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from qwen_vla_ros.errors import InvalidArgumentError

if TYPE_CHECKING:  # loading imports torch; see the module docstring
    from qwen_vla_ros.model.loading import BackendOptions

SIZES = ("tiny", "small", "full")


def _make_checkpoint(args: argparse.Namespace) -> int:
    from qwen_vla_ros.model.build import build_model, make_checkpoint

    if args.dry_run:
        counts = build_model(args.size, seed=args.seed, device="meta").parameter_counts()
        print(json.dumps({"size": args.size, "parameters": counts}, indent=2))
        return 0
    if not args.out:
        raise InvalidArgumentError("make-checkpoint needs an output directory OUT (or --dry-run)")
    root = make_checkpoint(args.size, args.out, seed=args.seed)
    print(f"wrote {args.size} checkpoint to {root}")
    return 0


def add_make_checkpoint_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-checkpoint",
        help="write a randomly initialised Qwen-VLA checkpoint that really loads (nothing is downloaded)",
    )
    parser.add_argument("--size", choices=SIZES, required=True,
                        help="tiny: tests; small: CPU benchmarks; full: Qwen3.5-4B + 1.15B DiT shapes (~10 GB in bf16)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (%(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="build shapes only (meta device) and print parameter counts")
    parser.add_argument("out", nargs="?", help="new checkpoint directory (not needed with --dry-run)")
    parser.set_defaults(handler=_make_checkpoint)


def _backend_options(args: argparse.Namespace) -> BackendOptions:
    from qwen_vla_ros.config.runtime import OnnxRuntimeSettings, TensorRTSettings
    from qwen_vla_ros.model.loading import BackendOptions

    onnxruntime = OnnxRuntimeSettings(
        model_dir=args.onnx_dir, intra_op_threads=args.ort_threads, optimization_level=args.ort_optimization,
        precision=args.ort_precision, spin_wait=args.ort_spin_wait,
    )
    tensorrt = TensorRTSettings(onnx_dir=args.onnx_dir, precision=args.trt_precision)
    return BackendOptions(cuda_graphs=not args.no_cuda_graphs, flush_denormals=not args.keep_denormals,
                          onnxruntime=onnxruntime, tensorrt=tensorrt)


def _bench(args: argparse.Namespace) -> int:
    from qwen_vla_ros.model.bench import bench_embodiment, format_report, run_bench

    if bool(args.checkpoint) == bool(args.size):
        raise InvalidArgumentError("give exactly one of --checkpoint DIR or --size tiny|small|full")
    options = _backend_options(args)
    if args.checkpoint:
        from qwen_vla_ros.model.loading import load_policy

        policy = load_policy(args.checkpoint, backend=args.backend, device=args.device, dtype=args.dtype,
                             options=options)
    else:
        if args.backend != "torch":
            raise InvalidArgumentError(f"--backend {args.backend} exports a checkpoint: give --checkpoint DIR, not --size")
        from qwen_vla_ros.model.build import build_policy

        policy = build_policy(args.size, device=args.device, dtype=args.dtype, options=options)
    if args.steps is not None:
        policy.num_steps = args.steps
    embodiment = bench_embodiment(args.embodiment, args.cameras)
    report = run_bench(policy, embodiment, args.instruction, runs=args.runs, warmup=args.warmup,
                       compare=args.compare, seed=args.seed, rtc_delay=args.rtc_delay)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="per-stage policy latency (p50/p99) and peak memory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="checkpoint directory")
    source.add_argument("--size", choices=SIZES, help="random weights built in memory instead of a checkpoint")
    parser.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), default="torch",
                        help="what runs the per-step stages (%(default)s)")
    parser.add_argument("--embodiment", default="aloha", help="shipped embodiment name or YAML path")
    parser.add_argument("--instruction", default="pick up the cube and hand it to the other arm",
                        help="task text for the cached prefix (%(default)r)")
    parser.add_argument("--cameras", type=int, default=None, help="use only the first N cameras of the embodiment")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the checkpoint's)")
    parser.add_argument("--runs", type=int, default=20, help="timed inferences (%(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed inferences first (%(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (%(default)s)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="weights and activations (default: float32 on cpu, bfloat16 on cuda)")
    parser.add_argument("--compare", choices=("naive", "torch"), default=None,
                        help="also time, alternating call by call: naive = plain transformers + a DiT recomputing "
                             "cross-attention K/V every step; torch = this policy's modules in torch eager")
    parser.add_argument("--onnx-dir", default=None, help="exported ONNX folder (default: export on demand)")
    parser.add_argument("--ort-threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--ort-optimization", choices=("disable", "basic", "extended", "all"), default="all",
                        help="onnxruntime graph optimisation level (%(default)s)")
    parser.add_argument("--ort-spin-wait", action="store_true", help="onnxruntime threads busy-wait between operators")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="cpu: compute with denormal floats instead of flushing them to zero (both backends)")
    parser.add_argument("--ort-precision", choices=("fp32", "int8"), default="fp32",
                        help="int8: vision, backbone and cross-attention k/v matmul weights quantised (approximate)")
    parser.add_argument("--trt-precision", choices=("fp32", "fp16", "bf16", "fp8"), default="bf16",
                        help="TensorRT engine precision (%(default)s)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="torch on cuda: run eagerly")
    parser.add_argument("--rtc-delay", type=int, default=0,
                        help="time real-time chunking: commit a previous chunk, N actions executing during inference")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and noise (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_bench)


def _export(args: argparse.Namespace) -> int:
    from qwen_vla_ros.model.loading import export_checkpoint

    if args.format != "onnx":
        raise InvalidArgumentError(f"--format must be onnx, got {args.format!r}")
    out = export_checkpoint(args.checkpoint, args.out, max_cameras=args.max_cameras, opset=args.opset,
                            progress=print)
    print(f"wrote ONNX models and export.json to {out}")
    return 0


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export the per-step stages (vision, backbone step, DiT) to ONNX with a manifest"
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="export format (%(default)s)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: the cache the onnxruntime backend reads, "
                             "~/.cache/qwen_vla_ros/onnx/<fingerprint>)")
    parser.add_argument("--max-cameras", type=int, default=8, help="largest camera count the graphs accept")
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset version (%(default)s)")
    parser.set_defaults(handler=_export)
