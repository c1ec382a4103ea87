"""The serving graph's image decode: `kertransfer.images` in TensorFlow ops.

`kertransfer.images` (Pillow) is the one decode path; the SavedModel's
signatures (`saved_model.py`) reproduce it in TensorFlow so TF Serving frames
photos as validation did: JPEG reduced-size decoding and EXIF orientation,
transparency onto white, short-side resize and center crop; and, per item of
a batch, which files decode and why the others do not.

Every function takes the `tensorflow` module as its `tf` argument, so
importing this module does not import TensorFlow.
"""


def _tf_read_uint(tf, data, offsets, num_bytes, little_endian):
    """Unsigned `num_bytes`-byte integers at `offsets` of an int64 byte vector."""
    last = tf.cast(tf.size(data), offsets.dtype) - 1
    values = [
        tf.gather(data, tf.clip_by_value(offsets + k, 0, last))
        for k in range(num_bytes)
    ]
    little = tf.add_n([v * 256 ** k for k, v in enumerate(values)])
    big = tf.add_n([v * 256 ** (num_bytes - 1 - k) for k, v in enumerate(values)])
    return tf.where(little_endian, little, big)


def tf_exif_orientation(tf, image_bytes, max_bytes=65536, max_entries=64):
    """The EXIF Orientation tag (1-8) of JPEG bytes, 1 when absent or odd.

    Finds the first APP1 segment holding `Exif\\0\\0` in the first
    `max_bytes` bytes, reads its TIFF header (byte order `II` or `MM`) and
    looks up tag 0x0112 among the first `max_entries` entries of IFD0 (EXIF
    2.32, section 4.5-4.6), as Pillow's `getexif()` does.
    """
    data = tf.cast(tf.io.decode_raw(
        tf.strings.substr(image_bytes, 0, max_bytes), tf.uint8), tf.int64)
    data = tf.concat([data, tf.zeros([16], tf.int64)], 0)
    size = tf.size(data) - 16
    positions = tf.range(size)
    pattern = {0: 0xFF, 1: 0xE1, 4: ord("E"), 5: ord("x"), 6: ord("i"),
               7: ord("f"), 8: 0, 9: 0}
    hit = tf.ones([size], tf.bool)
    for offset, value in pattern.items():
        hit = tf.logical_and(hit, tf.equal(tf.gather(data, positions + offset),
                                           value))
    found = tf.cast(tf.where(hit)[:, 0], tf.int32)

    def parse():
        tiff = found[0] + 10
        little = tf.equal(tf.gather(data, tiff), ord("I"))
        ifd = tiff + tf.cast(_tf_read_uint(tf, data, tiff + 4, 4, little),
                             tf.int32)
        count = tf.cast(_tf_read_uint(tf, data, ifd, 2, little), tf.int32)
        entries = ifd + 2 + 12 * tf.range(max_entries)
        tags = _tf_read_uint(tf, data, entries, 2, little)
        match = (tf.range(max_entries) < count) & tf.equal(tags, 0x0112) & (
            entries + 12 <= size)
        values = _tf_read_uint(tf, data, entries + 8, 2, little)
        index = tf.where(match)[:, 0]
        return tf.cond(
            tf.size(index) > 0,
            lambda: tf.cast(tf.gather(values, index[0]), tf.int32),
            lambda: tf.constant(1, tf.int32))

    orientation = tf.cond(tf.size(found) > 0, parse,
                          lambda: tf.constant(1, tf.int32))
    in_range = tf.logical_and(orientation >= 1, orientation <= 8)
    return tf.where(in_range, orientation, 1)


