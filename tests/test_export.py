"""Tests for kertransfer.export and the export/ deployment kit.

A tiny model that follows the trainer's contract (raw pixels in, softmax
out, `ImagePreprocessing` and `AdaptiveConcatPooling2D` inside) is fitted on
40 real hymenoptera photos under the current Keras backend, saved as a run
folder (`model.keras` of Keras's own layers, as `kertransfer train` writes
it: `kertransfer.portable`), then exported once through the CLI entry point
(`export_main`).
Under JAX or torch the export runs in its TensorFlow subprocess, so every
test can run on every backend; TensorFlow itself must be installed (it is a
dependency of the export, not of the backend). `make test` runs the checks on
the exported files (marked `tensorflow`) in the TensorFlow pass only: there,
`test_model_trained_under_other_backend_exports` trains under JAX and torch
and checks their exports, end to end.
"""

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from kertransfer import export as kexport
from kertransfer import images
from kertransfer.images import Framing
from kertransfer.images import frame_images
from kertransfer.layers import AdaptiveConcatPooling2D
from kertransfer.layers import ImagePreprocessing
from kertransfer.no_tensorflow import set_seed
from kertransfer.portable import save_portable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data", "hymenoptera")
if not os.path.isdir(DATA):
    DATA = "/work/shared/data/hymenoptera"
CLASSES = ["ants", "bees"]
IMAGE_SIZE = 64


def _photos(split, per_class):
    pairs = []
    for label, name in enumerate(CLASSES):
        folder = os.path.join(DATA, split, name)
        files = sorted(f for f in os.listdir(folder)
                       if f.lower().endswith((".jpg", ".jpeg")))
        pairs += [(os.path.join(folder, f), label) for f in files[:per_class]]
    return pairs


def build_tiny_model(image_size):
    """Contract-following classifier with ~0.7M weights (2.7 MB).

    Wide convolutions run only at 1/8 resolution, so the weights dominate
    the SavedModel's fixed graph (~100 KB) — the lean-size check is then
    meaningful — while a forward pass stays cheap.
    """
    inputs = keras.Input((image_size, image_size, 3))
    x = ImagePreprocessing(mean=(127.0,) * 3, std=(128.0,) * 3)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(256, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(256, 3, padding="same", activation="relu")(x)
    x = AdaptiveConcatPooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs)


