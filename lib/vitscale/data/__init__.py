"""Input pipelines: TFDS datasets (offline sources and image folders included) through tf.data.

builders (the offline TFDS builders, the image folder) -> datasets (names, preparation, split tables)
-> sources (a split in memory or streamed) -> pipeline (batch = f(seed, step)); ops holds the
preprocessing ops, grammar and implementation in one registry, and imports no framework until an op
runs. Nothing here imports TensorFlow, so `config` can read the ops' grammar.
"""
