"""The tiny fast.ai workflow on one device and on several, in one process.

`tests/test_distribute.py` runs this file in a subprocess, because the
device count must be fixed before JAX or TensorFlow starts:

    JAX_NUM_CPU_DEVICES=4 KERAS_BACKEND=jax python tests/distributed_workflow.py \
        DATA_DIR OUT.json none dp2 data_parallel
    KERAS_BACKEND=tensorflow python tests/distributed_workflow.py \
        DATA_DIR OUT.json --tf-cpus 2 none data_parallel

Several processes on one machine (JAX): each of N processes runs

    KERAS_BACKEND=jax python tests/distributed_workflow.py DATA_DIR OUT.json \
        --process I N 127.0.0.1:PORT --dump RUN.npz [none] data_parallel

(process 0 may run the one-device reference first, on one of its
devices). `keras.distribution.initialize` joins them before anything
else; under KERAS_BACKEND=torch, `torch.distributed.init_process_group`;
`--dump` saves the last named run's arrays (weights, TTA probabilities,
curves) for a comparison across processes.

Each named run does precompute, lr_find, a head fit, unfreeze,
`fit(lrs, 2, cycle_len=1, cycle_mult=2, keep_best=True)`, TTA and save, from the same seed and the same global batch of 16. The first run is
the reference (one device); OUT.json gets each later run's largest
difference from it (weights, TTA probabilities, validation losses, LR
finder losses) and its `learn.distribution`.
"""

import json
import os
import sys
import tempfile
import zipfile

import numpy as np


def _distribution(name):
    """The `distribution` argument a run name stands for."""
    if name.startswith("dp"):  # dpN: keras.distribution.DataParallel over N devices
        import keras

        devices = keras.distribution.list_devices()[: int(name[2:])]
        return keras.distribution.DataParallel(devices=devices)
    return name


def workflow(data_dir, distribution, work, ps=0.5, bn_freeze=False):
    """Runs the workflow; returns its weights, TTA probabilities and curves."""
    import keras

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from kertransfer import ConvLearner
    from kertransfer.data import ImageClassifierData
    from kertransfer.no_tensorflow import set_seed
    from kertransfer.transforms import tfms_from_model

    import conftest  # noqa: F401  (registers the tiny_cnn backbone)

    os.environ["KERAS_HOME"] = os.path.join(work, "keras_home")  # own precompute cache
    set_seed(0)
    data = ImageClassifierData.from_paths(
        data_dir, batch_size=16, tfms=tfms_from_model("tiny_cnn", 32), cache="memory"
    )
    learn = ConvLearner.pretrained(
        "tiny_cnn", data, weights=None, ps=ps, xtra_fc=(16,), distribution=distribution
    )
    learn.bn_freeze(bn_freeze)
    start = [np.asarray(w, "float64") for w in learn.model.get_weights()]
    finder = learn.lr_find(min_steps=8)
    learn.fit(1e-2, 1, verbose=0)
    learn.precompute = False
    learn.unfreeze()
    learn.fit(np.array([1e-3, 1e-2, 3e-2]), 2, cycle_len=1, cycle_mult=2, keep_best=True, verbose=0)
    tta, _ = learn.TTA(n_aug=1)
    path = learn.save(os.path.join(work, "model.keras"))
    with zipfile.ZipFile(path) as z:
        synchronized = '"synchronized": true' in z.read("config.json").decode()
    reloaded = keras.saving.load_model(path, compile=False)
    return {
        "weights": [np.asarray(w, "float64") for w in learn.model.get_weights()],
        "reloaded": [np.asarray(w, "float64") for w in reloaded.get_weights()],
        "tta": np.asarray(tta, "float64"),
        "val_loss": np.array([row["val_loss"] for row in learn.history]),
        "val_accuracy": np.array([row["val_accuracy"] for row in learn.history]),
        "finder_losses": np.asarray(finder.losses),
        "trained": _max_diff([np.asarray(w, "float64") for w in learn.model.get_weights()], start),
        "variable_devices": _variable_devices(learn.model.weights[0]),
        "saved_synchronized": synchronized,
        "distribution": learn.distribution.to_dict(data.batch_size),
        "n_valid": len(data.valid_labels),
    }


def _variable_devices(variable):
    """Devices holding a copy of a Keras variable (JAX sharding, TF mirrored values)."""
    import keras

    value = variable._value  # the backend's own variable or array
    sharding = getattr(value, "sharding", None)
    if sharding is not None:
        return len(sharding.device_set)
    if keras.backend.backend() == "torch":
        return 1  # each process holds its own copy
    return len(getattr(value, "values", (value,)))


def _max_diff(a, b):
    if isinstance(a, list):
        return max(_max_diff(x, y) for x, y in zip(a, b))
    if np.shape(a) != np.shape(b):
        return float("inf")
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(a) else 0.0


def main(argv):
    data_dir, out = argv[0], argv[1]
    names = argv[2:]
    ps = 0.5
    if names[:1] == ["--ps"]:
        ps = float(names[1])
        names = names[2:]
    bn_freeze = names[:1] == ["--bn-freeze"]
    if bn_freeze:
        names = names[1:]
    if names[:1] == ["--tf-cpus"]:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * int(names[1])
        )
        names = names[2:]
    dump = None
    if names[:1] == ["--process"]:
        import keras

        index, count, address = int(names[1]), int(names[2]), names[3]
        if keras.backend.backend() == "torch":
            import torch.distributed as dist

            dist.init_process_group("gloo", init_method=f"tcp://{address}", rank=index, world_size=count)
        else:
            keras.distribution.initialize(address, count, index)
        names = names[4:]
    if names[:1] == ["--dump"]:
        dump = names[1]
        names = names[2:]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            work = os.path.join(tmp, name)
            os.makedirs(work)
            results[name] = workflow(data_dir, _distribution(name), work, ps, bn_freeze)
    if dump:  # the last run's arrays
        run = results[names[-1]]
        arrays = {f"w{i}": w for i, w in enumerate(run["weights"])}
        arrays.update({k: run[k] for k in ("tta", "val_loss", "val_accuracy", "finder_losses")})
        np.savez(dump, **arrays)
    ref = results[names[0]]
    report = {}
    for name in names:
        run = results[name]
        report[name] = {
            "distribution": run["distribution"],
            "n_valid": run["n_valid"],
            "saved_synchronized": run["saved_synchronized"],
            "reload_max_abs_diff": _max_diff(run["weights"], run["reloaded"]),
            "weights_max_abs_diff": _max_diff(run["weights"], ref["weights"]),
            "tta_max_abs_diff": _max_diff(run["tta"], ref["tta"]),
            "val_loss_max_abs_diff": _max_diff(run["val_loss"], ref["val_loss"]),
            "val_accuracy_max_abs_diff": _max_diff(run["val_accuracy"], ref["val_accuracy"]),
            "finder_max_abs_diff": _max_diff(run["finder_losses"], ref["finder_losses"]),
            "epochs": len(run["val_loss"]),
            "trained_max_abs_change": run["trained"],
            "variable_devices": run["variable_devices"],
        }
    with open(out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
