"""What a run logs besides metrics: the figure thread, the sample grids drawn once, the mosaic."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hw4 import artifacts, plots
from hw4.data import RawData

CLASSES = [f"class {i}" for i in range(10)]


def raw_data(seed: int = 0) -> RawData:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=30)
    return RawData(images, labels, images[::-1].copy(), labels[::-1].copy())


class FakeRun:
    def __init__(self):
        self.logged: dict[str, bytes] = {}

    def log_bytes(self, data: bytes, name: str) -> None:
        self.logged[name] = data


def test_background_work_runs_on_one_other_thread_and_wait_reraises_its_error():
    threads = []
    with pytest.raises(ValueError, match="figure broke"):
        with artifacts.Background() as background:
            background.submit("a", lambda: threads.append(threading.current_thread()))
            background.submit("b", lambda: (_ for _ in ()).throw(ValueError("figure broke")))
            background.submit("c", lambda: threads.append(threading.current_thread()))
            background.wait()
    assert len(threads) == 2 and threads[0] is threads[1] is not threading.main_thread()
    assert set(background.timings.background) == {"a", "b", "c"}


def test_leaving_with_an_error_cancels_work_not_yet_started():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with artifacts.Background() as background:
            background.submit("slow", lambda: (time.sleep(0.2), done.append("slow")))
            background.submit("later", lambda: done.append("later"))
            raise KeyboardInterrupt
    assert done == ["slow"]  # the running piece finished before the block was left; the next never ran


def test_a_clean_exit_waits_for_all_work():
    done = []
    with artifacts.Background() as background:
        background.submit("slow", lambda: (time.sleep(0.1), done.append(1)))
    assert done == [1]


def test_sample_grids_are_drawn_once_per_dataset_and_logged_by_every_run(monkeypatch):
    drawn = []
    real_grid = plots.image_grid
    monkeypatch.setattr(plots, "image_grid", lambda *a, **k: drawn.append(1) or real_grid(*a, **k))
    monkeypatch.setattr(artifacts, "_sample_grid_pngs", {})
    first, second, other = FakeRun(), FakeRun(), FakeRun()
    raw = raw_data()
    artifacts.log_sample_grids(first, raw, "digest-a", CLASSES)
    artifacts.log_sample_grids(second, raw, "digest-a", CLASSES)
    assert len(drawn) == 2  # dev and test, once
    assert first.logged == second.logged and set(first.logged) == {artifacts.SAMPLES_DEV, artifacts.SAMPLES_TEST}
    assert all(png.startswith(b"\x89PNG") for png in first.logged.values())
    artifacts.log_sample_grids(other, raw_data(1), "digest-b", CLASSES)  # other data: drawn anew
    assert len(drawn) == 4 and other.logged[artifacts.SAMPLES_DEV] != first.logged[artifacts.SAMPLES_DEV]


def test_image_grid_is_one_mosaic_of_the_images_with_their_titles():
    raw = raw_data()
    titles = [f"GT: {i}\nP: {i}" for i in range(25)]
    figure = plots.image_grid(raw.x_dev[:25], titles, title="first images")
    (ax,) = figure.axes
    (image,) = ax.get_images()
    mosaic = np.asarray(image.get_array())
    texts = [t.get_text() for t in ax.texts]
    assert texts == titles
    # every image sits in the mosaic, scaled to [0, 1], row by row
    side = 28
    cell_w = mosaic.shape[1] // 5
    cell_h = mosaic.shape[0] // 5
    for i in (0, 7, 24):
        top, left = (i // 5) * cell_h, (i % 5) * cell_w
        cell = mosaic[top : top + cell_h, left : left + cell_w]
        found = [
            np.allclose(cell[r : r + side, c : c + side], raw.x_dev[i] / 255.0)
            for r in range(cell_h - side + 1)
            for c in range(cell_w - side + 1)
        ]
        assert any(found), f"image {i} is not in its cell"
    assert plots.png_bytes(figure).startswith(b"\x89PNG")
