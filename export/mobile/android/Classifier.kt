// Android image classifier for a kertransfer LiteRT export.
//
// Copy RUN_DIR/export/litert/model.tflite (or model_int8.tflite),
// labels.txt and preprocessing.json into app/src/main/assets/, keep the model
// uncompressed (android { androidResources { noCompress += "tflite" } }), and
// add
//     implementation("com.google.ai.edge.litert:litert:<version>")
//     implementation("androidx.exifinterface:exifinterface:1.3.7")
// (https://ai.google.dev/edge/litert/android). The model takes float32 RGB
// pixels in [0, 255], shape [1, size, size, 3] (normalization is inside the
// model; the int8 export keeps float32 input and output), and returns
// probabilities [1, numClasses] in labels.txt order.
//
// Framing follows preprocessing.json, as kertransfer's validation did
// (kertransfer/images.py): EXIF orientation applied (classifyFile /
// classifyStream read it; a Bitmap from the camera API must already be
// upright), short side resized to decode_size (round(image_size / crop_pct),
// 256 for 224) with an antialiased filter, then the center image_size square.
// This file is not compiled or run in kertransfer's CI (no Android toolchain
// there); litert_runner.py is the tested reference of the same steps.
package com.example.kertransfer

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Matrix
import androidx.exifinterface.media.ExifInterface
import org.json.JSONObject
import org.tensorflow.lite.Interpreter
import java.io.File
import java.io.FileInputStream
import java.io.InputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import kotlin.math.max
import kotlin.math.min

class Classifier(
    context: Context,
    modelAsset: String = "model.tflite",
    labelsAsset: String = "labels.txt",
    preprocessingAsset: String = "preprocessing.json",
    numThreads: Int = 2,
) : AutoCloseable {
    private val interpreter = Interpreter(
        loadModel(context, modelAsset),
        Interpreter.Options().setNumThreads(numThreads),
    )
    val labels: List<String> = context.assets.open(labelsAsset)
        .bufferedReader().readLines().filter { it.isNotBlank() }
    private val framing = JSONObject(
        context.assets.open(preprocessingAsset).bufferedReader().readText())
    private val size = framing.getInt("image_size")
    private val decodeSize = framing.getInt("decode_size")
    private val input = ByteBuffer.allocateDirect(4 * size * size * 3)
        .order(ByteOrder.nativeOrder())
    private val output = Array(1) { FloatArray(labels.size) }

    init {
        val modelSize = interpreter.getInputTensor(0).shape()[1]
        require(modelSize == size) {
            "$modelAsset takes $modelSize px but $preprocessingAsset says $size: " +
                "copy files from the same export."
        }
    }

    /** Top-k (label, probability) of an image file, EXIF orientation applied. */
    fun classifyFile(file: File, k: Int = 5): List<Pair<String, Float>> {
        val orientation = ExifInterface(file.absolutePath).getAttributeInt(
            ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
        val bitmap = BitmapFactory.decodeFile(file.absolutePath)
        return classify(upright(bitmap, orientation), k)
    }

    /** Top-k of encoded image bytes (read twice: EXIF, then pixels). */
    fun classifyStream(open: () -> InputStream, k: Int = 5): List<Pair<String, Float>> {
        val orientation = open().use {
            ExifInterface(it).getAttributeInt(
                ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
        }
        val bitmap = open().use { BitmapFactory.decodeStream(it) }
        return classify(upright(bitmap, orientation), k)
    }

    /** Top-k (label, probability) pairs of an upright bitmap, best first. */
    fun classify(bitmap: Bitmap, k: Int = 5): List<Pair<String, Float>> {
        val pixels = frame(bitmap)
        val argb = IntArray(size * size)
        pixels.getPixels(argb, 0, size, 0, 0, size, size)
        input.rewind()
        for (p in argb) {  // raw RGB values, 0..255
            input.putFloat(((p shr 16) and 0xFF).toFloat())
            input.putFloat(((p shr 8) and 0xFF).toFloat())
            input.putFloat((p and 0xFF).toFloat())
        }
        interpreter.run(input, output)
        return output[0].withIndex()
            .sortedByDescending { it.value }
            .take(min(k, labels.size))
            .map { labels[it.index] to it.value }
    }

    /** EXIF orientation 1-8 -> the upright bitmap (Pillow's exif_transpose). */
    private fun upright(bitmap: Bitmap, orientation: Int): Bitmap {
        val m = Matrix()
        when (orientation) {
            ExifInterface.ORIENTATION_FLIP_HORIZONTAL -> m.setScale(-1f, 1f)
            ExifInterface.ORIENTATION_ROTATE_180 -> m.setRotate(180f)
            ExifInterface.ORIENTATION_FLIP_VERTICAL -> m.setScale(1f, -1f)
            ExifInterface.ORIENTATION_TRANSPOSE -> { m.setRotate(90f); m.postScale(-1f, 1f) }
            ExifInterface.ORIENTATION_ROTATE_90 -> m.setRotate(90f)
            ExifInterface.ORIENTATION_TRANSVERSE -> { m.setRotate(-90f); m.postScale(-1f, 1f) }
            ExifInterface.ORIENTATION_ROTATE_270 -> m.setRotate(-90f)
            else -> return bitmap
        }
        return Bitmap.createBitmap(bitmap, 0, 0, bitmap.width, bitmap.height, m, true)
    }

    /**
     * Short side to decodeSize, then the center size x size square.
     * Android's bilinear filter samples only 2x2 pixels, so large reductions
     * are done in halving steps first (an antialiased approximation of
     * Pillow's triangle filter).
     */
    private fun frame(bitmap: Bitmap): Bitmap {
        var image = bitmap
        while (min(image.width, image.height) >= 4 * decodeSize) {
            image = Bitmap.createScaledBitmap(image, image.width / 2, image.height / 2, true)
        }
        val scale = decodeSize.toDouble() / min(image.width, image.height)
        // Python's round() and tf.round round half to even; Math.rint does too.
        val width = max(decodeSize, Math.rint(image.width * scale).toInt())
        val height = max(decodeSize, Math.rint(image.height * scale).toInt())
        val scaled = Bitmap.createScaledBitmap(image, width, height, true)
        return Bitmap.createBitmap(
            scaled, (width - size) / 2, (height - size) / 2, size, size)
    }

    private fun loadModel(context: Context, asset: String): MappedByteBuffer {
        context.assets.openFd(asset).use { fd ->
            FileInputStream(fd.fileDescriptor).channel.use { channel ->
                return channel.map(
                    FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
            }
        }
    }

    override fun close() = interpreter.close()
}
