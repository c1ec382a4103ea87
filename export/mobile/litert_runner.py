"""Classify images with a kertransfer `.tflite` file and its labels.txt.

A standalone LiteRT runner for edge devices (a Raspberry Pi, a laptop, CI):
it needs only `ai-edge-litert`, `numpy` and `Pillow`, not TensorFlow or
kertransfer. The preprocessing matches the export's validation: RGB (GIFs:
first frame), short side resized to the model's input size (bilinear),
center crop; the `.tflite` takes raw pixels in `[0, 255]` (normalization is
inside the model). Quantized (int8/uint8) inputs and outputs are handled
from the tensors' scale and zero point.

LiteRT Python API: https://ai.google.dev/edge/litert/inference

Usage:

```
pip install ai-edge-litert pillow numpy
python litert_runner.py RUN_DIR/export/litert/model_int8.tflite ant.jpg bee.png
python litert_runner.py model.tflite ant.jpg --labels labels.txt --top 3
```
"""

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image


def load_labels(path):
    """Class names, one per line, in the model's output order."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


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


def preprocess(path, image_size):
    """Image file -> float32 `(1, image_size, image_size, 3)` in [0, 255]."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    scale = image_size / min(width, height)
    new_width = max(image_size, round(width * scale))
    new_height = max(image_size, round(height * scale))
    image = image.resize((new_width, new_height), Image.BILINEAR)
    left = (new_width - image_size) // 2
    top = (new_height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, np.float32)[None]


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
    interpreter = make_interpreter(args.model, args.threads)
    image_size = int(interpreter.get_input_details()[0]["shape"][1])
    for path in args.images:
        pixels = preprocess(path, image_size)
        start = time.perf_counter()
        probabilities = classify(interpreter, pixels)
        elapsed_ms = (time.perf_counter() - start) * 1000
        ranked = ", ".join(f"{name} {p:.1%}" for name, p in
                           top_classes(probabilities, labels, args.top))
        print(f"{path}: {ranked} ({elapsed_ms:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
