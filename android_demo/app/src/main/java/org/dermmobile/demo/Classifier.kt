package org.dermmobile.demo

import android.content.Context
import android.graphics.Bitmap
import org.dermmobile.core.Bytes
import org.dermmobile.core.ModelManifest
import org.dermmobile.core.Postprocess
import org.dermmobile.core.Preprocessor
import org.dermmobile.core.TensorCodec
import org.tensorflow.lite.Interpreter
import java.io.Closeable
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** Where `dermmobile android` puts the model, its manifest and the golden samples. */
const val ASSETS_DIR = "dermmobile"
const val MANIFEST_ASSET = "$ASSETS_DIR/manifest.json"
const val GOLDEN_ASSET_DIR = "$ASSETS_DIR/golden"

/**
 * The bundled artifact on LiteRT's CPU path (XNNPACK). Everything model-specific comes from
 * the manifest: labels, preprocessing, layout, dtype and int8 scale/zero point, so float,
 * fp16 and int8 artifacts all run without code changes. Preprocessing and post-processing
 * are preprocess-core's, the code the JUnit tests compare with Python.
 */
class Classifier(context: Context, val threads: Int = DEFAULT_THREADS) : Closeable {
    val manifest: ModelManifest
    private val preprocessor: Preprocessor
    private val interpreter: Interpreter

    /** Top classes, the logits, and the time of interpreter.run alone. */
    class Result(val top: List<Postprocess.Prediction>, val logits: FloatArray, val inferenceMs: Double)

    init {
        val assets = context.assets
        manifest = assets.open(MANIFEST_ASSET).use { ModelManifest.read(it, "assets/$MANIFEST_ASSET") }
        require(manifest.format == "tflite") { "the bundled artifact is ${manifest.format}; this app runs tflite artifacts" }
        require(manifest.file.isNotEmpty() && !manifest.file.contains('/')) { "manifest file name '${manifest.file}' is not a plain name" }
        val model = assets.open("$ASSETS_DIR/${manifest.file}").use { it.readBytes() }
        // The same check dermmobile.artifact.load_artifact makes: a stale or corrupt model is refused.
        check(Bytes.sha256(model) == manifest.sha256) {
            "assets/$ASSETS_DIR/${manifest.file} does not match the sha256 in its manifest; run `dermmobile android` again"
        }
        val buffer = ByteBuffer.allocateDirect(model.size).order(ByteOrder.nativeOrder())
        buffer.put(model).rewind()
        val options = Interpreter.Options().setNumThreads(threads).setUseXNNPACK(true)
        interpreter = Interpreter(buffer, options)
        preprocessor = Preprocessor(manifest.preprocess)
        checkTensorsMatchManifest()
    }

    private fun checkTensorsMatchManifest() {
        val input = interpreter.getInputTensor(0)
        val output = interpreter.getOutputTensor(0)
        check(input.shape().contentEquals(manifest.input.shape)) {
            "model input shape ${input.shape().contentToString()} != manifest ${manifest.input.shape.contentToString()}"
        }
        check(input.dataType().toString().lowercase() == manifest.input.dtype) {
            "model input dtype ${input.dataType()} != manifest ${manifest.input.dtype}"
        }
        check(output.numElements() == manifest.labels.size) {
            "model has ${output.numElements()} outputs but the manifest has ${manifest.labels.size} labels"
        }
        check(output.dataType().toString().lowercase() == manifest.output.dtype) {
            "model output dtype ${output.dataType()} != manifest ${manifest.output.dtype}"
        }
    }

    /** The normalized float tensor of decoded pixels (ARGB from Bitmap.getPixels), in the manifest's layout. */
    fun tensor(bitmap: Bitmap): FloatArray {
        val argb = IntArray(bitmap.width * bitmap.height)
        bitmap.getPixels(argb, 0, bitmap.width, 0, 0, bitmap.width, bitmap.height)
        return preprocessor.tensorArgb(argb, bitmap.width, bitmap.height, manifest.layout())
    }

    /** The same from packed RGB bytes (golden samples). */
    fun tensor(rgb: ByteArray, width: Int, height: Int): FloatArray =
        preprocessor.tensor(rgb, width, height, manifest.layout())

    /** Runs the model on a prepared tensor: encode by dtype, run, decode, softmax, top-k. */
    fun classify(tensor: FloatArray, k: Int = 3): Result {
        val input = TensorCodec.encode(tensor, manifest.input)
        val output = ByteBuffer.allocateDirect(manifest.output.elements() * manifest.output.elementBytes())
            .order(ByteOrder.nativeOrder())
        val start = System.nanoTime()
        interpreter.run(input, output)
        val inferenceMs = (System.nanoTime() - start) / 1e6
        val logits = TensorCodec.decode(output, manifest.output)
        val top = Postprocess.topK(Postprocess.softmax(logits), manifest.labels, k)
        return Result(top, logits, inferenceMs)
    }

    override fun close() = interpreter.close()

    companion object {
        val DEFAULT_THREADS = Runtime.getRuntime().availableProcessors().coerceIn(1, 4)

        fun isInstalled(context: Context): Boolean =
            context.assets.list(ASSETS_DIR)?.contains("manifest.json") == true
    }
}