def _tf_orient(tf, image, orientation):
    """`(h, w, c)` pixels turned upright, as Pillow's `exif_transpose`."""

    def transposed():
        return tf.transpose(image, [1, 0, 2])

    return tf.switch_case(orientation, [
        lambda: image,                                  # (unused)
        lambda: image,                                  # 1 upright
        lambda: tf.reverse(image, [1]),                 # 2 mirrored
        lambda: tf.reverse(image, [0, 1]),              # 3 rotated 180
        lambda: tf.reverse(image, [0]),                 # 4 flipped
        transposed,                                     # 5 transpose
        lambda: tf.reverse(transposed(), [1]),          # 6 rotated 90 cw
        lambda: tf.reverse(transposed(), [0, 1]),       # 7 transverse
        lambda: tf.reverse(transposed(), [0]),          # 8 rotated 90 ccw
    ])


def _tf_decode(tf, image_bytes, framing):
    """Encoded image -> float32 `(h, w, 3)` RGB, as `images.open_image`.

    JPEG: libjpeg's reduced-size decoding (`ratio`, Pillow's `draft`) by
    `images.jpeg_draft_scale`, the accurate integer DCT Pillow uses, then
    the EXIF orientation. PNG, GIF (first frame), BMP: transparent pixels
    composited onto white; grayscale to RGB; 16-bit PNGs keep their high
    byte.
    """
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, 3), b"\xff\xd8\xff")
    short_side = framing.decode_size

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        reduction = tf.minimum(shape[0] // short_side, shape[1] // short_side)
        branch = tf.where(reduction >= 8, 3, tf.where(
            reduction >= 4, 2, tf.where(reduction >= 2, 1, 0)))
        image = tf.switch_case(branch, [
            (lambda ratio=ratio: tf.io.decode_jpeg(
                image_bytes, channels=3, ratio=ratio,
                dct_method="INTEGER_ACCURATE"))
            for ratio in (1, 2, 4, 8)
        ])
        image = _tf_orient(tf, image, tf_exif_orientation(tf, image_bytes))
        return tf.cast(image, tf.float32)

    def other():
        image = tf.io.decode_image(image_bytes, channels=0,
                                   expand_animations=False, dtype=tf.uint8)
        image = tf.cast(image, tf.float32)
        channels = tf.shape(image)[-1]
        gray = image[..., :1]
        opaque = tf.fill(tf.shape(gray), 255.0)
        rgb = tf.cond(channels >= 3, lambda: image[..., :3],
                      lambda: tf.tile(gray, [1, 1, 3]))
        alpha = tf.switch_case(channels - 1, [
            lambda: opaque, lambda: image[..., 1:2], lambda: opaque,
            lambda: image[..., 3:4]])
        return tf.round((rgb * alpha + 255.0 * (255.0 - alpha)) / 255.0)

    image = tf.cond(is_jpeg, jpeg, other)
    image.set_shape([None, None, 3])
    return image


def tf_resize_and_crop(tf, image, framing):
    """TF twin of `images.decode_image`'s resize plus `center_crop`.

    The short side of `(h, w, 3)` pixels goes to `framing.decode_size`
    (`tf.image.resize`, bilinear with antialiasing: Pillow's filter, in
    Pillow's order: rows, round to whole pixel values, columns, round),
    then the center `image_size` square is cut.
    """
    size, short_side = framing.image_size, framing.decode_size
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    scale = short_side / tf.cast(tf.minimum(height, width), tf.float64)
    new_height = tf.maximum(short_side, tf.cast(
        tf.round(tf.cast(height, tf.float64) * scale), tf.int32))
    new_width = tf.maximum(short_side, tf.cast(
        tf.round(tf.cast(width, tf.float64) * scale), tf.int32))
    def to_pixels(values):  # Pillow's uint8 result: round half up, clip
        return tf.clip_by_value(tf.floor(values + 0.5), 0.0, 255.0)

    def resize():
        # Pillow resamples rows first, rounds to uint8, then columns;
        # doing the same keeps all but ~0.1% of pixels identical.
        wide = to_pixels(tf.image.resize(
            image, tf.stack([height, new_width]), method="bilinear",
            antialias=True))
        return to_pixels(tf.image.resize(
            wide, tf.stack([new_height, new_width]), method="bilinear",
            antialias=True))

    same = tf.logical_and(tf.equal(new_height, height),
                          tf.equal(new_width, width))
    image = tf.cond(same, lambda: image, resize)
    top = (new_height - size) // 2
    left = (new_width - size) // 2
    return tf.ensure_shape(image[top:top + size, left:left + size, :],
                           [size, size, 3])


# The files `serving_default` takes; a bad item gets its own error message.
_FILE_FORMATS = (  # (name, leading bytes), as `tf_frame_bytes` accepts them
    ("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG"), ("GIF", b"GIF8"),
    ("BMP", b"BM"))
# What base64 text of those files starts with: bytes sent without REST's
# {"b64": ...} wrapper, or base64-encoded twice.
_BASE64_STARTS = (b"/9j/", b"iVBORw0KGgo", b"R0lGOD", b"Qk")
_HEX_BYTES = [f"{i:02x}" for i in range(256)]


def tf_frame_bytes(tf, image_bytes, framing):
    """One encoded image -> `(image_size, image_size, 3)` float32 pixels."""
    known = tf.reduce_any(tf.stack([
        tf.equal(tf.strings.substr(image_bytes, 0, len(magic)), magic)
        for _, magic in _FILE_FORMATS]))
    check = tf.debugging.Assert(
        known,
        [
            "serving_default expects image_bytes to hold the raw bytes of "
            "a JPEG, PNG, GIF or BMP file, but received",
            tf.strings.length(image_bytes),
            "bytes starting with",
            tf.strings.substr(image_bytes, 0, 16),
            ". Over REST, send {\"b64\": \"<base64 of the file>\"} so the "
            "server decodes the base64; over gRPC or from Python, send "
            "the file's bytes unchanged; for decoded pixels use the "
            "predict_images signature.",
        ],
        name="check_image_bytes",
    )
    with tf.control_dependencies([check]):
        image = _tf_decode(tf, image_bytes, framing)
    return tf_resize_and_crop(tf, image, framing)


def tf_frame_decodable(tf, image_bytes, framing):
    """The framed images of the items that decode, and their positions.

    Graph ops cannot catch an error per element, but `tf.data` can: each
    item is framed by `tf_frame_bytes` inside `Dataset.map`, and
    `ignore_errors()` drops the items whose decoding failed (any error
    status but cancellation; tensorflow/core/kernels/data/experimental/
    ignore_errors_dataset_op.cc). Each item carries its position, so the
    survivors are known. `get_single_element()` runs the pipeline as one
    tensor-in tensor-out op, without an iterator to initialize, which is
    what it is for at serving time (`tf.data.Dataset.get_single_element`).
    A blank sentinel keeps the single batch non-empty when no item decodes.

    Returns:
        `(images, positions)`: float32 `(m, image_size, image_size, 3)` and
        int32 `(m,)`, in input order, `m <= len(image_bytes)`.
    """
    size = framing.image_size
    count = tf.shape(image_bytes)[0]
    items = tf.data.Dataset.from_tensor_slices(
        (tf.range(count), image_bytes))
    framed = items.map(
        lambda position, data: (position,
                                tf_frame_bytes(tf, data, framing)),
        num_parallel_calls=10,  # as tf.map_fn's parallel_iterations
        deterministic=True,
    ).ignore_errors()
    sentinel = tf.data.Dataset.from_tensors(
        (tf.constant(-1, tf.int32), tf.zeros([size, size, 3], tf.float32)))
    positions, images = framed.concatenate(sentinel).batch(
        tf.cast(count, tf.int64) + 1).get_single_element()
    return images[:-1], positions[:-1]


def tf_bytes_error(tf, image_bytes, decoded):
    """Why each item of a `(batch,)` string tensor was not classified.

    Only string ops that cannot fail on any input (positions clamped to
    each item's length), so the messages never fail the batch.

    Args:
        tf: the `tensorflow` module.
        image_bytes: `tf.string` `(batch,)`, the request.
        decoded: `tf.bool` `(batch,)`, which items were framed.

    Returns:
        `tf.string` `(batch,)`: `""` for decoded items; otherwise a message
        starting with `empty`, `not an image` or `undecodable <FORMAT>`.
    """
    length = tf.strings.length(image_bytes)
    padded = tf.strings.join([image_bytes, b"\0" * 8])

    def tail(num_bytes):  # the last num_bytes bytes (fewer if shorter)
        return tf.strings.substr(
            image_bytes, tf.maximum(length - num_bytes, 0),
            tf.fill(tf.shape(length), num_bytes))

    def hex_bytes(data, num_bytes):  # "ff d8 ff" of each item's first bytes
        values = tf.io.decode_raw(tf.strings.substr(data, 0, num_bytes),
                                  tf.uint8)
        digits = tf.gather(tf.constant(_HEX_BYTES), tf.cast(values, tf.int32))
        digits = tf.RaggedTensor.from_tensor(
            digits, lengths=tf.minimum(length, num_bytes))
        return tf.strings.reduce_join(digits, axis=-1, separator=" ")

    size = tf.strings.as_string(length)
    format_name = tf.fill(tf.shape(image_bytes), "")
    for name, magic in reversed(_FILE_FORMATS):
        format_name = tf.where(
            tf.equal(tf.strings.substr(padded, 0, len(magic)), magic),
            name, format_name)
    base64_text = tf.zeros(tf.shape(image_bytes), tf.bool)
    for start in _BASE64_STARTS:
        base64_text |= tf.equal(
            tf.strings.substr(padded, 0, len(start)), start)
    # A BMP header's file size: bytes 2-5, little-endian.
    bmp_size_bytes = tf.reshape(tf.cast(tf.io.decode_raw(
        tf.strings.substr(padded, 2, 4), tf.uint8), tf.int64), [-1, 4])
    bmp_declared = tf.reduce_sum(
        bmp_size_bytes * tf.constant([1, 256, 256 ** 2, 256 ** 3], tf.int64),
        axis=1)
    is_format = {name: tf.equal(format_name, name)
                 for name, _ in _FILE_FORMATS}
    truncation_hints = [
        (is_format["JPEG"] & tf.not_equal(tail(2), b"\xff\xd9"),
         ("; it does not end with the JPEG end-of-image marker ff d9 "
          "(truncated?)")),
        (is_format["PNG"] & tf.not_equal(
            tf.strings.substr(tail(8), 0, 4), b"IEND"),
         "; it does not end with a PNG IEND chunk (truncated?)"),
        (is_format["GIF"] & tf.not_equal(tail(1), b"\x3b"),
         "; it does not end with the GIF trailer byte 3b (truncated?)"),
        (is_format["BMP"] & (tf.cast(length, tf.int64) < bmp_declared),
         tf.strings.join(["; it is shorter than the ",
                          tf.strings.as_string(bmp_declared),
                          " bytes its header declares (truncated)"])),
    ]
    hint = tf.strings.join(
        [tf.where(found, text, "") for found, text in truncation_hints])
    not_an_image = tf.strings.join([
        "not an image: starts with ", hex_bytes(padded, 8), " (", size,
        " bytes), not like a JPEG, PNG, GIF or BMP file",
        tf.where(
            base64_text,
            "; this looks like base64 text: over REST send {\"b64\": "
            "\"<base64 of the file>\"} so that the server decodes it, over "
            "gRPC the file's bytes unchanged", ""),
    ])
    undecodable = tf.strings.join([
        "undecodable ", format_name, ": starts like a ", format_name,
        " file but does not decode (", size, " bytes)", hint])
    error = tf.where(tf.equal(format_name, ""), not_an_image, undecodable)
    error = tf.where(tf.equal(length, 0),
                     "empty: 0 bytes received, expected the bytes of an "
                     "image file", error)
    return tf.where(decoded, "", error)
