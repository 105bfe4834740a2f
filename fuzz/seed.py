#!/usr/bin/env python3
"""Writes the seed corpus of the `checkpoint` fuzz target: for each TensorFlow fixture case (in the
order the target numbers them), its index (V2) or first file (V1), behind the byte that picks it.
Run from fuzz/: python3 seed.py, then cargo +nightly fuzz run -O -a checkpoint."""
import os

fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tf")
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "checkpoint")
os.makedirs(out, exist_ok=True)
cases = sorted(n for n in os.listdir(fixtures) if os.path.isfile(os.path.join(fixtures, n, "expected", "ckpt.txt")))
for i, case in enumerate(cases):
    d = os.path.join(fixtures, case)
    files = sorted(f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
    pick = [f for f in files if f.endswith(".index")] or [
        f for f in files if f != "checkpoint" and not f.endswith((".meta", ".txt"))
    ]
    with open(os.path.join(d, pick[0]), "rb") as src, open(os.path.join(out, "seed-" + case), "wb") as dst:
        dst.write(bytes([i]) + src.read())
    print(i, case, pick[0])