def make_run(run_dir, image_size=IMAGE_SIZE, per_class=20, epochs=6):
    """Fits the tiny model on real photos and writes a trainer run folder."""
    set_seed(0)
    train, val = _photos("train", per_class), _photos("val", per_class)
    x = frame_images([p for p, _ in train], Framing(image_size))
    y = np.array([t for _, t in train])
    model = build_tiny_model(image_size)
    model.compile(keras.optimizers.Adam(1e-3),
                  "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
    os.makedirs(run_dir, exist_ok=True)
    # As `kertransfer train` saves it: Keras's own layers in model.keras.
    save_portable(model, os.path.join(run_dir, "model.keras"),
                  {"classes": CLASSES})
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump({"classes": CLASSES, "image_size": image_size,
                   "arch": "tiny-test"}, f)
    Framing(image_size).save(run_dir)
    np.savez(os.path.join(run_dir, "predictions.npz"),
             paths=np.array([p for p, _ in val]),
             targets=np.array([t for _, t in val]))
    return model, [p for p, _ in val]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def _load_kit_module(relative_path):
    path = os.path.join(REPO, relative_path)
    spec = importlib.util.spec_from_file_location(
        os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run"))
    model, val_paths = make_run(run_dir)
    pixels = frame_images(val_paths, Framing(IMAGE_SIZE))
    reference = np.asarray(model.predict(pixels, verbose=0))
    margin = np.abs(reference[:, 0] - reference[:, 1])
    confident = int(np.argmax(margin))
    return {
        "dir": run_dir,
        "model": model,
        "val_paths": val_paths,
        "reference": reference,
        # The clearest call: decoder rounding (TF vs Pillow, at most one
        # pixel level) cannot flip it, so every path agrees on its class.
        "image": val_paths[confident],
        "top_class": CLASSES[int(reference[confident].argmax())],
    }


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    status = kexport.export_main([
        run["dir"], "--formats", "saved_model,tflite", "--quantize", "all",
        "--representative-images", os.path.join(DATA, "train"),
        "--out", out, "--name", "tiny",
    ])
    assert status == 0
    with open(os.path.join(out, "export_report.json")) as f:
        report = json.load(f)
    return {
        "out": out,
        "saved_model": os.path.join(out, "serving", "tiny", "1"),
        "litert": os.path.join(out, "litert"),
        "report": report,
        "rows": {row["name"]: row for row in report["artifacts"]},
    }


@pytest.fixture(scope="module")
def signatures(exported):
    import tensorflow as tf

    loaded = tf.saved_model.load(exported["saved_model"])
    return loaded.signatures


# --- fast checks, no TensorFlow needed -------------------------------------


def test_frame_images_handles_gif_and_spaces():
    paths = [os.path.join(DATA, "train", "ants", "imageNotFound.gif"),
             os.path.join(DATA, "train", "ants", "ant photos.jpg")]
    pixels = frame_images(paths, Framing(48))
    assert pixels.shape == (2, 48, 48, 3) and pixels.dtype == np.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 255.0


def test_invalid_arguments_explain_the_fix(tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of"):
        kexport.tflite(str(tmp_path), str(tmp_path / "m.tflite"),
                       quantize="int4")
    with pytest.raises(ValueError, match="must end with '.tflite'"):
        kexport.tflite(str(tmp_path), str(tmp_path / "m.tfl"))
    with pytest.raises(ValueError, match="name must be a non-empty folder"):
        kexport.saved_model(str(tmp_path), str(tmp_path), name="a/b")
    with pytest.raises(ValueError, match="version must be a positive int"):
        kexport.saved_model(str(tmp_path), str(tmp_path), version=0)
    with pytest.raises(FileNotFoundError, match="No model.keras"):
        kexport.export(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Image file not found"):
        frame_images([str(tmp_path / "missing.jpg")], Framing(32))
    assert kexport.export_main([str(tmp_path / "missing-run")]) == 2


def test_import_does_not_import_tensorflow():
    code = ("import sys, kertransfer.export; "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, env=_env(KERAS_BACKEND="jax"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_tf_serving_config_parses():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.path.join(REPO, "export", "tf_serving", "models.config")
    with open(path) as f:
        config = text_format.Parse(f.read(),
                                   model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "kertransfer"
    assert model.base_path == "/models/kertransfer"


# --- the serving graph frames photos as validation does ---------------------


def _exif_bytes(orientation, big_endian):
    """A minimal EXIF block (APP1 payload) holding only the Orientation tag."""
    order, pack = (b"MM", ">") if big_endian else (b"II", "<")
    import struct

    ifd = struct.pack(pack + "H", 1) + struct.pack(
        pack + "HHIH2s", 0x0112, 3, 1, orientation, b"\0\0") + b"\0" * 4
    return b"Exif\0\0" + order + struct.pack(pack + "HI", 42, 8) + ifd


def _special_images(folder):
    """Files that exercise every branch of the decode path."""
    from PIL import Image

    photo = Image.open(os.path.join(DATA, "val", "ants", sorted(
        os.listdir(os.path.join(DATA, "val", "ants")))[0])).convert("RGB")
    pixels = np.asarray(photo)
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, pixels.shape[:2]).astype(np.uint8)
    made = {
        "rgba.png": Image.fromarray(np.dstack([pixels, alpha]), "RGBA"),
        "gray_alpha.png": Image.fromarray(np.dstack([pixels[..., 0], alpha]),
                                          "LA"),
        "gray16.png": Image.fromarray(
            (np.asarray(photo.convert("L")).astype(np.uint16) * 257
             + rng.integers(0, 200, pixels.shape[:2])).astype(np.uint16)),
        "bitmap.bmp": photo,
        "gray.jpg": photo.convert("L"),
        "small.jpg": photo.resize((120, 90)),  # upscaled to the short side
        "big_x2.jpg": photo.resize((photo.width * 5, photo.height * 5)),
        "big_x8.jpg": photo.resize((photo.width * 9, photo.height * 9)),
    }
    paths = []
    for name, image in made.items():
        paths.append(os.path.join(folder, name))
        image.save(paths[-1], quality=90)
    palette = photo.convert("P", palette=Image.ADAPTIVE)
    paths.append(os.path.join(folder, "palette_transparent.png"))
    palette.save(paths[-1], transparency=3)
    for orientation in range(1, 9):
        for big_endian in (False, True):
            paths.append(os.path.join(
                folder, f"exif{orientation}{'mm' if big_endian else 'ii'}.jpg"))
            photo.save(paths[-1], quality=90,
                       exif=_exif_bytes(orientation, big_endian))
    return paths


@pytest.mark.tensorflow
def test_serving_graph_frames_like_validation(tmp_path):
    """The SavedModel's decode/crop equals kertransfer.images' to +-2 levels.

    Real photos (a GIF and a name with a space among them) and made files:
    alpha, 16-bit, grayscale, palette, BMP, upscaled, libjpeg-reduced large
    JPEGs and all 8 EXIF orientations in both byte orders.
    """
    import tensorflow as tf
    from PIL import Image

    framing = Framing(224)
    frame = tf.function(
        lambda data: kexport.tf_frame_bytes(tf, data, framing))
    real = [p for p, _ in _photos("val", 6)] + [
        os.path.join(DATA, "train", "ants", "imageNotFound.gif"),
        os.path.join(DATA, "train", "ants", "ant photos.jpg")]
    special = _special_images(str(tmp_path))
    differing = []
    for path in real + special:
        with open(path, "rb") as f:
            served = frame(tf.constant(f.read())).numpy()
        validated = images.frame_image(path, framing).astype(np.float32)
        assert np.abs(served - validated).max() <= 2, path
        differing.append(np.mean(served != validated))
    # Pillow's order of passes (rows, round, columns) is followed: only a
    # few pixels differ at all (16% did with a single-pass resize).
    assert np.mean(differing) < 0.01, differing
    # The orientation reader itself, against Pillow's EXIF parser.
    for path in special:
        if "exif" in path:
            with open(path, "rb") as f:
                got = kexport.tf_exif_orientation(tf, tf.constant(f.read()))
            assert int(got) == Image.open(path).getexif()[0x0112], path


@pytest.mark.tensorflow
def test_exif_rotated_photo_same_class_in_predict_and_serving(run, signatures,
                                                              tmp_path):
    import tensorflow as tf
    from PIL import Image

    from kertransfer.predict import predict_probs

    upright = np.asarray(Image.open(run["image"]).convert("RGB"))
    # Stored turned a quarter counter-clockwise; Orientation 6 says "turn
    # 90 degrees clockwise to display", as phone cameras write it.
    stored = np.ascontiguousarray(np.rot90(upright, 1))
    path = str(tmp_path / "phone.jpg")
    Image.fromarray(stored).save(path, quality=95,
                                 exif=_exif_bytes(6, big_endian=False))
    _, predicted, probabilities = predict_probs(run["dir"], [path])
    with open(path, "rb") as f:
        served = signatures["serving_default"](
            image_bytes=tf.constant([f.read()]))["probabilities"].numpy()
    assert CLASSES[int(probabilities[0].argmax())] == run["top_class"]
    assert CLASSES[int(served[0].argmax())] == run["top_class"]
    assert np.abs(served - probabilities).max() <= 0.02


# --- SavedModel --------------------------------------------------------------


def _saved_model_cli(*args):
    script = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    module = "tensorflow.python.tools.saved_model_cli"
    command = ([script] if os.path.isfile(script)
               else [sys.executable, "-m", module])
    result = subprocess.run(command + list(args), capture_output=True,
                            text=True, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.tensorflow
def test_saved_model_cli_shows_both_signatures(exported):
    shown = _saved_model_cli("show", "--all", "--dir", exported["saved_model"])
    default = shown.split("signature_def['serving_default']")[1]
    assert "inputs['image_bytes']" in default and "DT_STRING" in default
    pixels = shown.split("signature_def['predict_images']")[1].split(
        "signature_def[")[0]
    assert "inputs['images']" in pixels and "(-1, -1, -1, 3)" in pixels
    for output in ("probabilities", "top_classes", "top_scores"):
        assert f"outputs['{output}']" in default
        assert f"outputs['{output}']" in pixels
    for output in ("status", "error"):  # per item: bytes may not decode
        assert f"outputs['{output}']" in default
        assert f"outputs['{output}']" not in pixels


@pytest.mark.tensorflow
def test_saved_model_cli_run_on_a_jpeg_matches_keras(run, exported,
                                                     tmp_path):
    """Through a TF1 session, as TF Serving runs it: a truncated JPEG beside
    the photo gets its own error; the photo is still classified."""
    # String tensors cannot go through --input_exprs (one argv string, and
    # literal bytes of a photo overflow it); --inputs takes an .npy of
    # Python bytes objects instead.
    with open(run["image"], "rb") as f:
        data = f.read()
    np.save(tmp_path / "image_bytes.npy",
            np.array([data, data[:len(data) // 2]], dtype=object))
    _saved_model_cli(
        "run", "--dir", exported["saved_model"], "--tag_set", "serve",
        "--signature_def", "serving_default",
        "--inputs", f"image_bytes={tmp_path / 'image_bytes.npy'}",
        "--outdir", str(tmp_path / "out"),
    )
    top = np.load(tmp_path / "out" / "top_classes.npy", allow_pickle=True)
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    status = np.load(tmp_path / "out" / "status.npy", allow_pickle=True)
    error = np.load(tmp_path / "out" / "error.npy", allow_pickle=True)
    assert top.shape == (2, 2) and probabilities.shape == (2, 2)
    assert top[0, 0].decode() == run["top_class"]
    assert status.tolist() == [b"ok", b"error"]
    assert error[0] == b"" and error[1].startswith(b"undecodable JPEG: ")
    assert probabilities[1].tolist() == [0.0, 0.0]


@pytest.mark.tensorflow
def test_saved_model_is_lean(run, exported):
    weights = sum(np.prod(w.shape) * 4 for w in run["model"].weights)
    folder = exported["saved_model"]
    size = sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(folder) for f in files)
    variables = sum(os.path.getsize(os.path.join(folder, "variables", f))
                    for f in os.listdir(os.path.join(folder, "variables")))
    # keras' model.export() stores each variable twice (2x the weights).
    assert variables <= 1.02 * weights
    assert size <= 1.1 * weights, (size, weights)
    assert exported["rows"]["saved_model:predict_images"]["passed"]
    with open(os.path.join(folder, "assets", "labels.txt")) as f:
        assert f.read().split() == CLASSES
    assert Framing.load(os.path.join(folder, "assets")) == Framing(IMAGE_SIZE)


@pytest.mark.tensorflow
def test_rest_body_feeds_serving_default(run, signatures):
    import tensorflow as tf

    client = _load_kit_module(os.path.join("export", "tf_serving",
                                           "client.py"))
    body = client.rest_body([run["image"]])
    with open(run["image"], "rb") as f:
        data = f.read()
    assert body == {"signature_name": "serving_default",
                    "instances": [{"b64": base64.b64encode(data).decode()}]}
    # What TF Serving does with the JSON: {"b64": ...} -> bytes -> tf.string.
    received = json.loads(json.dumps(body))
    tensor = tf.constant([base64.b64decode(i["b64"])
                          for i in received["instances"]])
    outputs = signatures[received["signature_name"]](image_bytes=tensor)
    assert outputs["top_classes"].numpy()[0, 0].decode() == run["top_class"]
    np.testing.assert_allclose(outputs["top_scores"].numpy()[0],
                               np.sort(outputs["probabilities"][0])[::-1])
    assert client.rest_url("http://h:8501", "tiny", 3) == (
        "http://h:8501/v1/models/tiny/versions/3:predict")

    # predict_images over REST: rows of nested pixel lists.
    pixels = frame_images(run["val_paths"][:2], Framing(IMAGE_SIZE))
    received = json.loads(json.dumps(
        {"signature_name": "predict_images", "instances": pixels.tolist()}))
    outputs = signatures["predict_images"](
        images=tf.constant(received["instances"], tf.float32))
    np.testing.assert_allclose(outputs["probabilities"].numpy(),
                               run["reference"][:2], atol=1e-5)


def _rest_rows(outputs):
    """TF Serving's REST "row" answer: one {output: value} per item.

    Strings go out as JSON strings; floats as numbers (an independent
    stand-in for tensorflow_serving/util/json_tensor.cc, not client code).
    """
    arrays = {key: value.numpy() for key, value in outputs.items()}
    rows = []
    for i in range(len(arrays["status"])):
        row = {}
        for key, array in arrays.items():
            value = array[i]
            if array.dtype == object:
                row[key] = (value.decode() if isinstance(value, bytes)
                            else [v.decode() for v in value])
            else:
                row[key] = value.tolist()
        rows.append(row)
    return rows


@pytest.mark.tensorflow
def test_client_rest_round_trip_with_a_stand_in_server(run, signatures,
                                                       tmp_path, capsys):
    """client.py against a local HTTP stand-in for TF Serving's REST API."""
    import http.server
    import threading

    import tensorflow as tf

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(
                int(self.headers["Content-Length"])))
            if self.path != "/v1/models/tiny:predict":
                status, answer = 404, {
                    "error": f"Servable not found for request: {self.path}"}
            else:
                data = [base64.b64decode(i["b64"]) for i in body["instances"]]
                outputs = signatures[body["signature_name"]](
                    image_bytes=tf.constant(data))
                status, answer = 200, {"predictions": _rest_rows(outputs)}
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    client = _load_kit_module(os.path.join("export", "tf_serving",
                                           "client.py"))
    with open(run["image"], "rb") as f:
        data = f.read()
    truncated = str(tmp_path / "truncated.jpg")
    with open(truncated, "wb") as f:
        f.write(data[:len(data) // 2])
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        (prediction,) = client.rest_predict([run["image"]], url, "tiny")
        assert prediction["top_classes"][0] == run["top_class"]
        assert prediction["status"] == "ok" and prediction["error"] == ""
        assert client.format_predictions([run["image"]], [prediction]) \
            .startswith(f"{run['image']}: {run['top_class']} ")

        # One request, three files: two cannot be decoded, one is classified.
        paths = [truncated, run["image"], __file__]
        predictions = client.rest_predict(paths, url, "tiny")
        assert [client.failed(p) for p in predictions] == [True, False, True]
        assert predictions[1] == prediction  # as when sent alone
        lines = client.format_predictions(paths, predictions).splitlines()
        assert lines[0].startswith(
            f"{truncated}: error: undecodable JPEG: ")
        assert lines[1].startswith(f"{run['image']}: {run['top_class']} ")
        assert lines[2].startswith(
            f"{__file__}: error: not an image: starts with 22 22 22 ")

        assert client.main(["--rest", url, "--model", "tiny"] + paths) == 1
        out, err = capsys.readouterr()
        assert out.splitlines() == lines
        assert "2 of 3 file(s) could not be classified" in err
        assert client.main(["--rest", url, "--model", "tiny",
                            run["image"]]) == 0
        # A request the server refuses as a whole still raises.
        with pytest.raises(RuntimeError, match="HTTP 404.*Servable not found"):
            client.rest_predict([run["image"]], url, "other")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.tensorflow
def test_grpc_predict_request_feeds_serving_default(run, signatures):
    pytest.importorskip(
        "tensorflow_serving",
        reason="gRPC request building needs `pip install "
               "tensorflow-serving-api`")
    import tensorflow as tf

    client = _load_kit_module(os.path.join("export", "tf_serving",
                                           "client.py"))
    request = client.grpc_request([run["image"]], model="tiny", version=1)
    assert request.model_spec.name == "tiny"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 1
    proto = request.inputs["image_bytes"]
    assert proto.dtype == tf.string.as_datatype_enum
    received = tf.make_ndarray(proto)
    with open(run["image"], "rb") as f:
        assert received.tolist() == [f.read()]
    outputs = signatures[request.model_spec.signature_name](
        image_bytes=tf.constant(list(received) + [b""]))
    # What grpc_predict reads back: the response's TensorProtos.
    answered = {key: tf.make_ndarray(tf.make_tensor_proto(value.numpy()))
                for key, value in outputs.items()}
    good, empty = client.predictions_from_outputs(answered)
    assert good["top_classes"][0] == run["top_class"]
    assert good["status"] == "ok" and not client.failed(good)
    np.testing.assert_array_equal(good["probabilities"],
                                  outputs["probabilities"][0].numpy())
    assert client.failed(empty) and empty["error"].startswith("empty: ")
    assert empty["top_classes"] == ["", ""]


def _encoded(image, image_format, **options):
    import io

    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _bad_items(photo_path):
    """name -> (bytes that cannot be classified, expected error pattern)."""
    from PIL import Image

    with open(photo_path, "rb") as f:
        jpeg = f.read()
    photo = Image.open(photo_path).convert("RGB")
    png, gif, bmp = (_encoded(photo, kind) for kind in ("PNG", "GIF", "BMP"))
    return {
        "truncated JPEG": (
            jpeg[:len(jpeg) // 2],
            (r"^undecodable JPEG: starts like a JPEG file but does not "
             rf"decode \({len(jpeg) // 2} bytes\); it does not end with the "
             r"JPEG end-of-image marker ff d9")),
        "JPEG without its end marker": (
            jpeg[:-2], r"^undecodable JPEG: .*end-of-image marker ff d9"),
        "empty": (b"", r"^empty: 0 bytes received"),
        "text": (b"hello, world\n",
                 (r"^not an image: starts with 68 65 6c 6c 6f 2c 20 77 "
                  r"\(13 bytes\), not like a JPEG, PNG, GIF or BMP file$")),
        "base64 text of the JPEG": (
            base64.b64encode(jpeg),
            (r"^not an image: starts with 2f 39 6a 2f .*looks like base64 "
             r"text: over REST send \{\"b64\"")),
        "truncated PNG": (png[:len(png) // 2],
                          r"^undecodable PNG: .*PNG IEND chunk \(truncated"),
        "truncated GIF": (gif[:len(gif) // 2],
                          r"^undecodable GIF: .*GIF trailer byte 3b"),
        "truncated BMP": (
            bmp[:len(bmp) // 2],
            (rf"^undecodable BMP: .*shorter than the {len(bmp)} bytes its "
             r"header declares")),
    }


@pytest.mark.tensorflow
def test_serving_default_rejects_bad_items_one_by_one(run, signatures,
                                                      tmp_path):
    """[good, bad]: the good photo's outputs equal a call with it alone;
    the bad item gets status "error", a message, zeros and no names."""
    import tensorflow as tf

    serve = signatures["serving_default"]
    with open(run["image"], "rb") as f:
        good = f.read()
    alone = {k: v.numpy() for k, v in serve(
        image_bytes=tf.constant([good])).items()}
    assert alone["status"].tolist() == [b"ok"]
    assert alone["error"].tolist() == [b""]
    assert alone["top_classes"][0, 0].decode() == run["top_class"]
    for name, (bad, expected) in _bad_items(run["image"]).items():
        # The learner's own path (Pillow) refuses these bytes too.
        path = tmp_path / "bad.img"
        path.write_bytes(bad)
        with pytest.raises(ValueError, match="Cannot read"):
            frame_images([str(path)], Framing(IMAGE_SIZE))
        out = {k: v.numpy() for k, v in serve(
            image_bytes=tf.constant([good, bad])).items()}
        assert out["status"].tolist() == [b"ok", b"error"], name
        assert out["error"][0] == b"", name
        assert re.search(expected, out["error"][1].decode()), (
            name, out["error"][1])
        np.testing.assert_allclose(out["probabilities"][0],
                                   alone["probabilities"][0], atol=1e-6)
        np.testing.assert_allclose(out["top_scores"][0],
                                   alone["top_scores"][0], atol=1e-6)
        assert out["top_classes"][0].tolist() == \
            alone["top_classes"][0].tolist()
        assert out["probabilities"][1].tolist() == [0.0, 0.0], name
        assert out["top_scores"][1].tolist() == [0.0, 0.0], name
        assert out["top_classes"][1].tolist() == [b"", b""], name


@pytest.mark.tensorflow
def test_serving_default_keeps_items_in_place(run, signatures):
    """Bad items anywhere; all bad; none at all: rows stay with their item."""
    import tensorflow as tf

    serve = signatures["serving_default"]
    first, second = run["val_paths"][0], run["val_paths"][-1]
    goods = []
    for path in (first, second):
        with open(path, "rb") as f:
            goods.append(f.read())
    out = serve(image_bytes=tf.constant(
        [b"", goods[0], goods[1][:500], goods[1], b"GIF89a"]))
    assert out["status"].numpy().tolist() == [
        b"error", b"ok", b"error", b"ok", b"error"]
    for row, data in ((1, goods[0]), (3, goods[1])):
        alone = serve(image_bytes=tf.constant([data]))
        np.testing.assert_allclose(out["probabilities"][row],
                                   alone["probabilities"][0], atol=1e-6)
    assert out["error"][4].numpy().startswith(b"undecodable GIF: ")

    nothing_decodes = serve(image_bytes=tf.constant([b"", goods[0][:99]]))
    assert nothing_decodes["status"].numpy().tolist() == [b"error"] * 2
    assert nothing_decodes["probabilities"].shape == (2, 2)
    assert not np.any(nothing_decodes["probabilities"].numpy())

    no_items = serve(image_bytes=tf.constant([], tf.string))
    assert no_items["probabilities"].shape == (0, 2)
    assert no_items["status"].shape == (0,)


@pytest.mark.tensorflow
def test_serving_default_all_good_batch_unchanged(run, signatures, tmp_path):
    """An all-good batch (JPEGs, a GIF, a PNG) is classified exactly as the
    framing graph plus the classifier give it, with no tf.data in between,
    and within the export targets of the learner's own path."""
    import tensorflow as tf
    from PIL import Image

    png = str(tmp_path / "photo.png")
    Image.open(run["val_paths"][1]).convert("RGB").save(png)
    gif = os.path.join(DATA, "train", "ants", "imageNotFound.gif")
    paths = run["val_paths"][:4] + run["val_paths"][-2:] + [gif, png]
    encoded = []
    for path in paths:
        with open(path, "rb") as f:
            encoded.append(f.read())
    out = signatures["serving_default"](image_bytes=tf.constant(encoded))
    assert out["status"].numpy().tolist() == [b"ok"] * len(paths)
    assert out["error"].numpy().tolist() == [b""] * len(paths)

    framing = Framing(IMAGE_SIZE)
    framed = tf.map_fn(
        lambda data: kexport.tf_frame_bytes(tf, data, framing),
        tf.constant(encoded),
        fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3],
                                          tf.float32))
    direct = signatures["predict_images"](images=framed)
    for key in ("probabilities", "top_scores"):
        np.testing.assert_allclose(out[key].numpy(), direct[key].numpy(),
                                   atol=1e-6)
    assert out["top_classes"].numpy().tolist() == \
        direct["top_classes"].numpy().tolist()
    keras_probabilities = run["model"].predict(
        frame_images(paths, framing), verbose=0)
    np.testing.assert_allclose(out["probabilities"].numpy(),
                               keras_probabilities, atol=0.02)


@pytest.mark.tensorflow
def test_validate_flags_files_serving_cannot_decode(run, exported, tmp_path):
    """A PNG without its IEND chunk: Pillow reads it, TF's decoder does not.

    The report must say so instead of scoring the file's zero row.
    """
    from PIL import Image

    png = _encoded(Image.open(run["image"]).convert("RGB"), "PNG")
    cut = tmp_path / "no_iend.png"
    cut.write_bytes(png[:-12])
    frame_images([str(cut)], Framing(IMAGE_SIZE))  # readable by the learner
    with pytest.warns(kexport.ExportWarning, match="not decoded"):
        report = kexport.validate(
            run["dir"], [exported["saved_model"]],
            images=[run["image"], str(cut)],
            report_path=str(tmp_path / "report.json"), print_fn=None)
    rows = {row["name"]: row for row in report["artifacts"]}
    served = rows["saved_model:serving_default"]
    assert not served["passed"] and not report["passed"]
    (missing,) = served["not_decoded"]
    assert missing.startswith(f"{cut} (undecodable PNG: ")
    assert "IEND" in missing
    assert rows["saved_model:predict_images"]["passed"]


# --- LiteRT and the report ---------------------------------------------------


@pytest.mark.tensorflow
def test_tflite_quantizations_agree_and_shrink(exported):
    rows = exported["rows"]
    assert rows["tflite:float32"]["top1_agreement"] == 1.0
    assert rows["tflite:float32"]["max_abs_prob_diff"] < 1e-4
    assert rows["tflite:float16"]["top1_agreement"] == 1.0
    assert rows["tflite:dynamic"]["top1_agreement"] >= 0.99
    assert rows["tflite:int8"]["top1_agreement"] >= 0.99
    fp32 = rows["tflite:float32"]["size_bytes"]
    assert rows["tflite:float16"]["size_bytes"] <= 0.6 * fp32
    assert rows["tflite:int8"]["size_bytes"] <= 0.3 * fp32
    for name in ("model", "model_float16", "model_dynamic", "model_int8"):
        assert os.path.isfile(os.path.join(exported["litert"],
                                           f"{name}.tflite"))
    with open(os.path.join(exported["litert"], "labels.txt")) as f:
        assert f.read().split() == CLASSES


@pytest.mark.tensorflow
def test_int8_is_fully_quantized(exported):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(
        model_path=os.path.join(exported["litert"], "model_int8.tflite"))
    tensors = interpreter.get_tensor_details()
    float_tensors = [t for t in tensors if t["dtype"] == np.float32]
    int8_tensors = [t for t in tensors if t["dtype"] == np.int8]
    # Only the float32 input/output (and their quantize ops) stay float.
    assert len(float_tensors) <= 2 < len(int8_tensors)


@pytest.mark.tensorflow
def test_litert_runner_prints_the_keras_top_class(run, exported):
    runner = os.path.join(REPO, "export", "mobile", "litert_runner.py")
    result = subprocess.run(
        [sys.executable, runner,
         os.path.join(exported["litert"], "model_int8.tflite"), run["image"],
         "--top", "2"],
        capture_output=True, text=True, env=_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{run['image']}: {run['top_class']} ")


@pytest.mark.tensorflow
def test_litert_runner_frames_like_predict(run, exported):
    runner = _load_kit_module(os.path.join("export", "mobile",
                                           "litert_runner.py"))
    model = os.path.join(exported["litert"], "model.tflite")
    module, framing = runner.load_framing(model)
    # The export's own copy of kertransfer.images, not the installed one.
    assert module.__file__ == os.path.join(exported["litert"],
                                           "kertransfer_images.py")
    assert framing.to_dict() == Framing(IMAGE_SIZE).to_dict()
    interpreter = runner.make_interpreter(model)
    paths = run["val_paths"][:10]
    for path, expected in zip(paths, run["reference"]):
        pixels = runner.preprocess(path, module, framing)
        np.testing.assert_array_equal(
            pixels, frame_images([path], Framing(IMAGE_SIZE)))
        np.testing.assert_allclose(runner.classify(interpreter, pixels),
                                   expected, atol=1e-4)


@pytest.mark.tensorflow
def test_export_report_json(run, exported):
    report = exported["report"]
    assert report["passed"], kexport.format_report(report)
    assert report["classes"] == CLASSES
    assert report["image_size"] == IMAGE_SIZE
    assert report["num_images"] == len(run["val_paths"]) == 40
    assert report["labels_known"] and report["arch"] == "tiny-test"
    assert "predict_probs" in report["reference"]  # the learner's own path
    assert report["framing"]["decode_size"] == 73  # round(64 / 0.875)
    served = exported["rows"]["saved_model:serving_default"]
    assert served["top1_agreement"] >= 0.995
    assert served["max_abs_prob_diff"] <= 0.02
    assert set(exported["rows"]) == {
        "saved_model:predict_images", "saved_model:serving_default",
        "tflite:float32", "tflite:float16", "tflite:dynamic", "tflite:int8"}
    keras_accuracy = np.mean(run["reference"].argmax(-1)
                             == np.repeat([0, 1], 20))
    assert report["keras"]["accuracy"] == pytest.approx(keras_accuracy,
                                                       abs=0.026)
    for row in report["artifacts"]:
        assert row["size_bytes"] > 0 and row["median_latency_ms"] > 0
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["passed"] and not row["failures"]
    assert "tflite:int8" in kexport.format_report(report)


@pytest.mark.tensorflow
def test_onnx_export_matches_keras(run, tmp_path):
    pytest.importorskip(
        "tf2onnx",
        reason="ONNX export needs `pip install 'kertransfer[onnx]'`")
    pytest.importorskip(
        "onnxruntime",
        reason="ONNX validation needs `pip install onnxruntime`")
    path = kexport.onnx(run["dir"], str(tmp_path / "model.onnx"))
    report = kexport.validate(run["dir"], [path], print_fn=None)
    (row,) = report["artifacts"]
    assert row["name"] == "onnx:float32" and row["top1_agreement"] == 1.0
    assert row["max_abs_prob_diff"] < 1e-4
    assert os.path.isfile(tmp_path / "export_report.json")


# --- models trained under the other backends ---------------------------------

# One process under the other backend trains, saves and exports: neither
# kertransfer's seeding and saving (`kertransfer.no_tensorflow`) nor the
# export (a TensorFlow subprocess does the conversion) may import
# TensorFlow into it.
_TRAIN_AND_EXPORT_SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("test_export", {test_file!r})
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
import keras
from kertransfer.export import export
assert keras.backend.backend() == {backend!r}, keras.backend.backend()
tests.make_run({run_dir!r}, image_size=32, per_class=4, epochs=1)
trained_without_tf = "tensorflow" not in sys.modules
report = export({run_dir!r}, print_fn=None)
report["tf_in_process"] = "tensorflow" in sys.modules
report["trained_without_tf"] = trained_without_tf
print(json.dumps(report))
"""


# The current backend is already covered by the `run` fixture (exported via
# the subprocess path unless it is TensorFlow), so only the others run here.
OTHER_BACKENDS = [b for b in ("jax", "torch") if b != keras.backend.backend()]


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_model_trained_under_other_backend_exports(backend, tmp_path):
    pytest.importorskip(backend, reason=f"the {backend} backend is not "
                                        "installed")
    run_dir = str(tmp_path / "run")
    code = _TRAIN_AND_EXPORT_SCRIPT.format(
        test_file=os.path.abspath(__file__), backend=backend, run_dir=run_dir)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env=_env(KERAS_BACKEND=backend), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Trained and saved without TensorFlow; the export ran in a TensorFlow
    # subprocess, not in this process.
    assert report["trained_without_tf"] is True
    assert report["tf_in_process"] is False
    rows = {row["name"]: row for row in report["artifacts"]}
    assert rows["saved_model:predict_images"]["top1_agreement"] == 1.0
    assert rows["tflite:float32"]["top1_agreement"] == 1.0
    # The float artifacts; int8 quantization starts from the same SavedModel
    # whatever the training backend, and is checked on the `run` fixture's
    # model.
    assert set(rows) >= {"saved_model:predict_images", "tflite:float32"}
    for row in rows.values():
        assert row["passed"], row
    assert os.path.isdir(os.path.join(run_dir, "export", "serving",
                                      "kertransfer", "1"))
