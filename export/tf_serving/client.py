"""Classify image files with a kertransfer model served by TF Serving.

Sends the files' bytes to the `serving_default` signature written by
`kertransfer.export.saved_model` and prints the top classes. The bytes go
unchanged: the graph decodes them, applies the JPEG's EXIF orientation,
resizes and center-crops exactly as the run's validation did
(`preprocessing.json` in the SavedModel's assets), so do not decode, rotate
or resize photos before sending them. Two transports:

- REST (port 8501, standard library only): `POST
  /v1/models/NAME[/versions/N]:predict` with the JSON body
  `{"signature_name": "serving_default", "instances": [{"b64": "..."}]}`.
  Binary inputs travel base64-encoded inside `{"b64": ...}` objects, which
  the server decodes back to bytes
  (https://www.tensorflow.org/tfx/serving/api_rest#encoding_binary_values).
- gRPC (port 8500, `pip install tensorflow-serving-api`): a
  `tensorflow_serving.apis.predict_pb2.PredictRequest` whose `image_bytes`
  input is `tf.make_tensor_proto([file bytes, ...])`.

Each file is judged on its own: a file the server cannot decode (truncated,
empty, not an image) comes back with `status` `"error"` and an `error`
message while the other files are classified, and the client prints
`FILE: error: MESSAGE` for it (exit status 1 when any file failed).

Usage:

```
python client.py ants.jpg bees.png                       # REST, localhost
python client.py --grpc localhost:8500 ants.jpg          # gRPC
python client.py --rest http://host:8501 --model ants --version 2 ants.jpg
```
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

DEFAULT_MODEL = "kertransfer"
SIGNATURE = "serving_default"


def _read(paths):
    data = []
    for path in paths:
        with open(path, "rb") as f:
            data.append(f.read())
    return data


def rest_body(paths, signature_name=SIGNATURE):
    """JSON body (a dict) of a REST predict request for image files.

    Args:
        paths: image file paths (JPEG, PNG, GIF, BMP).
        signature_name: the SavedModel signature to call.

    Returns:
        `{"signature_name": ..., "instances": [{"b64": <base64 str>}, ...]}`
        in the TF Serving "row" format, one instance per file.
    """
    return {
        "signature_name": signature_name,
        "instances": [
            {"b64": base64.b64encode(data).decode("ascii")}
            for data in _read(paths)
        ],
    }


def rest_url(server, model=DEFAULT_MODEL, version=None):
    """`http://host:8501/v1/models/NAME[/versions/N]:predict`."""
    url = f"{server.rstrip('/')}/v1/models/{model}"
    if version is not None:
        url += f"/versions/{version}"
    return url + ":predict"


def rest_predict(paths, server="http://localhost:8501", model=DEFAULT_MODEL,
                 version=None, timeout=30.0):
    """Sends image files over REST.

    Args:
        paths: image file paths.
        server: REST endpoint, `http://host:8501`.
        model: model name in `models.config`.
        version: int to pin a version, or None for the latest.
        timeout: seconds.

    Returns:
        A list with, per image, a dict of `probabilities`, `top_classes`,
        `top_scores`, `status` (`"ok"` or `"error"`) and `error` (why the
        image was not classified, or `""`): the server's `predictions`.
        SavedModels exported before per-item status have no `status` or
        `error`; `failed` treats their items as classified.

    Raises:
        RuntimeError: with the server's error message when the whole request
            fails (unknown model or signature, malformed JSON); a bad image
            only fails its own item.
    """
    body = json.dumps(rest_body(paths)).encode("utf-8")
    request = urllib.request.Request(
        rest_url(server, model, version), data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)["predictions"]
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")
        raise RuntimeError(
            f"TF Serving answered HTTP {error.code}: {detail}"
        ) from error


def grpc_request(paths, model=DEFAULT_MODEL, version=None,
                 signature_name=SIGNATURE):
    """A gRPC `PredictRequest` carrying image files' bytes.

    Args:
        paths: image file paths.
        model: model name in `models.config`.
        version: int to pin a version, or None for the latest.
        signature_name: the SavedModel signature to call.

    Returns:
        A `tensorflow_serving.apis.predict_pb2.PredictRequest` with input
        `image_bytes`, a `tf.string` tensor `(len(paths),)`.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto(_read(paths), dtype=tf.string)
    )
    return request


