package org.dermmobile.demo

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.dermmobile.core.Parity
import org.dermmobile.core.Postprocess
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import kotlin.math.abs

/**
 * The golden samples on a real device: the bundled images (as raw pixels, so no JPEG
 * decoder differences) through preprocess-core and the bundled model on LiteRT, against
 * what Python computed at `dermmobile android` time.
 *
 * Run: ./gradlew connectedAndroidTest (a device or emulator attached, assets installed).
 */
@RunWith(AndroidJUnit4::class)
class GoldenInstrumentedTest {
    private val context = InstrumentationRegistry.getInstrumentation().targetContext

    @Test
    fun goldenSamplesBelongToTheBundledModel() {
        val golden = goldenFromAssets(context)
        assertTrue("no golden samples bundled; run `dermmobile android --images ...`", golden.samples.isNotEmpty())
        Classifier(context).use { model -> assertEquals(model.manifest.sha256, golden.manifest.sha256) }
    }

    /** Same checks as the JUnit tests on a PC, but on the phone's JVM and maths library. */
    @Test
    fun preprocessingMatchesPythonOnDevice() {
        val golden = goldenFromAssets(context)
        for (sample in golden.samples) {
            val result = Parity.check(golden, sample)
            assertTrue(result.toString(), result.passed())
        }
    }

    /**
     * The model on LiteRT/XNNPACK gives Python's top-1 for every golden image (a near-tie may go either way), and close
     * probabilities: ARM kernels round differently from x86, more so in int8.
     */
    @Test
    fun modelOnDeviceMatchesGoldenTop1AndProbabilities() {
        val golden = goldenFromAssets(context)
        Classifier(context).use { model ->
            val tolerance = if (model.manifest.quantization == "none") FLOAT_PROBABILITY_TOLERANCE else QUANTIZED_PROBABILITY_TOLERANCE
            for (sample in golden.samples) {
                val output = model.classify(model.tensor(golden.rgb(sample), sample.width, sample.height))
                val top1 = output.top[0]
                if (top1.index != sample.top1) {
                    // Only a tie (or near-tie) in Python's own probabilities may resolve the other way.
                    val margin = sample.probabilities[sample.top1] - sample.probabilities[top1.index]
                    assertTrue("top-1 of ${sample.sourceName}: ${top1.label}, golden ${sample.top1Label} (margin $margin)", margin <= tolerance)
                }
                val probabilities = Postprocess.softmax(output.logits)
                val worst = probabilities.indices.maxOf { abs(probabilities[it] - sample.probabilities[it]) }
                assertTrue("${sample.sourceName}: probability diff $worst > $tolerance", worst <= tolerance)
            }
        }
    }

    companion object {
        const val FLOAT_PROBABILITY_TOLERANCE = 1e-3 // fp32 kernels: logits within ~1e-5, probabilities far below this
        const val QUANTIZED_PROBABILITY_TOLERANCE = 5e-2 // fp16/int8: the parity gates already allow logits to move
    }
}
