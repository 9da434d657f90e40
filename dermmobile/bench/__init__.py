"""The bench: does each artifact answer like the PyTorch model it came from, and how fast?

Rooms:
  accuracy.py  labeled-set parity of one artifact vs the reference (agreement, flips, logit
               error, cosine, confusion and its drift), reusing dermmobile.parity and .metrics
  latency.py   timing loops, percentile statistics, GEMM peak, FLOPs, peak RSS
  worker.py    one job (load, time, run over the test set) in its own process
  results.py   the typed result of a job (JobResult, logits loaded) and its hand-back from a worker process
  sweep.py     every artifact x thread count and the reference, as jobs
  rows.py      the JSON report from the job results: artifact entries, latency rows, problems
  report.py    JSON, Markdown and PNG files from the report
  merge.py     rows measured on a phone, merged into a report
The JSON schema of reports and phone rows is in README.md beside this file.

Nothing here imports torch at import time, and parity and latency code only ever sees
Runtimes (`predict(float32 NCHW) -> float32 logits`), never a format.
"""