def grpc_predict(paths, server="localhost:8500", model=DEFAULT_MODEL,
                 version=None, timeout=30.0):
    """Sends image files over gRPC.

    Args:
        paths: image file paths.
        server: gRPC endpoint, `host:8500`.
        model: model name in `models.config`.
        version: int to pin a version, or None for the latest.
        timeout: seconds.

    Returns:
        A list with, per image, a dict like `rest_predict`'s.
    """
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(grpc_request(paths, model, version),
                            timeout=timeout)
    return predictions_from_outputs(
        {key: tf.make_ndarray(value)
         for key, value in response.outputs.items()})


def predictions_from_outputs(outputs):
    """Per-image dicts from a batch of output arrays (TF Serving's rows).

    Args:
        outputs: dict of output name -> array with the batch first, as
            `tf.make_ndarray` returns them from a gRPC `PredictResponse`
            (strings as bytes).

    Returns:
        A list with, per image, a dict of the outputs' rows as Python
        values (strings decoded as UTF-8), the shape of `rest_predict`'s
        result.
    """

    def plain(value):
        value = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    count = len(next(iter(outputs.values()))) if outputs else 0
    return [{key: plain(value[i]) for key, value in outputs.items()}
            for i in range(count)]


def failed(prediction):
    """True when the server could not classify this image (see `error`)."""
    return prediction.get("status", "ok") != "ok"


def format_predictions(paths, predictions):
    """One line per file: its top classes, or the server's error for it.

    Args:
        paths: the image files, in request order.
        predictions: `rest_predict` or `grpc_predict` results, same order.

    Returns:
        A string: `FILE: ants 97.0%, bees 3.0%` per classified file (a
        multi-label model's: `FILE: tags: cats dogs (dogs 91.0%, ...)`),
        `FILE: error: MESSAGE` per file the server could not decode.
    """
    lines = []
    for path, prediction in zip(paths, predictions):
        if failed(prediction):
            lines.append(f"{path}: error: "
                         f"{prediction.get('error') or 'not classified'}")
            continue
        ranked = ", ".join(
            f"{name} {score:.1%}" for name, score in
            zip(prediction["top_classes"], prediction["top_scores"])
        )
        if "tags" in prediction:  # multi-label: the tags above threshold
            ranked = f"tags: {prediction['tags'] or '(none)'} ({ranked})"
        lines.append(f"{path}: {ranked}")
    return "\n".join(lines)


def main(argv=None):
    """Command line; exit status 1 when a file could not be classified."""
    parser = argparse.ArgumentParser(
        description="Classify images with a model served by TF Serving.")
    parser.add_argument("images", nargs="+", help="image files")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--rest", default="http://localhost:8501",
                           help="REST endpoint (default: %(default)s)")
    transport.add_argument("--grpc", default=None,
                           help="gRPC endpoint host:port, e.g. localhost:8500")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model name (default: %(default)s)")
    parser.add_argument("--version", type=int, default=None,
                        help="model version (default: latest)")
    args = parser.parse_args(argv)
    if args.grpc:
        predictions = grpc_predict(args.images, args.grpc, args.model,
                                   args.version)
    else:
        predictions = rest_predict(args.images, args.rest, args.model,
                                   args.version)
    print(format_predictions(args.images, predictions))
    errors = sum(failed(p) for p in predictions)
    if errors:
        print(f"{errors} of {len(predictions)} file(s) could not be "
              "classified (see the error lines above).", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
