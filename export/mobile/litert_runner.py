"""Classify images with a kertransfer `.tflite` file and its labels.txt.

A standalone LiteRT runner for edge devices (a Raspberry Pi, a laptop, CI):
it needs only `ai-edge-litert`, `numpy` and `Pillow`, not TensorFlow or
kertransfer. Photos are framed exactly as the run's validation images were:
by `kertransfer_images.py` (a copy of `kertransfer.images` that
`kertransfer export` writes beside the model, with `preprocessing.json`),
or by the installed `kertransfer.images`. That is: EXIF orientation,
transparency onto white, short side resized to `round(image_size /
crop_pct)` (antialiased bilinear), center crop. The `.tflite` takes raw
pixels in `[0, 255]` (normalization is inside the model). Quantized
(int8/uint8) inputs and outputs are handled from the tensors' scale and
zero point.

LiteRT Python API: https://ai.google.dev/edge/litert/inference

Usage:

```
pip install ai-edge-litert pillow numpy
python litert_runner.py RUN_DIR/export/litert/model_int8.tflite ant.jpg bee.png
python litert_runner.py model.tflite ant.jpg --labels labels.txt --top 3
```

A multi-label model (`kertransfer train --csv`) has `thresholds.txt`
beside it (one per line, in `labels.txt` order): each image then gets the
tags whose probability is above their threshold, most probable first.
"""

import argparse
import importlib.util
import os
import sys
import time

import numpy as np


def load_labels(path):
    """Class names, one per line, in the model's output order."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def load_thresholds(path):
    """Per-tag thresholds, one per line in `labels.txt` order (multi-label)."""
    with open(path, encoding="utf-8") as f:
        return np.array([float(line) for line in f if line.strip()])


def tags_above(probabilities, labels, thresholds):
    """`[(tag, probability), ...]` above their thresholds, most probable first."""
    order = np.argsort(-probabilities, kind="stable")
    return [(labels[i], float(probabilities[i])) for i in order
            if probabilities[i] > thresholds[i]]


def make_interpreter(model_path, num_threads=1):
    """A LiteRT interpreter with tensors allocated.

    Uses `ai_edge_litert` (the LiteRT runtime); falls back to
    `tf.lite.Interpreter` when only TensorFlow is installed.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tensorflow.lite import Interpreter
        except ImportError as error:
            raise ImportError(
                "Install the LiteRT runtime: `pip install ai-edge-litert`."
            ) from error
    interpreter = Interpreter(model_path=model_path, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def load_framing(model_path):
    """`(images_module, Framing)` for a `.tflite` written by kertransfer export.

    The framing code is `kertransfer_images.py` beside the model (written by
    the export), else the installed `kertransfer.images`; the framing data
    is `preprocessing.json` beside the model.
    """
    folder = os.path.dirname(os.path.abspath(model_path))
    copy = os.path.join(folder, "kertransfer_images.py")
    if os.path.isfile(copy):
        spec = importlib.util.spec_from_file_location("kertransfer_images", copy)
        images = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(images)
    else:
        try:
            from kertransfer import images
        except ImportError as error:
            raise ImportError(
                f"No kertransfer_images.py beside {model_path} and kertransfer "
                "is not installed. Copy the whole export folder (model, "
                "labels.txt, preprocessing.json, kertransfer_images.py)."
            ) from error
    return images, images.Framing.load(folder)


def preprocess(path, images, framing):
    """Image file -> float32 `(1, image_size, image_size, 3)` in [0, 255]."""
    return images.frame_image(path, framing).astype(np.float32)[None]


def classify(interpreter, pixels):
    """Runs one image; returns float32 probabilities `(num_classes,)`."""
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    if input_detail["dtype"] in (np.int8, np.uint8):
        scale, zero_point = input_detail["quantization"]
        info = np.iinfo(input_detail["dtype"])
        pixels = np.clip(np.round(pixels / scale + zero_point), info.min,
                         info.max)
    interpreter.set_tensor(input_detail["index"],
                           pixels.astype(input_detail["dtype"]))
    interpreter.invoke()
    output = interpreter.get_tensor(output_detail["index"])[0]
    if output_detail["dtype"] in (np.int8, np.uint8):
        scale, zero_point = output_detail["quantization"]
        output = (output.astype(np.float32) - zero_point) * scale
    return output.astype(np.float32)


def top_classes(probabilities, labels, k=5):
    """`[(label, probability), ...]`, best first, at most k."""
    order = np.argsort(-probabilities)[:k]
    return [(labels[i], float(probabilities[i])) for i in order]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Classify images with a LiteRT (.tflite) model.")
    parser.add_argument("model", help=".tflite file")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--labels", default=None,
                        help="labels.txt (default: beside the model)")
    parser.add_argument("--top", type=int, default=5,
                        help="classes to print per image (default: 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="interpreter threads (default: 1)")
    args = parser.parse_args(argv)
    labels_path = args.labels or os.path.join(
        os.path.dirname(os.path.abspath(args.model)), "labels.txt")
    labels = load_labels(labels_path)
    thresholds_path = os.path.join(os.path.dirname(labels_path), "thresholds.txt")
    thresholds = (load_thresholds(thresholds_path)
                  if os.path.isfile(thresholds_path) else None)
    interpreter = make_interpreter(args.model, args.threads)
    images, framing = load_framing(args.model)
    image_size = int(interpreter.get_input_details()[0]["shape"][1])
    if image_size != framing.image_size:
        raise ValueError(
            f"{args.model} takes {image_size} px but preprocessing.json says "
            f"{framing.image_size}: the files come from different exports.")
    for path in args.images:
        pixels = preprocess(path, images, framing)
        start = time.perf_counter()
        probabilities = classify(interpreter, pixels)
        elapsed_ms = (time.perf_counter() - start) * 1000
        if thresholds is not None:
            tags = tags_above(probabilities, labels, thresholds)
            ranked = "tags: " + (", ".join(f"{name} {p:.1%}" for name, p in tags)
                                 or "(none)")
        else:
            ranked = ", ".join(f"{name} {p:.1%}" for name, p in
                               top_classes(probabilities, labels, args.top))
        print(f"{path}: {ranked} ({elapsed_ms:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
