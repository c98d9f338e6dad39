"""The homework's Part 3 as a plain Keras script: the baseline `bench_run.py` times hw4-train against.

    python benchmarks/plain_keras_mlp.py --data-dir ../shared/datasets/fashion-mnist --epochs 20 --lr 0.01

No framework, no tracking, no figures: load Fashion-MNIST with Keras' own loader, flatten, scale,
one-hot encode, split 8:2, fit the 784-128-64-10 MLP with Adam at batch 128, evaluate on the test
set, print one JSON line. Keras' loader reads `$KERAS_HOME/datasets/fashion-mnist/`, so the
script points KERAS_HOME at a temporary folder whose `datasets/fashion-mnist` links to
--data-dir (nothing is written beside the data).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--data-dir", required=True)
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

cache = tempfile.mkdtemp(prefix="keras-home-")
(Path(cache) / "datasets").mkdir()
(Path(cache) / "datasets" / "fashion-mnist").symlink_to(Path(args.data_dir).resolve())
os.environ["KERAS_HOME"] = cache

import keras  # noqa: E402  (after KERAS_HOME: Keras reads it on import)
from sklearn.model_selection import train_test_split  # noqa: E402

keras.utils.set_random_seed(args.seed)
(x_dev, y_dev), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
x_dev = x_dev.reshape(-1, 784) / 255.0
x_test = x_test.reshape(-1, 784) / 255.0
y_dev = keras.utils.to_categorical(y_dev, 10)
y_test = keras.utils.to_categorical(y_test, 10)
x_train, x_val, y_train, y_val = train_test_split(x_dev, y_dev, test_size=0.2, random_state=args.seed, stratify=y_dev)

model = keras.Sequential(
    [
        keras.Input(shape=(784,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(
    optimizer=keras.optimizers.Adam(args.lr),
    loss="categorical_crossentropy",
    metrics=["categorical_accuracy"],
)
start = time.perf_counter()
history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=128, verbose=0)
fit_s = time.perf_counter() - start
test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
print(json.dumps({"test_accuracy": test_accuracy, "test_loss": test_loss, "fit_s": fit_s,
                  "val_accuracy": history.history["val_categorical_accuracy"][-1]}))  # fmt: skip
