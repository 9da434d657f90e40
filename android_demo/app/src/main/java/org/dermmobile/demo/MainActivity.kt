package org.dermmobile.demo

import android.content.Intent
import android.graphics.Bitmap
import android.graphics.Typeface
import android.net.Uri
import android.os.Bundle
import android.view.View
import android.widget.Button
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.core.content.FileProvider
import java.io.File
import java.util.Locale
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/** Pick or take a photo; show the top-3 conditions, their probabilities and the inference time. */
class MainActivity : ComponentActivity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var classifier: Classifier? = null
    private lateinit var image: ImageView
    private lateinit var result: TextView
    private var photoUri: Uri? = null

    private val pick = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) classify(uri)
    }
    private val takePhoto = registerForActivityResult(ActivityResultContracts.TakePicture()) { saved ->
        val uri = photoUri
        if (saved && uri != null) classify(uri)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val pad = (16 * resources.displayMetrics.density).toInt()
        val column = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(pad, pad, pad, pad)
        }
        column.addView(TextView(this).apply {
            setText(R.string.disclaimer)
            setTypeface(typeface, Typeface.BOLD)
        })
        val installed = Classifier.isInstalled(this)
        fun button(label: Int, action: () -> Unit) = column.addView(Button(this).apply {
            setText(label)
            isEnabled = installed
            setOnClickListener { action() }
        })
        button(R.string.pick) { pick.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) }
        button(R.string.camera) { takePhoto.launch(newPhotoUri()) }
        button(R.string.benchmark) { startActivity(Intent(this, BenchmarkActivity::class.java)) }
        image = ImageView(this).apply { adjustViewBounds = true; visibility = View.GONE }
        column.addView(image)
        result = TextView(this).apply { textSize = 18f; setPadding(0, pad, 0, 0) }
        column.addView(result)
        setContentView(ScrollView(this).apply { addView(column) })
        if (!installed) {
            result.setText(R.string.no_model)
        } else {
            worker.execute {
                val outcome = runCatching { Classifier(this) }
                runOnUiThread {
                    outcome.onSuccess {
                        classifier = it
                        result.text = "Model: ${it.manifest.arch}, ${it.manifest.quantization}, ${it.manifest.input.dtype} " +
                            "${it.manifest.layout()}, ${it.threads} threads"
                    }.onFailure { result.text = "Could not load the model: ${it.message}" }
                }
            }
        }
    }

    private fun newPhotoUri(): Uri {
        val folder = File(cacheDir, "photos").apply { mkdirs() }
        val uri = FileProvider.getUriForFile(this, "$packageName.photos", File(folder, "capture.jpg"))
        photoUri = uri
        return uri
    }

    private fun classify(uri: Uri) {
        val model = classifier ?: return
        result.setText(R.string.working)
        worker.execute {
            val outcome = runCatching {
                val started = System.nanoTime()
                val bitmap = decodeUpright(this, uri, model.manifest.preprocess)
                val decoded = System.nanoTime()
                val tensor = model.tensor(bitmap)
                val prepared = System.nanoTime()
                Classified(bitmap, model.classify(tensor), (decoded - started) / 1e6, (prepared - decoded) / 1e6)
            }
            runOnUiThread { outcome.onSuccess { show(it) }.onFailure { result.text = "Error: ${it.message}" } }
        }
    }

    /** One photo's answer and what a person waited for, step by step (as `dermmobile bench` reports it). */
    private class Classified(val bitmap: Bitmap, val output: Classifier.Result, val decodeMs: Double, val preprocessMs: Double)

    private fun show(classified: Classified) {
        val bitmap = classified.bitmap
        val output = classified.output
        image.setImageBitmap(bitmap)
        image.visibility = View.VISIBLE
        val lines = output.top.mapIndexed { rank, p ->
            String.format(Locale.ROOT, "%d. %s  %.1f %%", rank + 1, p.label.replace('_', ' '), 100 * p.probability)
        }
        result.text = (lines + "" + String.format(
            Locale.ROOT, "Inference %.1f ms (decoding %.1f ms, preprocessing %.1f ms), %d threads", output.inferenceMs,
            classified.decodeMs, classified.preprocessMs, classifier?.threads ?: 0,
        ) + "" + getString(R.string.disclaimer)).joinToString("\n")
    }

    override fun onDestroy() {
        worker.execute { classifier?.close() }
        worker.shutdown()
        super.onDestroy()
    }
}
