"""The default input pipeline against Keras' own shuffle of in-memory arrays, side by side.

    python benchmarks/bench_pipeline.py --model lenet --epochs 5 --rounds 3

hw4's `numpy` pipeline (hw4.training.EpochOrder) gathers batches from the arrays in memory in
an order drawn from (seed, epoch), so that every epoch is reshuffled and a resumed run repeats
the uninterrupted one. Keras' own path (arrays straight into model.fit with shuffle=True) repeats
one order in every epoch once a seed is set. This script checks that the fix costs no speed:
each variant trains in its own process, alternating in every round, with the same model,
optimizer, compile settings and data; epoch times are pooled over the rounds, leaving out each
process's first epoch (tracing). It also reports each variant's final validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"
VARIANTS = ("keras-shuffle", "hw4-epoch-order")


def train(variant: str, model_name: str, epochs: int, data_dir: str) -> dict:
    """One training run in this process; returns its epoch times and final validation accuracy."""
    sys.path.insert(0, str(REPO))
    import keras
    from omegaconf import OmegaConf

    from hw4 import data, models, training
    from hw4.config import TrainerConfig

    shape = [784] if model_name == "mlp" else [28, 28, 1]
    splits = data.prepare(data.load(data_dir, 10), shape, 10)
    trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"epochs": epochs, "verbose": 0})
    training.configure_runtime(trainer)
    model = models.mlp(shape) if model_name == "mlp" else models.lenet(shape)
    training.compile_model(model, keras.optimizers.Adam(1e-3), trainer.jit_compile, trainer.steps_per_execution)
    times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.started)

    if variant == "hw4-epoch-order":
        history = training.fit(model, splits, trainer, [EpochTimer()])
    else:
        history = model.fit(
            splits.x_train, splits.y_train, validation_data=(splits.x_val, splits.y_val),
            batch_size=trainer.batch_size, validation_batch_size=trainer.eval_batch_size,
            epochs=epochs, verbose=0, shuffle=True, callbacks=[EpochTimer()],
        ).history  # fmt: skip
    return {"epochs": times[1:], "val_accuracy": history["val_categorical_accuracy"][-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "lenet"), default="lenet")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(train(args.variant, args.model, args.epochs, args.data_dir)))
        return

    pooled: dict[str, list[float]] = {v: [] for v in VARIANTS}
    accuracy: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_number in range(1, args.rounds + 1):
        for variant in VARIANTS:
            child = [sys.executable, __file__, "--variant", variant, "--model", args.model,
                     "--epochs", str(args.epochs), "--data-dir", args.data_dir]  # fmt: skip
            result = subprocess.run(child, capture_output=True, text=True, check=True)
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            pooled[variant] += measured["epochs"]
            accuracy[variant].append(measured["val_accuracy"])
            print(f"round {round_number} {variant}: epochs {[round(t, 2) for t in measured['epochs']]}", flush=True)

    print(f"\n### {args.model}, {args.epochs} epochs, {args.rounds} round(s), epochs after the first pooled\n")
    print("| variant | epoch s (median) | fastest epoch s | val acc per round |")
    print("|---|---|---|---|")
    for variant in VARIANTS:
        times = pooled[variant]
        accuracies = ", ".join(f"{a:.4f}" for a in accuracy[variant])
        print(f"| {variant} | {statistics.median(times):.3f} | {min(times):.3f} | {accuracies} |")
    new, old = pooled["hw4-epoch-order"], pooled["keras-shuffle"]
    print(
        f"\nhw4-epoch-order / keras-shuffle: {statistics.median(new) / statistics.median(old):.2f}x median, "
        f"{min(new) / min(old):.2f}x fastest"
    )


if __name__ == "__main__":
    main()
