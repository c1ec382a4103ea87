"""Data-parallel training matches one device (kertransfer.distribute).

The multi-device checks run `tests/distributed_workflow.py` in a subprocess,
because the device count is fixed when JAX or TensorFlow starts: JAX with 2
processes on 127.0.0.1 of 2 virtual CPU devices each (`JAX_NUM_CPU_DEVICES`;
4 devices), TensorFlow with 2 logical CPUs, and
torch with 2 gloo processes on 127.0.0.1 (plain `model.fit` of a
BatchNorm-free model matches one process; the workflow's processes agree).
Each compares the whole tiny workflow (precompute, lr_find, head fit,
unfreeze, SGDR with cycle_mult=2, KeepBestWeights, TTA, save) with the same
run on one device, on a validation set of 15 images (divides by neither 2
nor 4).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from kertransfer.data import FeatureBatches
from kertransfer.distribute import Replicas
from kertransfer.distribute import portable_config
from kertransfer.distribute import predict_padded
from kertransfer.distribute import resolve_distribution
from kertransfer.no_tensorflow import set_seed

from conftest import write_synthetic_images

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def odd_valid_folder(tmp_path_factory):
    """64 training images (4 batches of 16) and 15 validation images."""
    return write_synthetic_images(
        tmp_path_factory.mktemp("distribute"),
        {"train/ants": 32, "train/bees": 32, "valid/ants": 8, "valid/bees": 7},
        size=40,
    )


def _env(backend, extra=()):
    env = dict(os.environ)
    env.update(extra)
    env["KERAS_BACKEND"] = backend
    # This checkout's kertransfer, whichever one the venv was installed from.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _workflow_command(data_dir, out, args):
    return [sys.executable, str(ROOT / "tests" / "distributed_workflow.py"), str(data_dir), str(out), *args]


def _run_workflow(backend, data_dir, out, args, env_extra):
    command = _workflow_command(data_dir, out, args)
    result = subprocess.run(command, capture_output=True, text=True, env=_env(backend, env_extra), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(pathlib.Path(out).read_text())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_matches_one_device(report, name, engine, devices, processes=1):
    run = report[name]
    assert run["distribution"] == {
        "engine": engine, "devices": devices, "processes": processes,
        "global_batch_size": 16, "per_device_batch_size": 16 // devices,
    }
    assert run["variable_devices"] == devices  # the weights really live on every device
    assert run["n_valid"] == 15 and run["epochs"] == 4
    assert run["trained_max_abs_change"] > 0.1  # the runs trained, so equality means something
    for key in ("weights", "tta", "val_loss", "val_accuracy", "finder"):
        assert run[f"{key}_max_abs_diff"] <= TOLERANCE, (name, key, run)
    assert not run["saved_synchronized"] and run["reload_max_abs_diff"] == 0.0


@pytest.mark.one_backend
def test_tensorflow_mirrored_matches_one_device(odd_valid_folder, tmp_path):
    # ps=0: Keras's TensorFlow dropout repeats its mask on every replica
    # (`warn_replicated_dropout`), so only a dropout-free head can match.
    report = _run_workflow(
        "tensorflow", odd_valid_folder, tmp_path / "tf.json",
        ["--ps", "0", "--tf-cpus", "2", "none", "data_parallel"], {},
    )
    _check_matches_one_device(report, "data_parallel", "tf.distribute", 2)


def _start_processes(backend, data_dir, tmp_path, options, count=2, local_devices=1, first=()):
    """`count` processes of the workflow joined on 127.0.0.1, each dumping its arrays.

    Each runs "data_parallel" (its arrays go to `p{i}.npz`); process 0 runs
    the runs named in `first` before it.
    """
    address = f"127.0.0.1:{_free_port()}"
    env = _env(backend, {"JAX_NUM_CPU_DEVICES": str(local_devices)})
    return [
        subprocess.Popen(
            _workflow_command(
                data_dir, tmp_path / f"p{i}.json",
                [*options, "--process", str(i), str(count), address, "--dump", str(tmp_path / f"p{i}.npz"),
                 *(first if i == 0 else ()), "data_parallel"],
            ),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(count)
    ]


@pytest.mark.one_backend
def test_jax_data_parallel_matches_one_device(odd_valid_folder, tmp_path):
    # Two processes on 127.0.0.1 (keras.distribution.initialize) of two
    # virtual CPU devices each: DataParallel over 4 devices, every process
    # feeding its half of each global batch of 16 and getting back every
    # prediction (15 validation images: padded for 4 devices). Process 0
    # first runs the workflow on one of its devices, alone (no
    # distribution): the reference. Both processes must end with its
    # weights, LR finder curve, validation losses and TTA probabilities.
    procs = _start_processes("jax", odd_valid_folder, tmp_path, [], local_devices=2, first=["none"])
    try:
        outputs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output[-4000:]
    reports = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    assert reports[0]["none"]["distribution"]["engine"] == "none"
    _check_matches_one_device(reports[0], "data_parallel", "keras.distribution", 4, processes=2)
    assert reports[1]["data_parallel"]["distribution"] == reports[0]["data_parallel"]["distribution"]
    assert reports[1]["data_parallel"]["trained_max_abs_change"] > 0.1
    assert not reports[1]["data_parallel"]["saved_synchronized"]
    assert reports[1]["data_parallel"]["reload_max_abs_diff"] == 0.0
    runs = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
    assert sorted(runs[0].files) == sorted(runs[1].files)
    for key in runs[0].files:  # process 1 ends as process 0, hence as the reference
        np.testing.assert_allclose(runs[1][key], runs[0][key], rtol=0, atol=TOLERANCE, err_msg=key)


@pytest.mark.one_backend
def test_torch_two_gloo_processes(odd_valid_folder, tmp_path):
    # torch.distributed (gloo) on 127.0.0.1. (1) Plain model.fit of a
    # BatchNorm-free CNN, two parameter groups, SGDR: two processes, each on
    # half of every batch with gradients averaged, end with one process's
    # weights and logged losses. (2) The whole learner workflow runs on two
    # processes, which end identical (BatchNorm statistics are process 0's,
    # so not one device's: the README says so).
    script = str(ROOT / "tests" / "torch_gradient_average.py")
    env = _env("torch")
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(tmp_path / f"g{i}.npz"), str(i), "2", address],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    procs += _start_processes("torch", odd_valid_folder, tmp_path, ["--ps", "0"])
    try:
        one = subprocess.run([sys.executable, script, str(tmp_path / "g.npz")], env=env, capture_output=True,
                             text=True, timeout=900)
        outputs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert one.returncode == 0, one.stderr[-4000:]
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output[-4000:]
    reference = np.load(tmp_path / "g.npz")
    assert int(reference["processes"]) == 1 and float(reference["change"]) > 0.01
    for i in range(2):
        run = np.load(tmp_path / f"g{i}.npz")
        assert int(run["processes"]) == 2
        for key in reference.files:
            if key.startswith("w") or key.endswith("losses"):
                assert np.max(np.abs(run[key] - reference[key])) <= TOLERANCE, (i, key)

    runs = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
    for i in range(2):
        report = json.loads((tmp_path / f"p{i}.json").read_text())["data_parallel"]
        assert report["distribution"] == {
            "engine": "torch.distributed", "devices": 2, "processes": 2,
            "global_batch_size": 16, "per_device_batch_size": 8,
        }
        assert report["n_valid"] == 15 and report["epochs"] == 4
        assert report["trained_max_abs_change"] > 0.1
    for key in runs[0].files:
        assert np.max(np.abs(runs[0][key] - runs[1][key])) <= 1e-6, key


# ------------------------------------------------------- in-process checks
def test_resolve_distribution_one_device():
    replicas = resolve_distribution("none")
    assert (replicas.engine, replicas.devices, replicas.processes) == ("none", 1, 1)
    assert resolve_distribution(None).devices == 1
    assert resolve_distribution(replicas) is replicas


def test_resolve_distribution_rejects_unknown_value():
    with pytest.raises(ValueError, match=r"distribution must be one of \('none', 'data_parallel'\).*'mirrored'"):
        resolve_distribution("mirrored")


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch answer; JAX and TF are tested above")
def test_data_parallel_on_torch_names_the_supported_ways():
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax.*KERAS_BACKEND=tensorflow"):
        resolve_distribution("data_parallel")


def test_batch_size_must_divide_by_devices():
    with pytest.raises(ValueError, match=r"batch_size=30 is the global batch size.*4 devices.*batch_size=28 or 32"):
        Replicas("keras.distribution", devices=4).check_batch_size(30)
    Replicas("keras.distribution", devices=4).check_batch_size(32)


def test_learner_checks_batch_size_before_building(tiny_data):
    from kertransfer import ConvLearner

    replicas = Replicas("keras.distribution", devices=3)  # 16 images do not divide by 3
    with pytest.raises(ValueError, match=r"data.batch_size=16 .* 3 devices"):
        ConvLearner.pretrained("tiny_cnn", tiny_data, weights=None, distribution=replicas)


def test_cli_distribute_switch(tmp_path):
    from kertransfer.cli import _config
    from kertransfer.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", str(tmp_path), "--distribute", "data_parallel"])
    assert _config(args).distribute == "data_parallel"
    assert _config(parser.parse_args(["train", str(tmp_path)])).distribute == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", str(tmp_path), "--distribute", "mirrored"])


def test_train_checks_batch_size_before_reading_data(tmp_path):
    from kertransfer.train import TrainConfig
    from kertransfer.train import train

    config = TrainConfig(batch_size=30, distribute=Replicas("keras.distribution", devices=4))
    with pytest.raises(ValueError, match="batch_size=30 .* 4 devices"):
        train(tmp_path / "no_such_folder", tmp_path / "run", config, verbose=0)
    assert not (tmp_path / "run").exists()


def test_portable_config_unsynchronizes_batch_norm():
    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "BatchNormalization", "config": {"name": "bn", "synchronized": True}},
        {"class_name": "Functional", "config": {"layers": [
            {"class_name": "BatchNormalization", "config": {"name": "inner", "synchronized": True}},
            {"class_name": "Dense", "config": {"name": "fc", "units": 2}},
        ]}},
    ]}}
    out = portable_config(config)
    layers = out["config"]["layers"]
    assert layers[0]["config"]["synchronized"] is False
    assert layers[1]["config"]["layers"][0]["config"]["synchronized"] is False
    assert layers[1]["config"]["layers"][1] == {"class_name": "Dense", "config": {"name": "fc", "units": 2}}
    assert config["config"]["layers"][0]["config"]["synchronized"] is True  # a copy


def test_batch_multiple_cuts_the_short_last_batch():
    features = np.arange(38, dtype="float32")[:, None]
    labels = np.arange(38)
    # 38 = 2 * 16 + 6: the last batch is cut to 4 for 4 devices, kept for 2.
    four = FeatureBatches(features, labels, 16, batch_multiple=4)
    assert [len(four[i][0]) for i in range(len(four))] == [16, 16, 4]
    two = FeatureBatches(features, labels, 16, batch_multiple=2)
    assert [len(two[i][0]) for i in range(len(two))] == [16, 16, 6]
    # A remainder below the device count drops the batch.
    assert len(FeatureBatches(features[:35], labels[:35], 16, batch_multiple=4)) == 2
    with pytest.raises(ValueError, match="batch_multiple must .* divides batch_size"):
        FeatureBatches(features, labels, 16, batch_multiple=3)


@pytest.mark.one_backend  # data, cache and plot code: the same on every backend
def test_image_batches_batch_multiple(tiny_data):
    # 96 training images in batches of 20: 4 full, then the 16 left, cut to a multiple.
    batches = tiny_data.train_batches(batch_size=20, batch_multiple=4, seed=0)
    assert len(batches) == 5 and batches.num_samples == 96
    assert batches[4][0].shape[0] == 16
    batches = tiny_data.train_batches(batch_size=20, batch_multiple=5, seed=0)
    assert len(batches) == 5 and batches.num_samples == 95
    assert batches[4][0].shape[0] == 15


def test_predict_padded_one_device_is_predict():
    set_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = np.random.default_rng(0).normal(size=(13, 3)).astype("float32")
    np.testing.assert_allclose(predict_padded(model, x, batch_size=4), model.predict(x, batch_size=4, verbose=0))


def _decoding_counted(batches, monkeypatch):
    """Counts the images `batches` decodes (its split's `image` calls)."""
    calls = []
    image = batches.split.image
    monkeypatch.setattr(batches.split, "image", lambda i: calls.append(i) or image(i))
    return calls


@pytest.mark.parametrize("processes", [2, 4])
def test_process_slices_decode_only_their_images_and_rebuild_the_batch(tiny_data, processes, monkeypatch):
    # Training batches (random crops, augmentation layers drawn per batch):
    # the processes' slices, each made alone, are the whole batch's rows.
    whole = tiny_data.train_batches(batch_size=16, seed=3)
    sliced = tiny_data.train_batches(batch_size=16, seed=3)
    expected = {index: whole[index] for index in (0, len(whole) - 1)}
    calls = _decoding_counted(sliced, monkeypatch)  # the split is shared: count from here on
    for index, (x, y) in expected.items():
        parts = [sliced.process_slice(index, p, processes) for p in range(processes)]
        assert all(n == len(x) for _, n in parts)
        np.testing.assert_allclose(np.concatenate([part[0] for part, _ in parts]), x, atol=1e-3)
        np.testing.assert_array_equal(np.concatenate([part[1] for part, _ in parts]), y)
    assert len(calls) == 2 * 16  # each image of the two batches once, over all slices
    monkeypatch.undo()
    assert np.abs(whole[0][0] - tiny_data.train_batches(batch_size=16, seed=3, augment=False)[0][0]).mean() > 1

    # TTA-style batches (per-image seeds), the short last batch padded to a
    # multiple of 4 devices with copies of its last image.
    whole = tiny_data.fixed_batches("valid", tfms=tiny_data.train_tfms, augment=True, seed=1, batch_size=10)
    sliced = tiny_data.fixed_batches("valid", tfms=tiny_data.train_tfms, augment=True, seed=1, batch_size=10)
    last = len(whole) - 1
    x = whole[last][0]
    assert len(x) % 4  # the case that needs padding
    padded = np.concatenate([x, np.repeat(x[-1:], -len(x) % 4, axis=0)])
    parts = [sliced.process_slice(last, p, processes, multiple=4) for p in range(processes)]
    assert all(n == len(x) for _, n in parts)
    np.testing.assert_allclose(np.concatenate([part[0] for part, _ in parts]), padded, atol=1e-3)
