"""The test set's loss, accuracy, predictions and confusion matrix, from one compiled pass of
predictions (the step's `predict`), and the best epoch of a history."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence

import keras
import numpy as np
from sklearn.metrics import confusion_matrix

from hw4 import names
from hw4.data import Splits
from hw4.training import compile, step
from hw4.training.batches import stacked


@dataclass
class Evaluation:
    test_loss: float
    test_accuracy: float
    probabilities: np.ndarray
    predicted: np.ndarray
    confusion: np.ndarray

    def metrics(self) -> dict[str, float]:
        return {names.TEST_LOSS: self.test_loss, names.TEST_ACCURACY: self.test_accuracy}


# One predict program per architecture and dtype policy, kept for the process: a pure program
# takes the weights as input, so a sweep's runs (members or jobs one after another) share one
# trace and compile instead of paying one each.
_PREDICT: OrderedDict[str, compile.Compiled] = OrderedDict()
PREDICT_PROGRAMS_KEPT = 8  # the latest architectures (an Optuna search over widths makes many)


def _predict_program(model: keras.Model) -> compile.Compiled:
    shapes = [tuple(w.shape) for w in model.weights]
    key = json.dumps(
        [type(model).__name__, model.get_config(), keras.config.dtype_policy().name, shapes],
        sort_keys=True,
        default=str,
    )
    if key not in _PREDICT:
        programs = step.programs(model, schedule=1.0, augment=None, value_and_grad=compile.value_and_grad)
        _PREDICT[key] = compile.Compiled(programs.predict, jit=False)
        while len(_PREDICT) > PREDICT_PROGRAMS_KEPT:
            _PREDICT.popitem(last=False)
    _PREDICT.move_to_end(key)
    return _PREDICT[key]


def predict(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities of `x`, in batches of `batch_size`, by one compiled program."""
    batches = stacked(x, None, batch_size)
    weights: tuple[list, list, list] = (
        [keras.ops.convert_to_tensor(v) for v in model.trainable_variables],
        [keras.ops.convert_to_tensor(v) for v in model.non_trainable_variables],
        [],
    )
    (out,) = compile.split(_predict_program(model)(compile.join([(weights,)]), (compile.tensor(batches.x),)), 1)
    return compile.as_numpy(out).reshape(-1, out.shape[-1])[: batches.n]


def evaluate(model: keras.Model, splits: Splits, batch_size: int) -> Evaluation:
    """Test loss, accuracy and confusion matrix from one pass of predictions over the test set."""
    probabilities = predict(model, splits.x_test, batch_size)
    predicted = probabilities.argmax(axis=1)
    labels = splits.test_labels
    loss = keras.losses.get(step.LOSS)(keras.ops.convert_to_tensor(splits.y_test), probabilities)
    n_classes = splits.y_test.shape[1]
    return Evaluation(
        test_loss=float(keras.ops.mean(loss)),
        test_accuracy=float(np.mean(predicted == labels)),
        probabilities=probabilities,
        predicted=predicted,
        confusion=confusion_matrix(labels, predicted, labels=list(range(n_classes))),
    )


def best_epoch(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The best-epoch metrics of a history: highest validation accuracy (its first epoch on a
    tie, as EarlyStopping counts), its 0-based epoch, and the lowest validation loss."""
    accuracy = history.get(names.VAL_ACCURACY) or []
    if not accuracy:
        return {}
    best = int(np.argmax(accuracy))
    return {
        names.BEST_VAL_ACCURACY: float(accuracy[best]),
        names.BEST_EPOCH: best,
        names.BEST_VAL_LOSS: float(np.min(history[names.VAL_LOSS])),
    }
