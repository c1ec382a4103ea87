"""ConvLearner: the fast.ai v0.7 transfer-learning verbs on a Keras 3 model.

`ConvLearner.pretrained(arch, data)` puts fast.ai's head
(`kertransfer.heads`) on a pretrained backbone; `lr_find`, `fit` (SGDR with
`cycle_len`/`cycle_mult`) and fastai v2's `fit_sgdr`, `fit_one_cycle` and
`fine_tune` (`kertransfer.fitting`), `freeze_to`/`unfreeze` with
differential LRs, `precompute` (`kertransfer.precompute`) and `TTA` work as
in the fast.ai course. Under the hood each fit is one `model.fit` with
fresh optimizers (Keras needs a recompile whenever `trainable` changes).
"""

import functools
import math
import os

import keras

from kertransfer.backbones import BackboneSpec
from kertransfer.backbones import get_backbone
from kertransfer.backbones.custom import body_layer_groups
from kertransfer.backbones.custom import image_body
from kertransfer.backbones.custom import resolve_preprocessing
from kertransfer.backbones.weights import initialized_by_loading
from kertransfer.console import counted_batches
from kertransfer.console import progress_bar
from kertransfer.console import progress_bars
from kertransfer.distribute import predict_padded
from kertransfer.distribute import resolve_distribution
from kertransfer.distribute import synchronize_batch_norm
from kertransfer.distribute import warn_replicated_dropout
from kertransfer.fitting import TrainingVerbs
from kertransfer.fitting import in_scope
from kertransfer.groups import match_layer_groups
from kertransfer.groups import trainable_groups
from kertransfer.heads import head_layers
from kertransfer.heads import resolve_head_args
from kertransfer.layers import AdaptiveConcatPooling2D
from kertransfer.portable import copy_weights
from kertransfer.portable import portable_model
from kertransfer.portable import read_model_info
from kertransfer.portable import save_portable
from kertransfer.precompute import ActivationCache
from kertransfer.reprs import html_repr
from kertransfer.reprs import short_list
from kertransfer.reprs import text_repr
from kertransfer.tta import tta_probs

__all__ = ["ConvLearner", "sgd_momentum"]


def sgd_momentum(learning_rate):
    """fast.ai v0.7's default optimizer: SGD with momentum 0.9."""
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)


def _not_rebuildable(name, **kwargs):
    """The builder of a `from_model` learner's spec: there is none."""
    raise ValueError(
        f"The backbone {name!r} of a ConvLearner.from_model learner is a model you passed, "
        "not a constructor: it cannot be built again by name. Register a constructor "
        "with kertransfer.backbones.register_keras_backbone to build it by name."
    )


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


