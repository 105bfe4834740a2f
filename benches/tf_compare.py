"""Times TensorFlow 2.21's init_from_checkpoint + initializer against `tfckpt init` on the same
TensorFlow-written checkpoint (issue 4's comparison).

The checkpoint: under scope `model/`, 96 float32 [2048, 2048] variables, 1000 float32 [64] variables
and one float32 [500000, 256] variable in 8 parts (about 2.1 GB), saved by tf.compat.v1.train.Saver.
Both sides load it into `new/` (same shapes, the big one again in 8 parts) with the map
{"model/": "new/"}, page cache warm, runs interleaved, medians reported.

TensorFlow is timed inside a fresh process from graph building to the end of
`sess.run(global_variables_initializer())` (TF import excluded). tfckpt is timed as the whole
`tfckpt init` process (process start included), both by default (values of 1 MiB and more that the
checkpoint stores as the variable needs them are copy-on-write mappings of the files, CRC-checked)
and with `--copy` (every value copied into fresh memory, as TensorFlow does).

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0
    cargo build --release
    /tmp/tfvenv/bin/python benches/tf_compare.py --tfckpt target/release/tfckpt --dir /tmp/tfcmp --runs 5
    /tmp/tfvenv/bin/python benches/tf_compare.py ... --cold     # drop the page cache before every run
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BIG = 96
SMALL = 1000
EMB_ROWS = 500000
EMB_COLS = 256
PARTS = 8


def variables(scope):
    out = [("%s/w_%02d" % (scope, i), [2048, 2048], None) for i in range(BIG)]
    out += [("%s/small_%04d" % (scope, i), [64], None) for i in range(SMALL)]
    out.append(("%s/emb" % scope, [EMB_ROWS, EMB_COLS], PARTS))
    return out


def make_checkpoint(ckpt_dir):
    import numpy as np
    import tensorflow as tf
    tf.compat.v1.disable_eager_execution()
    g = tf.Graph()
    with g.as_default():
        for name, shape, parts in variables("model"):
            part = tf.compat.v1.fixed_size_partitioner(parts) if parts else None
            tf.compat.v1.get_variable(name, shape=shape, dtype=tf.float32, partitioner=part,
                                      initializer=tf.compat.v1.random_uniform_initializer(-1, 1, seed=1))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            os.makedirs(ckpt_dir, exist_ok=True)
            saver.save(sess, os.path.join(ckpt_dir, "model"), write_meta_graph=False)
    del np


def tf_load(ckpt_dir):
    """Runs in a fresh process: TF imported first, then the timed part."""
    import tensorflow as tf
    tf.compat.v1.disable_eager_execution()
    start = time.perf_counter()
    g = tf.Graph()
    with g.as_default():
        for name, shape, parts in variables("new"):
            part = tf.compat.v1.fixed_size_partitioner(parts) if parts else None
            tf.compat.v1.get_variable(name, shape=shape, dtype=tf.float32, partitioner=part,
                                      initializer=tf.compat.v1.zeros_initializer())
        tf.compat.v1.train.init_from_checkpoint(ckpt_dir, {"model/": "new/"})
        init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session() as sess:
            sess.run(init)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def model_json(path):
    vs = []
    for name, shape, parts in variables("new"):
        v = {"name": name, "shape": shape, "dtype": "float32"}
        if parts:
            v["partitions"] = [parts, 1]
        vs.append(v)
    with open(path, "w") as f:
        json.dump({"variables": vs}, f)


def drop_cache():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm(ckpt_dir):
    for f in os.listdir(ckpt_dir):
        with open(os.path.join(ckpt_dir, f), "rb") as fh:
            while fh.read(1 << 24):
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tfckpt", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before every run (needs root; Linux)")
    a = ap.parse_args()
    ckpt_dir = os.path.join(a.dir, "ckpt")
    if not os.path.exists(os.path.join(ckpt_dir, "checkpoint")):
        print("writing the checkpoint with TensorFlow ...", flush=True)
        subprocess.run([sys.executable, __file__, "--make", ckpt_dir], check=True)
    model = os.path.join(a.dir, "model.json")
    model_json(model)
    size = sum(os.path.getsize(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir))
    warm(ckpt_dir)
    tf_times, ours, copied = [], [], []

    def tfckpt(extra):
        if a.cold:
            drop_cache()
        t0 = time.perf_counter()
        r = subprocess.run([a.tfckpt, "init", ckpt_dir, "--model", model, "--map", '{"model/": "new/"}', "--no-out"]
                           + extra, check=True, capture_output=True, text=True)
        return time.perf_counter() - t0, r.stdout.strip()

    for i in range(a.runs):
        if a.cold:
            drop_cache()
        out = subprocess.run([sys.executable, __file__, "--tf-load", ckpt_dir], check=True,
                             capture_output=True, text=True).stdout
        tf_times.append(json.loads(out.strip().splitlines()[-1])["seconds"])
        # Default (large values mapped copy-on-write) and --copy (every value copied into fresh
        # memory, as TensorFlow does), alternating which runs first after TensorFlow.
        order = [("default", []), ("copy", ["--copy"])]
        if i % 2:
            order.reverse()
        line = {}
        for name, extra in order:
            s, report = tfckpt(extra)
            (ours if name == "default" else copied).append(s)
            line[name] = (s, report)
        print("run %d: tensorflow %.3f s, tfckpt %.3f s, tfckpt --copy %.3f s   (%s | %s)"
              % (i, tf_times[-1], line["default"][0], line["copy"][0], line["default"][1], line["copy"][1]),
              flush=True)
    t, o, c = statistics.median(tf_times), statistics.median(ours), statistics.median(copied)
    print("checkpoint %.2f GB, page cache %s; median of %d interleaved runs: tensorflow %.3f s, "
          "tfckpt %.3f s (%.1fx faster), tfckpt --copy %.3f s (%.1fx faster)"
          % (size / 1e9, "cold" if a.cold else "warm", a.runs, t, o, t / o, c, t / c))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make":
        make_checkpoint(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--tf-load":
        tf_load(sys.argv[2])
    else:
        main()
