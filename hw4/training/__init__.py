"""The training core, split by what changes in each module:

    step.py       the training step and the epoch's programs, written once on Keras 3's stateless API
    compile.py    how the backend (TensorFlow or JAX) compiles them and runs K members side by side
    batches.py    each epoch's batch order and augmentation draws (NumPy, per seed)
    loop.py       the epoch loop over a program's members, with fit's callbacks per member
    callbacks.py  the per-epoch duties: metrics, best epoch and early stopping, pruning, progress
    schedules.py  the learning rate over training (conf/schedule's factories) and the optimizer
    warmup.py     LinearWarmup, the Keras schedule of a warm-up
    evaluate.py   the test set's metrics and the best epoch of a history
    runtime.py    seeds, dtype policy, threads, compile cache; the model from its config

Imports Keras: hw4.train imports it only once training really starts.
"""
