"""What `learn`, `data`, `interp`, `learn.fit(...)` and `learn.lr_find()` show
as a notebook cell's value (their `repr` and `_repr_html_`), on tiny data."""

import numpy as np
import pytest

from kertransfer.interpret import ClassificationInterpretation
from kertransfer.interpret import MultiLabelInterpretation
from kertransfer.learner import ConvLearner
from kertransfer.recorder import FitRecord
from kertransfer.recorder import LRFindResult
from kertransfer.reprs import short_list

# conftest's `synthetic_folder`: 48 training and 8 validation images per class.
LAYOUT = {"train": {"ants": 48, "bees": 48}, "valid": {"ants": 8, "bees": 8}}


@pytest.fixture(scope="module")
def learn(tiny_data):
    """A tiny learner (nothing compiled: building the model is cheap on every backend)."""
    return ConvLearner.pretrained("tiny_cnn", tiny_data, precompute=True, weights=None)


@pytest.mark.one_backend  # the data's text only
def test_data_repr_gives_classes_size_and_images_per_split(tiny_data):
    text = repr(tiny_data)
    assert text.splitlines()[0] == f"ImageClassifierData(path={str(tiny_data.path)!r})"
    rows = dict(line.strip().split(": ", 1) for line in text.splitlines()[1:])
    assert rows["classes (2)"] == "ants, bees"
    assert rows["image size"] == "32 px"
    assert rows["batch size"] == "16"
    for split, counts in LAYOUT.items():
        per_class = ", ".join(f"{c} {n}" for c, n in counts.items())
        assert rows[split] == f"{sum(counts.values())} ({per_class})"
    assert "test" not in rows and "skipped" not in rows
    html = tiny_data._repr_html_()
    assert "<table>" in html and "<th" in html and "96 (ants 48, bees 48)" in html


def test_learner_repr_gives_arch_groups_frozen_and_params(learn):
    lines = repr(learn).splitlines()
    assert lines[0] == "ConvLearner(arch='tiny_cnn', weights=None)"
    rows = dict(line.strip().split(": ", 1) for line in lines[1:])
    assert rows["classes (2)"] == "ants, bees"
    assert rows["image size"] == "32 px"
    assert rows["images"] == "96 train, 16 valid (batch size 16)"
    assert rows["layer groups"] == "group0, group1, head"
    assert rows["frozen to"] == "group 2 (trains head)"
    assert rows["precompute"] == "True"
    # Counted by hand: tiny_cnn's convs 3*3*3*8+8 and 3*3*8*16+16, its BNs 4*8
    # and 4*16; the head on concat-pooled 2*16 features: BN 4*32, Dense
    # 32*512+512, BN 4*512, Dense 512*2+2. Frozen: the head's dense layers
    # and its BNs' scale and offset train.
    total = 224 + 1168 + 32 + 64 + 128 + 16896 + 2048 + 1026
    trainable = 16896 + 1026 + 2 * 32 + 2 * 512
    assert rows["parameters"] == f"{total:,} ({trainable:,} trainable)"
    assert rows["epochs trained"] == "0"
    learn.unfreeze()
    learn.history = [{"epoch": 1, "stage": "unfrozen", "loss": 0.7, "val_loss": 0.61234, "val_accuracy": 0.75}]
    try:
        rows = dict(line.strip().split(": ", 1) for line in repr(learn).splitlines()[1:])
        assert rows["frozen to"] == "group 0 (trains group0, group1, head)"
        assert rows["precompute"] == "False"
        # Unfrozen: all but the BNs' moving mean and variance.
        assert rows["parameters"] == f"{total:,} ({total - 2 * (8 + 16 + 32 + 512):,} trainable)"
        assert rows["epochs trained"] == "1 (last: unfrozen, val_loss 0.6123, val_accuracy 0.7500)"
    finally:
        learn.history = []
        learn.freeze()
        learn.precompute = True
    assert learn._repr_html_().startswith("<div><b>ConvLearner(arch=&#x27;tiny_cnn&#x27;")


@pytest.mark.one_backend  # numpy only
def test_interpretation_repr_by_hand():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    interp = ClassificationInterpretation(probs, [0, 1, 1], ["<cat>", "dog"])
    assert repr(interp) == "\n".join([
        "ClassificationInterpretation(3 items, 2 classes)",
        "  classes: <cat>, dog",
        "  accuracy: 0.6667 (1 wrong)",
        "  most confused: dog as <cat> 1",
        f"  top loss: {-np.log(0.4):.4f} (a dog predicted <cat>)",
        "  image paths: none (the image plots need them)",
    ])
    html = interp._repr_html_()
    assert "&lt;cat&gt;" in html and "<cat>" not in html
    multi = MultiLabelInterpretation([[0.9, 0.2], [0.6, 0.7]], [[1, 0], [0, 1]], ["clear", "water"], 0.5)
    # F2 per item: item 0 exact (1); item 1 tp=1, fp=1: 5*0.5*1 / (4*0.5 + 1) = 5/6.
    assert repr(multi).splitlines() == [
        "MultiLabelInterpretation(2 items, 2 tags)",
        "  tags: clear, water",
        "  thresholds: 0.5",
        f"  F2 (samples): {(1 + 5 / 6) / 2:.4f}",
    ]


@pytest.mark.one_backend  # numpy only
def test_recorder_reprs():
    lrs = np.geomspace(1e-5, 1.0, 11)
    result = LRFindResult(lrs, [1.0] * 11, np.linspace(1, 0, 11), 16)
    assert repr(result).startswith("LRFindResult(11 batches of 16, lr 1e-05 to 1, suggestions: ")
    assert repr(LRFindResult([], [], [], 8)) == "LRFindResult(no batches, batch_size=8)"
    record = FitRecord(np.zeros((6, 2)), ["group1", "head"], [0.5] * 6, 3, "unfrozen")
    assert repr(record) == "FitRecord(stage='unfrozen', 6 batches (3 per epoch), groups group1, head)"
    assert short_list("abcdefghij", limit=3) == "a, b, c, ..."
