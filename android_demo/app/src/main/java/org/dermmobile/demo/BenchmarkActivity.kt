package org.dermmobile.demo

import android.os.Build
import android.os.Bundle
import android.text.InputType
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import androidx.activity.ComponentActivity
import org.dermmobile.core.BenchRow
import org.dermmobile.core.Golden
import java.io.File
import java.text.SimpleDateFormat
import java.util.Date
import java.util.Locale
import java.util.concurrent.Executors

/** The device string of a bench row: manufacturer, model, Android version, ABI. */
fun deviceName(): String =
    "${Build.MANUFACTURER} ${Build.MODEL} (Android ${Build.VERSION.RELEASE}, ${Build.SUPPORTED_ABIS.firstOrNull() ?: "unknown ABI"})"

fun goldenFromAssets(context: android.content.Context): Golden =
    Golden.load({ name -> context.assets.open("$GOLDEN_ASSET_DIR/$name") }, "assets/$GOLDEN_ASSET_DIR")

/**
 * Runs the bundled model N times per thread count on the golden images and writes the rows
 * `dermmobile bench --merge` reads (android_demo/README.md, dermmobile/android.py) to
 * the app's external files folder, for `adb pull`.
 */
class BenchmarkActivity : ComponentActivity() {
    private val worker = Executors.newSingleThreadExecutor()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val pad = (16 * resources.displayMetrics.density).toInt()
        val column = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(pad, pad, pad, pad) }
        column.addView(TextView(this).apply { setText(R.string.iterations) })
        val iterations = EditText(this).apply { setText("100"); inputType = InputType.TYPE_CLASS_NUMBER }
        column.addView(iterations)
        column.addView(TextView(this).apply { setText(R.string.threads) })
        val threads = EditText(this).apply { setText("1,${Classifier.DEFAULT_THREADS}") }
        column.addView(threads)
        val log = TextView(this).apply { setTextIsSelectable(true) }
        val run = Button(this).apply { setText(R.string.run_benchmark) }
        column.addView(run)
        column.addView(log)
        setContentView(ScrollView(this).apply { addView(column) })
        run.setOnClickListener {
            val n = iterations.text.toString().toIntOrNull()?.coerceIn(1, 100_000) ?: 100
            val counts = threads.text.split(',').mapNotNull { it.trim().toIntOrNull() }.filter { it > 0 }.distinct()
                .ifEmpty { listOf(1) }
            run.isEnabled = false
            log.text = "Running $n iterations at ${counts.joinToString()} threads…"
            worker.execute {
                val outcome = runCatching { benchmark(n, counts) }
                runOnUiThread {
                    run.isEnabled = true
                    log.text = outcome.fold({ it }, { "Benchmark failed: ${it.message}" })
                }
            }
        }
    }

    private fun benchmark(iterations: Int, threadCounts: List<Int>): String {
        val golden = goldenFromAssets(this)
        require(golden.samples.isNotEmpty()) { "no golden images bundled; pass --images to `dermmobile android`" }
        val rows = mutableListOf<Map<String, Any>>()
        val report = StringBuilder()
        for (threads in threadCounts) {
            Classifier(this, threads).use { model ->
                require(model.manifest.sha256 == golden.manifest.sha256) { "golden samples were written for another artifact" }
                val tensors = golden.samples.map { model.tensor(golden.rgb(it), it.width, it.height) }
                // Top-1 of every golden image must equal what Python recorded.
                val matches = golden.samples.indices.all { model.classify(tensors[it]).top[0].index == golden.samples[it].top1 }
                repeat(WARMUP) { model.classify(tensors[it % tensors.size]) }
                val latencies = DoubleArray(iterations) { model.classify(tensors[it % tensors.size]).inferenceMs }
                val row = BenchRow.create(deviceName(), model.manifest, threads, latencies, matches)
                rows.add(row)
                report.append("threads $threads: ${row["latency_ms"]}, top-1 matches golden: $matches\n")
            }
        }
        val stamp = SimpleDateFormat("yyyyMMdd-HHmmss", Locale.ROOT).format(Date())
        val folder = getExternalFilesDir(null) ?: filesDir
        val out = File(folder, "bench-android-${golden.manifest.file.substringBeforeLast('.')}-$stamp.json")
        val partial = File(folder, ".${out.name}.partial")
        partial.writeText(BenchRow.toJson(rows))
        check(partial.renameTo(out)) { "could not write $out" }
        return report.append("\nWrote ${out.absolutePath}\nadb pull ${out.absolutePath}\nthen: dermmobile bench --merge ${out.name} --out REPORT_DIR").toString()
    }

    override fun onDestroy() {
        worker.shutdown()
        super.onDestroy()
    }

    companion object {
        const val WARMUP = 10
    }
}
