#!/usr/bin/env python3
"""Writes the seed corpus of the `checkpoint` fuzz target: for each TensorFlow fixture case (in the
order the target numbers them), its index (V2) or first file (V1), behind the byte that picks it;
and that of the `state` target: the fixtures' own `checkpoint` state files, files naming each of the
target's three checkpoints, and the 1,500 random state files of tests/fixtures/tf/state_files.jsonl.
Run from fuzz/: python3 seed.py, then cargo +nightly fuzz run -O -a checkpoint (or init, candle, or state;
init and candle start from no seeds: their inputs are structured)."""
import json
import os

fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tf")
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "checkpoint")
os.makedirs(out, exist_ok=True)
cases = sorted(n for n in os.listdir(fixtures) if os.path.isfile(os.path.join(fixtures, n, "expected", "ckpt.txt")))
for i, case in enumerate(cases):
    with open(os.path.join(fixtures, case, "expected", "ckpt.txt")) as f:
        # the folder the checkpoint's files are in: the case's, or one inside it (variables/)
        d = os.path.join(fixtures, case, os.path.dirname(f.read().strip()))
    files = sorted(f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
    pick = [f for f in files if f.endswith(".index")] or [
        f for f in files if f != "checkpoint" and not f.endswith((".meta", ".txt"))
    ]
    with open(os.path.join(d, pick[0]), "rb") as src, open(os.path.join(out, "seed-" + case), "wb") as dst:
        dst.write(bytes([i]) + src.read())
    print(i, case, pick[0])

state = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "state")
os.makedirs(state, exist_ok=True)
seeds = [b'model_checkpoint_path: "model-0"\n', b"model_checkpoint_path: 'model-3'",
         b'model_checkpoint_path: "model.ckpt-0-?????-of-00002"\nall_model_checkpoint_paths: "model-0"\n',
         b'model_checkpoint_path: "./model-0" all_model_checkpoint_timestamps: [1.5, 2]\n']
for case in cases:
    if os.path.isfile(os.path.join(fixtures, case, "checkpoint")):
        with open(os.path.join(fixtures, case, "checkpoint"), "rb") as f:
            seeds.append(f.read())
with open(os.path.join(fixtures, "state_files.jsonl")) as f:
    for line in f:
        c = json.loads(line)
        seeds.append(c["text"].encode("utf-8", "surrogatepass") if "text" in c else bytes.fromhex(c["hex"]))
for i, data in enumerate(seeds):
    with open(os.path.join(state, "seed-%04d" % i), "wb") as dst:
        dst.write(data)
print("%d state seeds" % len(seeds))
