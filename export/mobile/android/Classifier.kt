// Android image classifier for a kertransfer LiteRT export.
//
// Copy RUN_DIR/export/litert/model.tflite (or model_int8.tflite) and
// labels.txt into app/src/main/assets/, keep them uncompressed
// (android { androidResources { noCompress += "tflite" } }), and add
//     implementation("com.google.ai.edge.litert:litert:<version>")
// (https://ai.google.dev/edge/litert/android). The model takes float32
// RGB pixels in [0, 255], shape [1, size, size, 3] (normalization is inside
// the model; the int8 export keeps float32 input and output), and returns
// softmax probabilities [1, numClasses] in labels.txt order.
package com.example.kertransfer

import android.content.Context
import android.graphics.Bitmap
import org.tensorflow.lite.Interpreter
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import kotlin.math.min
import kotlin.math.roundToInt

class Classifier(
    context: Context,
    modelAsset: String = "model.tflite",
    labelsAsset: String = "labels.txt",
    numThreads: Int = 2,
) : AutoCloseable {
    private val interpreter = Interpreter(
        loadModel(context, modelAsset),
        Interpreter.Options().setNumThreads(numThreads),
    )
    val labels: List<String> = context.assets.open(labelsAsset)
        .bufferedReader().readLines().filter { it.isNotBlank() }
    private val size = interpreter.getInputTensor(0).shape()[1]
    private val input = ByteBuffer.allocateDirect(4 * size * size * 3)
        .order(ByteOrder.nativeOrder())
    private val output = Array(1) { FloatArray(labels.size) }

    /** Top-k (label, probability) pairs, best first. */
    fun classify(bitmap: Bitmap, k: Int = 5): List<Pair<String, Float>> {
        val pixels = centerCrop(bitmap)
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

    /** Short side to `size` (bilinear), then center crop, as in validation. */
    private fun centerCrop(bitmap: Bitmap): Bitmap {
        val scale = size.toFloat() / min(bitmap.width, bitmap.height)
        val width = maxOf(size, (bitmap.width * scale).roundToInt())
        val height = maxOf(size, (bitmap.height * scale).roundToInt())
        val scaled = Bitmap.createScaledBitmap(bitmap, width, height, true)
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
