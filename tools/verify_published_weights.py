"""Downloads every published weights entry and checks it end to end (needs internet).

For each entry of the registry (or those named): download with the hash check,
conversion into our format, a model built with ``weights=<tag>``, and a forward pass
on a fixed image batch. Entries without a published hash print the SHA-256 of what
was downloaded, to pin in keras_inception/pretrained.py. Accuracy itself needs the
ImageNet validation set, which this script does not handle.

    KERAS_BACKEND=tensorflow python tools/verify_published_weights.py [MODEL[:TAG] ...]
"""

import argparse
import os
import sys
import time

import numpy as np

import keras_inception
from keras_inception import download


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entries", nargs="*", help="model or model:tag (default: all)")
    args = parser.parse_args(argv)
    wanted = [e for e in keras_inception.list_weights()
              if not args.entries or e.model in args.entries
              or f"{e.model}:{e.tag}" in args.entries]
    failures = 0
    for entry in wanted:
        start = time.time()
        try:
            model = keras_inception.create_model(entry.model, weights=entry.tag)
            size = entry.input_size
            x = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype("float32")
            probs = np.asarray(model(x, training=False))
            assert np.all(np.isfinite(probs)) and abs(probs.sum() - 1) < 1e-3
            note = ""
            if not entry.pinned:
                name = f"{entry.model}-{entry.tag}-{entry.filename}"
                path = os.path.join(download.cache_dir(), "downloads", entry.model, name)
                note = f" unpinned: sha256={download.file_hash(path)}"
            print(f"OK   {entry.model}:{entry.tag} ({time.time() - start:.0f} s){note}")
        except Exception as e:  # report every entry, then fail
            failures += 1
            print(f"FAIL {entry.model}:{entry.tag}: {type(e).__name__}: {e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
