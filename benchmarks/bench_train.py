"""Training speed: hw4's training path against the homework's plain Keras code.

    python benchmarks/bench_train.py --model lenet --epochs 3
    python benchmarks/bench_train.py --model mlp --epochs 5 --rounds 2 --write BENCHMARKS.md
    python benchmarks/bench_train.py --model lenet --variants hw4 --lever bf16=trainer.precision=mixed_bfloat16
    python benchmarks/bench_train.py --model mlp --variants reference hw4 --lever jax=env:KERAS_BACKEND=jax

Each measurement runs in its own subprocess (so peak memory is its own), alternating between
the variants in every round:

- reference: the homework's code path, pixels / 255.0 (float64 arrays) straight into
  model.fit, no tracking;
- hw4: the framework's path (hw4.data.prepare, the run as the one member of hw4.training.loop
  with its per-epoch checkpoint and MLflow callbacks) logging to a temporary sqlite store;
- hw4-untracked: the hw4 path with MLflow logging off (tracking overhead = hw4 / this).

Reported per variant: median and fastest epoch seconds over all rounds' epochs after the first,
samples per second, ratio to the reference, final validation accuracy, peak resident memory;
also the start-up time of `hw4-train --help`, the model's training FLOPs per sample (3x the
forward pass, from the layer shapes) and the achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"
VARIANTS = ("reference", "hw4", "hw4-untracked")
# Overrides a variant adds to --set: filled by --lever.
VARIANT_SET: dict[str, list[str]] = {}
MODELS = ("lenet", "mlp")


def compose_config(args: argparse.Namespace):
    """hw4-train's config for this model, with the benchmark's epochs and the --set overrides."""
    from hydra import compose, initialize_config_dir

    from hw4.config import CONFIG_DIR, register_configs

    register_configs()
    overrides = [f"model={args.model}", f"trainer.epochs={args.epochs}",
                 f"trainer.batch_size={args.batch_size}", "trainer.verbose=0", *args.set,
                 *VARIANT_SET.get(args.variant, [])]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def forward_flops(model) -> int:
    """Multiply-adds x 2 of the Dense and Conv2D layers for one sample."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            flops += 2 * kh * kw * cin * cout * h * w
    return flops


