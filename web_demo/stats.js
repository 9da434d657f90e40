// Pure numbers shared by the page and its Node tests: softmax, top-k, latency summaries.
//
// Each mirrors its Python original so browser rows and Python rows mean the same thing:
// softmax and top_k as dermmobile/predict.py, percentiles as numpy's default ("linear"),
// std as the population standard deviation (ddof 0), as dermmobile/bench/latency.py.

/** float64 softmax of one logit vector; throws on NaN/Inf like Python does. */
export function softmax(logits) {
  const values = Array.from(logits, Number);
  if (!values.every(Number.isFinite)) {
    throw new Error("the runtime returned non-finite logits (NaN/Inf): the artifact is broken");
  }
  const max = Math.max(...values);
  const exp = values.map((v) => Math.exp(v - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  return exp.map((v) => v / sum);
}

/** Indices of the k largest, highest first; ties keep the lower index first (a stable sort). */
export function topK(probabilities, k) {
  return Array.from(probabilities, (p, i) => [p, i])
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, Math.max(1, k))
    .map(([, i]) => i);
}

/** numpy.percentile(values, q) with the default linear interpolation; `sorted` ascending. */
export function percentile(sorted, q) {
  if (!sorted.length) throw new Error("no samples");
  const position = ((sorted.length - 1) * q) / 100;
  const low = Math.floor(position);
  const high = Math.ceil(position);
  return sorted[low] + (sorted[high] - sorted[low]) * (position - low);
}

/** {p50, p90, p99, mean, std, min, max, n} of milliseconds, as the bench's rows hold them. */
export function summarize(samples) {
  const sorted = Float64Array.from(samples).sort();
  const n = sorted.length;
  const mean = sorted.reduce((a, b) => a + b, 0) / n;
  const variance = sorted.reduce((a, b) => a + (b - mean) ** 2, 0) / n;
  return {
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    mean,
    std: Math.sqrt(variance),
    min: sorted[0],
    max: sorted[n - 1],
    n,
  };
}
