"""Runtime behaviour of each stage kind: worker loops over chunks.

Each module exposes ``tasks(node, inq, out, ctx)``: it registers its producers on ``out`` and
returns the task functions the runner starts in the pipeline's nursery. Workers never mutate the
lists they receive (a queue may hand the same list to the next stage).
"""