class ConvLearner(TrainingVerbs):
    """A pretrained CNN body with a new head, trained the fast.ai way.

    Build it with `ConvLearner.pretrained` (a registered backbone) or
    `ConvLearner.from_model` (a Keras model you have). The model takes raw RGB pixels
    `(batch, height, width, 3)` in `[0, 255]` (preprocessing is its first
    layer) and returns class probabilities `(batch, num_classes)`.

    Attributes:
        model: the full `keras.Model`.
        data: the `ImageClassifierData`.
        layer_groups: list of lists of layers: the backbone's groups (earliest
            first), then the head.
        sched: the last schedule run, as fast.ai v0.7: `LRFindResult`
            after `lr_find`, `FitRecord` after a fit; `sched.plot_lr()` and
            `sched.plot_loss()` work on both.
        lr_finder: the `LRFindResult` of the last `lr_find` (kept through
            later fits, as fastai v2 keeps the finder apart), or None.
        history: list of per-epoch dicts over all fits (with a `stage` key).
        distribution: the `kertransfer.distribute.Replicas` every verb runs
            under (engine, devices, processes).

    The backbone must have been built in `distribution`'s scope (as
    `pretrained` does).
    """

    def __init__(
        self, arch, data, backbone, dropout=None, hidden_units=None, opt_fn=sgd_momentum,
        weights="imagenet", distribution=None, *, ps=None, xtra_fc=None,
    ):
        dropout, hidden_units = resolve_head_args(dropout, hidden_units, ps, xtra_fc)
        spec = get_backbone(arch)
        self.arch = spec.name
        self.weights = weights
        self.distribution = resolve_distribution(distribution)
        self.distribution.check_batch_size(data.batch_size, "data.batch_size")
        self.data = data
        self.backbone = backbone
        self.opt_fn = opt_fn
        # Multi-label (fast.ai v0.7 `is_multi`): independent sigmoids.
        self.is_multi = bool(getattr(data, "is_multi", False))
        activation = "sigmoid" if self.is_multi else "softmax"
        with self.distribution.scope():
            inputs = keras.Input((None, None, 3), name="image")
            pooled = AdaptiveConcatPooling2D(name="concat_pool")(backbone(inputs))
            self.head = head_layers(data.num_classes, dropout, hidden_units, activation)
            self.model = keras.Model(inputs, _apply(self.head, pooled), name=f"{self.arch}_classifier")
            self.body_model = keras.Model(inputs, pooled, name=f"{self.arch}_body")
            feats = keras.Input((pooled.shape[-1],), name="features")
            self.head_model = keras.Model(feats, _apply(self.head, feats), name="head")
        if self.distribution.engine == "tf.distribute" and self.distribution.devices > 1:
            synchronize_batch_norm(self.model)
            warn_replicated_dropout(self.model)
        body_groups = match_layer_groups(backbone, spec.layer_groups)
        self.layer_groups = [*body_groups.values(), [layer for layer in self.head if layer.weights]]
        self.group_names = [*body_groups, "head"]
        self._precompute = False
        # id(model) -> (trainable variable ids, optimizer, its fresh state).
        self._compiled = {}
        self._bn_freeze = False
        self._activation_cache = ActivationCache(
            self.body_model, backbone, self.arch, weights, self.distribution
        )
        self._features = self._activation_cache.features  # {key: activations}
        self.sched = None
        self.lr_finder = None
        self.history = []
        self.freeze()

    @classmethod
    def pretrained(
        cls,
        arch,
        data,
        precompute=True,
        dropout=None,
        hidden_units=None,
        weights="imagenet",
        opt_fn=sgd_momentum,
        distribution=None,
        *,
        ps=None,
        xtra_fc=None,
    ):
        """A learner on a pretrained backbone with a new head (fast.ai name).

        Head (fast.ai v0.7 `ConvnetBuilder`, `kertransfer.heads.head_layers`):
        concat(global average pool, global max pool) -> [BatchNorm ->
        Dropout(dropout/2) -> Dense(n, relu)] for each n in `hidden_units`
        -> BatchNorm -> Dropout(dropout) ->
        Dense(num_classes, softmax), or sigmoid when `data.is_multi`
        (multi-label: binary cross-entropy loss, samples-averaged F2
        metric `f2`, as fast.ai lesson 2 Planet). The body starts frozen;
        frozen BatchNorm layers run in inference mode.

        Args:
            arch: registered backbone name, e.g. `"efficientnet_lite0"`,
                `"resnet34"` (see `kertransfer.backbones.list_backbones()`).
            data: `ImageClassifierData`.
            precompute: train the head on cached body activations at first.
            dropout: dropout rate before the output layer (before the
                hidden ones: half of it), or a list with one rate per dense
                layer; default 0.5.
            hidden_units: widths of the head's hidden dense layers; default
                `(512,)`.
            weights: `"imagenet"`, None, or a local weights file (passed to
                the backbone builder).
            opt_fn: `opt_fn(learning_rate=...) -> keras Optimizer`; default
                SGD with momentum 0.9, as fast.ai v0.7.
            distribution: None (one device, or the `keras.distribution` /
                `tf.distribute` strategy scope the caller made current),
                `"none"`, `"data_parallel"` (all devices: JAX
                `keras.distribution.DataParallel`, TensorFlow
                `MirroredStrategy`), or a distribution/strategy object; see
                `kertransfer.distribute.resolve_distribution`. Batch sizes
                stay global (`data.batch_size` images per step over all
                devices) and must divide by the device count; results match
                one device with the same batch.
            ps: fast.ai v0.7's name for `dropout` (an alias).
            xtra_fc: fast.ai v0.7's name for `hidden_units` (an alias).

        Returns:
            `ConvLearner`.

        Raises:
            ValueError: on a bad `distribution`, a `data.batch_size` that
                does not divide by its device count, or a head argument
                given under both of its names (`dropout` and `ps`).

        Example:

        ```python
        data = ImageClassifierData.from_paths("data/dogscats", image_size=224)
        learn = ConvLearner.pretrained("efficientnet_lite0", data)
        learn.lr_find(); learn.fit(1e-2, 2)
        # Every device, batches of 64 split over them (JAX or TensorFlow):
        learn = ConvLearner.pretrained("efficientnet_lite0", data, distribution="data_parallel")
        ```
        """
        spec = get_backbone(arch)
        dropout, hidden_units = resolve_head_args(dropout, hidden_units, ps, xtra_fc)
        replicas = resolve_distribution(distribution)
        replicas.check_batch_size(data.batch_size, "data.batch_size")
        with replicas.scope():
            backbone = spec.builder(weights=weights, input_shape=(None, None, 3), include_top=False)
        learn = cls(
            spec.name, data, backbone, dropout=dropout, hidden_units=hidden_units, opt_fn=opt_fn, weights=weights,
            distribution=replicas,
        )
        learn.precompute = precompute
        return learn

    @classmethod
    def from_model(
        cls,
        keras_model,
        data,
        layer_groups=None,
        preprocessing=None,
        precompute=True,
        dropout=None,
        hidden_units=None,
        opt_fn=sgd_momentum,
        distribution=None,
        *,
        ps=None,
        xtra_fc=None,
    ):
        """A learner on a Keras image model you already have (fast.ai
        v0.7 `ConvLearner.from_model_data`, v2 `vision_learner(dls, arch)`).

        `keras_model` is the body: a `keras.applications` model or KerasHub
        backbone with `include_top=False`, or any functional model with one
        image input `(batch, height, width, 3)` and a 4-D feature map out. A
        whole classifier is cut as fast.ai cuts it, at the pooling layer:
        the body ends where its last `GlobalAveragePooling2D`,
        `GlobalMaxPooling2D` or `Flatten` layer starts
        (`kertransfer.backbones.custom.image_body`). The learner puts
        `ImagePreprocessing` before it (it takes raw pixels in `[0, 255]`
        like every kertransfer model) and the head of `pretrained` after it.
        The body reuses `keras_model`'s layers, so training changes
        `keras_model`'s weights too. Under `distribution="data_parallel"`,
        build `keras_model` inside `distribution`'s scope.

        Args:
            keras_model: the `keras.Model` (see above).
            data: `ImageClassifierData`; a fixed input size of
                `keras_model` must equal `data.image_size`.
            layer_groups: None: fast.ai's default, the body's layers with
                weights split into two halves by layer order (with the
                head, three groups: `freeze_to(1)`, `fit(np.array([lr0,
                lr1, lr2]))`); or the body's groups, earliest first, as a
                list of lists of layer names, a list of prefix regexes, or
                a dict `{name: regex}` of regexes matching whole names
                (`kertransfer.groups.group_patterns`). Every layer with
                weights must be in exactly one group. The head is always
                added as the last group.
            preprocessing: required: how `keras_model` expects its input
                scaled: `"caffe"` (ResNet50, VGG), `"tf"` ([-1, 1]:
                MobileNetV2, Xception), `"torch"` (DenseNet), `"raw"`
                (pixels in [0, 255]: EfficientNet, ConvNeXt, MobileNetV3,
                which rescale inside) or a dict `mean`, `std` in pixel
                units (`kertransfer.backbones.custom.resolve_preprocessing`).
            precompute, dropout, hidden_units, opt_fn, distribution, ps,
                xtra_fc: as in `pretrained`.

        Returns:
            `ConvLearner` (the body frozen), named after `keras_model`.

        Raises:
            TypeError: if `keras_model` is not a `keras.Model`, or
                `layer_groups` is malformed.
            ValueError: (before the learner is built) if `keras_model` has
                no single 4-D 3-channel input or no feature map to cut at,
                takes a fixed image size other than `data.image_size`, has
                fewer layers with weights than groups, if `layer_groups`
                leaves a layer with weights out (or in two groups) or has
                an empty group, on a missing or unknown `preprocessing`, or
                as `pretrained`.

        Example:

        ```python
        base = keras.applications.MobileNetV2(include_top=False, input_shape=(224, 224, 3))
        learn = ConvLearner.from_model(base, data, preprocessing="tf")
        learn.fit(1e-2, 1)
        learn.unfreeze()
        learn.fit(np.array([1e-4, 1e-3, 1e-2]), 2, cycle_len=1)
        ```
        """
        dropout, hidden_units = resolve_head_args(dropout, hidden_units, ps, xtra_fc)
        replicas = resolve_distribution(distribution)
        replicas.check_batch_size(data.batch_size, "data.batch_size")
        preprocessing = resolve_preprocessing(preprocessing)
        with replicas.scope():
            body = image_body(keras_model, preprocessing, image_size=data.image_size)
        spec = BackboneSpec(
            name=body.name,
            builder=functools.partial(_not_rebuildable, body.name),
            layer_groups=body_layer_groups(body, layer_groups),
            default_image_size=data.image_size,
            weights_note="the weights keras_model had",
            preprocessing=preprocessing,
        )
        learn = cls(
            spec, data, body, dropout=dropout, hidden_units=hidden_units, opt_fn=opt_fn, weights=None,
            distribution=replicas,
        )
        learn.precompute = precompute
        return learn

    # ----------------------------------------------------------- freezing
    def freeze_to(self, n):
        """Freezes layer groups `[0, n)` and unfreezes groups `[n, end)`.

        Frozen BatchNorm layers run in inference mode. The next `fit`
        recompiles with fresh optimizers, as Keras requires.

        Raises:
            ValueError: if `n` is not in `[0, len(layer_groups) - 1]` (the
                head always trains).
        """
        last = len(self.layer_groups) - 1
        if int(n) != n or not 0 <= n <= last:
            raise ValueError(
                f"freeze_to(n) takes 0 <= n <= {last} (there are "
                f"{last + 1} layer groups; the head always trains). Received n={n}."
            )
        body = len(self.layer_groups) - 1
        for i, group in enumerate(self.layer_groups):
            for layer in group:
                is_body_bn = i < body and isinstance(layer, keras.layers.BatchNormalization)
                layer.trainable = i >= n and not (self._bn_freeze and is_body_bn)
        self._frozen_to = n

    def bn_freeze(self, value=True):
        """Keeps the body's BatchNorm layers frozen, even after `unfreeze`.

        fast.ai v0.7 `learn.bn_freeze(True)`: with small batches, or data much
        like ImageNet, re-estimating BatchNorm statistics hurts; frozen, they
        keep ImageNet's statistics (inference mode) and their scale/offset.
        """
        self._bn_freeze = bool(value)
        self.freeze_to(self._frozen_to)

    def freeze(self):
        """Freezes the whole body; only the head trains (fast.ai `freeze`)."""
        self.freeze_to(len(self.layer_groups) - 1)

    def unfreeze(self):
        """Makes every layer group trainable and turns precompute off."""
        self.freeze_to(0)
        self.precompute = False

    # --------------------------------------------------------- precompute
    @property
    def precompute(self):
        """Train the head on cached body activations (no augmentation)."""
        return self._precompute

    @precompute.setter
    def precompute(self, value):
        if value and trainable_groups(self.layer_groups[:-1]):
            raise ValueError(
                "precompute=True needs a frozen body (the cached activations "
                "would go stale as it trains). Call freeze() first."
            )
        self._precompute = bool(value)

    def _activations(self, split):
        """Body activations `(n, features)` of `split`, cached on disk
        (`kertransfer.precompute.ActivationCache`)."""
        return self._activation_cache.get(self.data, split)

    # --------------------------------------------------------- inference
    @in_scope
    def predict(self, split="valid", verbose=0):
        """Probabilities on `split` with validation transforms (center crop).

        Args:
            split: "valid", "train" or "test".
            verbose: 1 shows a progress bar over the batches.

        Returns:
            `(probs, targets)`: `(n, num_classes)` float array and int labels
            `(n,)`, or multi-hot float32 `(n, num_classes)` when
            `data.is_multi` (`None` for the unlabeled test split).
        """
        with progress_bars(verbose):
            batches = self.data.fixed_batches(split)
            probs = predict_padded(self.model, counted_batches(batches, progress_bar(len(batches))))
        return probs, self._targets(split)

    def _targets(self, split):
        return None if split == "test" else self.data.split(split).labels

    @in_scope
    def TTA(self, n_aug=4, split="valid", seed=0, beta=None, return_all=False, verbose=0):
        """Test-time augmentation (fast.ai v0.7 `learn.TTA`).

        Averages the probabilities of the original (center-cropped) images
        and of `n_aug` augmented copies (training transforms: random crop and
        augmentation layers called with `training=True`), with the model in
        inference mode.

        Args:
            n_aug: number of augmented copies per image.
            split: "valid" or "test".
            seed: seed of the augmentation; equal seeds give equal results.
            beta: None (fast.ai v0.7: plain mean over the `n_aug + 1`
                predictions), or the weight in [0, 1] of the un-augmented
                prediction against the mean of the augmented ones (fast.ai v2
                `Learner.tta`, default there 0.25).
            return_all: return each copy's probabilities, `(n_aug + 1, n,
                num_classes)`, the original first, instead of their mean
                (fast.ai v0.7 returned this stack, as log-probabilities:
                its `np.mean(np.exp(log_preds), 0)` is `probs.mean(0)`
                here).
            verbose: 1 shows a progress bar over the batches of all copies.

        Returns:
            `(probs, targets)` as in `predict`; with `return_all`, `probs`
            is `(n_aug + 1, n, num_classes)`.

        Raises:
            ValueError: on `n_aug < 0`, `beta` outside [0, 1], or `beta`
                with `n_aug=0`.
        """
        with progress_bars(verbose):
            blended = tta_probs(self.model, self.data, n_aug, split, seed, beta=beta, return_all=return_all)
        return blended, self._targets(split)

    def set_data(self, data):
        """Swaps in `data` (e.g. `data.resize(299)`), keeping all weights.

        The body is fully convolutional and the head pools globally, so any
        image size works (unless the body was built for one size, as a
        `from_model` body may be); precompute caches are per image size.

        Raises:
            ValueError: if the classes, or single- vs multi-label, differ,
                or the body takes another fixed image size.
        """
        height, width = self.backbone.input_shape[1:3]
        if (height, width) != (None, None) and (height, width) != (data.image_size, data.image_size):
            raise ValueError(
                f"set_data: the body {self.backbone.name!r} takes {height}x{width} images, but "
                f"data.image_size={data.image_size}. Resize the data (data.resize({height})), or "
                "build the body with input_shape=(None, None, 3) for any size."
            )
        if list(data.classes) != list(self.data.classes):
            raise ValueError(
                f"set_data needs the same classes. Have {self.data.classes}, "
                f"received {data.classes}."
            )
        if bool(getattr(data, "is_multi", False)) != self.is_multi:
            raise ValueError(
                "set_data needs data of the same kind: this learner is "
                f"{'multi' if self.is_multi else 'single'}-label (is_multi="
                f"{self.is_multi}), the new data is not."
            )
        self.distribution.check_batch_size(data.batch_size, "data.batch_size")
        self.data = data

    # ----------------------------------------------------------- display
    def _repr_title(self):
        return f"ConvLearner(arch={self.arch!r}, weights={self.weights!r})"

    def _repr_rows(self):
        """What `repr(learn)` and a notebook show: `[(name, value)]`."""
        data = self.data
        trains = self.group_names[self._frozen_to :]
        trainable = sum(math.prod(v.shape) for v in self.model.trainable_weights)
        images = f"{len(data.train_paths)} train, {len(data.valid_paths)} valid"
        if data.test_paths is not None:
            images += f", {len(data.test_paths)} test"
        epochs = str(len(self.history))
        if self.history:
            last = self.history[-1]
            scores = [f"{k} {float(last[k]):.4f}" for k in ("val_loss", "val_accuracy", "val_f2") if k in last]
            epochs += f" (last: {', '.join([str(last.get('stage')), *scores])})"
        return [
            (f"classes ({data.num_classes}{', multi-label' if self.is_multi else ''})", short_list(data.classes)),
            ("image size", f"{data.image_size} px"),
            ("images", f"{images} (batch size {data.batch_size})"),
            ("layer groups", ", ".join(self.group_names)),
            ("frozen to", f"group {self._frozen_to} (trains {', '.join(trains)})"),
            ("bn_freeze", True if self._bn_freeze else None),
            ("precompute", self.precompute),
            ("parameters", f"{self.model.count_params():,} ({trainable:,} trainable)"),
            ("epochs trained", epochs),
            ("devices", f"{self.distribution.devices} ({self.distribution.engine})" if self.distribution.devices > 1 else None),
        ]

    def __repr__(self):
        """The arch, classes, image size, images per split, frozen groups, epochs.

        ```
        ConvLearner(arch='efficientnet_lite0', weights='imagenet')
          classes (2): ants, bees
          image size: 64 px
          images: 100 train, 100 valid (batch size 16)
          layer groups: group0, group1, head
          frozen to: group 2 (trains head)
          precompute: True
          parameters: 4,737,570 (1,318,402 trainable)
          epochs trained: 1 (last: fit, val_loss 0.7413, val_accuracy 0.8100)
        ```
        """
        return text_repr(self._repr_title(), self._repr_rows())

    def _repr_html_(self):
        """`repr` as a small table, what Jupyter shows."""
        return html_repr(self._repr_title(), self._repr_rows())

    # ------------------------------------------------------------ saving
    def save(self, path):
        """Saves the model as a `.keras` file that plain Keras loads.

        The file holds `kertransfer.portable.portable_model(self.model)`:
        Keras's own layers only, with this model's weights, so
        `keras.saving.load_model(path)` works in any Python with Keras and
        a backend, without kertransfer; it takes raw RGB pixels `(batch,
        height, width, 3)` in `[0, 255]` and returns probabilities `(batch,
        num_classes)`. The class names, multi-label flag, framing (image
        size, crop) and normalization are in the archive's
        `metadata.json` (`kertransfer.portable.read_model_info`). No
        optimizer: every fit starts fresh optimizers (fast.ai), and its
        state would double or triple the file (one momentum per group).

        Args:
            path: file path; `.keras` is appended when missing.

        Returns:
            The path written.

        Example:

        ```python
        learn.save("runs/dogscats/model.keras")
        model = keras.saving.load_model("runs/dogscats/model.keras")  # no kertransfer needed
        ```
        """
        path = os.fspath(path)
        if not path.endswith(".keras"):
            path += ".keras"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        framing = self.data.valid_tfms.framing
        info = {
            "arch": self.arch,
            "classes": [str(c) for c in self.data.classes],
            "multi_label": self.is_multi,
            "preprocessing": framing.to_dict(),
        }
        return save_portable(self.model, path, info)

    def load(self, path):
        """Loads weights saved by `save` into this learner's model.

        Files of every kertransfer version load: a portable file (Keras's
        layers, `kertransfer.portable`) and one written before (this
        model's own layers).

        Raises:
            FileNotFoundError: if `path` (or `path + ".keras"`) is missing.
            ValueError: if the file's weights do not fit this model.
        """
        path = os.fspath(path)
        if not path.endswith(".keras"):
            path += ".keras"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No saved model at {path}.")
        with initialized_by_loading():  # the file holds every weight
            saved = keras.saving.load_model(path, compile=False)
        # A portable file has the layout of `portable_model(self.model)`:
        # its weights go there in order, then across by layer name.
        twin = portable_model(self.model) if read_model_info(path) else None
        with self.distribution.scope():
            if twin is None:
                self.model.set_weights(saved.get_weights())
            else:
                twin.set_weights(saved.get_weights())
                copy_weights(twin, self.model)
