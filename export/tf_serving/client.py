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
        A list with, per image, a dict of `probabilities`, `top_classes` and
        `top_scores` (the server's `predictions`).

    Raises:
        RuntimeError: with the server's error message (for example on bytes
            that are not an image).
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
        A list with, per image, a dict of `probabilities`, `top_classes` and
        `top_scores`, like `rest_predict`.
    """
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(grpc_request(paths, model, version),
                            timeout=timeout)
    outputs = {key: tf.make_ndarray(value)
               for key, value in response.outputs.items()}
    return [
        {
            "probabilities": outputs["probabilities"][i].tolist(),
            "top_classes": [c.decode("utf-8")
                            for c in outputs["top_classes"][i]],
            "top_scores": outputs["top_scores"][i].tolist(),
        }
        for i in range(len(paths))
    ]


def format_predictions(paths, predictions):
    lines = []
    for path, prediction in zip(paths, predictions):
        ranked = ", ".join(
            f"{name} {score:.1%}" for name, score in
            zip(prediction["top_classes"], prediction["top_scores"])
        )
        lines.append(f"{path}: {ranked}")
    return "\n".join(lines)


def main(argv=None):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