def run_variant(args: argparse.Namespace) -> dict:
    """One measurement, in this (child) process."""
    import keras
    import numpy as np
    from omegaconf import OmegaConf

    from hw4 import data, steps
    from hw4.runtime.signals import RunSignals
    from hw4.training import callbacks as epoch_callbacks
    from hw4.training import loop, runtime

    cfg = compose_config(args)
    model_cfg, trainer = cfg.model, cfg.trainer
    raw = data.load(args.data_dir, n_classes=10)

    times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    if args.variant == "reference":
        # The homework: its LeNet-5 with C5 as a convolution, float64 arrays, one-hot labels,
        # the same stratified 8:2 split and initial weights.
        keras.utils.set_random_seed(0)
        if "c5_as_dense" in model_cfg:
            model_cfg = OmegaConf.merge(model_cfg, {"c5_as_dense": False})
        model = runtime.build_model(model_cfg, num_classes=10)
        splits = data.prepare(raw, model_cfg.input_shape, n_classes=10)
        x_train = splits.x_train.astype(np.float64)  # what `x / 255.0` on uint8 gives
        x_val = splits.x_val.astype(np.float64)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy",
                      metrics=["categorical_accuracy"])  # fmt: skip
        history = model.fit(
            x_train, splits.y_train, validation_data=(x_val, splits.y_val),
            epochs=args.epochs, batch_size=args.batch_size, verbose=0, callbacks=[EpochTimer()],
        ).history  # fmt: skip
    else:
        runtime.configure_runtime(trainer)  # seed, dtype policy, threads
        model = runtime.build_model(model_cfg, num_classes=10, seed=trainer.seed)
        splits = data.prepare(raw, model_cfg.input_shape, n_classes=10)
        runtime.compile_model(model, keras.optimizers.Adam(1e-3))
        settings = steps.loop_settings(cfg, model, len(splits.x_train))  # as a run: XLA by trainer.jit_compile

        def fit(callbacks: list) -> dict:
            member = loop.Member(model=model, callbacks=callbacks, seed=trainer.seed, peak=1e-3)
            with RunSignals() as signals:
                loop.train([member], splits, settings, signals)
            return member.history

        callbacks: list = [EpochTimer()]
        with tempfile.TemporaryDirectory() as tmp:
            if args.variant != "hw4-untracked":  # hw4 and the levers
                from hw4 import checkpoints, tracking

                client = tracking.connect(tracking.resolve_uri("sqlite:///mlflow.db", tmp))
                experiment = tracking.get_or_create_experiment(client, "bench", None)
                with tracking.start_run(client, experiment, "bench") as run:
                    callbacks += [
                        checkpoints.EpochCheckpoint(Path(tmp) / "ckpt"),
                        epoch_callbacks.EpochMetricsLogger(run.log_metrics),
                    ]
                    history = fit(callbacks)
            else:
                history = fit(callbacks)
    return {
        "variant": args.variant,
        "epoch_times": times,
        "train_samples": len(splits.x_train),
        "val_accuracy": float(history["val_categorical_accuracy"][-1]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_flops_per_sample": 3 * forward_flops(model),
    }


def summarize(rounds: list[dict]) -> dict:
    """Pool every round's epochs after the first (the first one also traces and compiles).

    The median is the headline; the fastest epoch shows the speed without the machine's
    noise (on a shared 2-core VM, epochs of one process switch between two speeds).
    """
    steady = [t for r in rounds for t in (r["epoch_times"][1:] or r["epoch_times"])]
    epoch_s = statistics.median(steady)
    return {
        "epoch_s": epoch_s,
        "fastest_s": min(steady),
        "samples_per_s": rounds[0]["train_samples"] / epoch_s,
        "val_accuracy": statistics.median(r["val_accuracy"] for r in rounds),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
    }


def parse_lever(spec: str) -> tuple[str, list[str]]:
    """NAME=SETTING[,SETTING]: a named hw4 variant and its settings."""
    name, _, settings = spec.partition("=")
    if not name or not settings or name in VARIANTS:
        sys.exit(f"--lever {spec!r}: give NAME=SETTING[,SETTING] with a new name")
    return name, settings.split(",")


def startup_seconds(repeats: int = 3) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(["hw4-train", "--help"], capture_output=True, check=True)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="lenet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of all variants")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--write", help="append the results table to this Markdown file")
    parser.add_argument("--set", nargs="*", default=[], metavar="OVERRIDE",
                        help="hw4-train overrides for all variants, e.g. trainer.jit_compile=true "
                             "(the reference uses only the model's)")  # fmt: skip
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--lever", nargs="*", default=[], metavar="NAME=SETTING[,SETTING]",
                        help="more hw4 variants, each with its own settings: hw4-train overrides, or "
                             "env:VAR=VALUE for the child's environment, e.g. "
                             "bf16=trainer.precision=mixed_bfloat16 onednn_off=env:TF_ENABLE_ONEDNN_OPTS=0")  # fmt: skip
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    levers = dict(parse_lever(spec) for spec in args.lever)
    VARIANT_SET.update({name: [s for s in settings if not s.startswith("env:")] for name, settings in levers.items()})

    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    variants = [*args.variants, *levers]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        for variant in variants:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            env.update(s[len("env:") :].split("=", 1) for s in levers.get(variant, []) if s.startswith("env:"))
            child = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--variant", variant],
                capture_output=True, text=True, env=env,
            )  # fmt: skip
            if child.returncode != 0:
                sys.exit(f"{variant} failed:\n{child.stderr[-3000:]}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            results[variant].append(result)
            print(f"round {round_ + 1} {variant}: epochs {[round(t, 2) for t in result['epoch_times']]}")

    summary = {variant: summarize(rs) for variant, rs in results.items()}
    flops = next(iter(results.values()))[0]["train_flops_per_sample"]
    reference_s = summary.get("reference", {}).get("epoch_s", float("nan"))
    reference_fastest_s = summary.get("reference", {}).get("fastest_s", float("nan"))
    lines = [
        f"### {args.model}, batch {args.batch_size}, {args.epochs} epochs, {args.rounds} round(s)"
        + (f", hw4 with {' '.join(args.set)}" if args.set else ""),
        "",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; Keras from this venv on {os.environ.get('KERAS_BACKEND', 'tensorflow')}; "
        f"training FLOPs per sample: {flops / 1e6:.2f} M; `hw4-train --help`: {startup_seconds():.2f} s",
        "",
        "| variant | epoch s (median) | fastest epoch s | samples/s | vs reference (median, fastest) | GFLOP/s | val acc | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, row in summary.items():
        label = f"{variant} ({', '.join(levers[variant])})" if variant in levers else variant
        lines.append(
            f"| {label} | {row['epoch_s']:.3f} | {row['fastest_s']:.3f} | {row['samples_per_s']:.0f} | "
            f"{row['epoch_s'] / reference_s:.2f}x, {row['fastest_s'] / reference_fastest_s:.2f}x | "
            f"{flops * row['samples_per_s'] / 1e9:.1f} | "
            f"{row['val_accuracy']:.4f} | {row['peak_rss_mb']:.0f} |"
        )
    if {"hw4", "hw4-untracked"} <= set(summary):
        overhead = summary["hw4"]["epoch_s"] / summary["hw4-untracked"]["epoch_s"] - 1
        lines += ["", f"Tracking + checkpoint overhead (hw4 vs hw4-untracked): {overhead:+.1%}"]
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(args.write, "a") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
