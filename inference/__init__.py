"""Product matching library: detector, embedder, geometric verifier and the batch pipeline.

Pure Python + torch: it knows nothing of Kafka or Faust, so it can be benchmarked, evaluated
and served over HTTP by the same code the stream processor runs.
"""
