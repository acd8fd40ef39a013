"""Pre-training data: Wikipedia/text -> sentences -> WordPiece ids -> masked-LM/NSP instances ->
HDF5 shards (NVIDIA DeepLearningExamples' schema) -> a torch Dataset.

Modules: `extract` (wikiextractor, sentence splitting), `tokenize` (HF tokenizers WordPiece),
`instances` (Google's create_pretraining_data algorithm), `shards` (schema, atomic writes,
validation), `loader` (PretrainingDataset), `prepare` (the `bertperf prepare` command).
Nothing is imported here so that `import bertperf.data.shards` stays light.
"""
