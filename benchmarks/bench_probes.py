"""The probes' fits, this release's span (``RowSpan``, one BLAS thread) against scikit-learn's full PCA, on real states.

Loads the reference and ``--quant`` the way a run does (the embedded model, or ``--model``), reads both sides'
residual states at the NLI prompt's last token for ``--items`` e-SNLI items, and runs the probes' three sets of
held-out predictions (FP-trained on FP and on quantized states, quantized-trained on quantized) with both
transformers (both on one BLAS thread, as the fits run). Prints the seconds of each and every prediction that
differs, with the class probabilities of the PCA probe there (how close to a tie it was) and of the ``RowSpan`` one.

Usage::

    python benchmarks/bench_probes.py --quant bnb8 --items 300
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import numpy as np
from bench_memory import load_model


def _fold_probe(train: np.ndarray, labels: np.ndarray, item: int, layer: int, span: Any) -> Any:
    """The probe of the fold that holds ``item`` out, at ``layer`` (as ``probe_predictions`` fits it at seed 0)."""
    from sklearn.model_selection import StratifiedKFold

    from pytest_qxai.methods.probes import PROBE, make_probe

    folds = StratifiedKFold(n_splits=PROBE["folds"], shuffle=True, random_state=0).split(np.zeros(len(labels)), labels)
    fit = next(fit for fit, held in folds if item in held)
    return make_probe(span).fit(train[fit, layer], labels[fit])


def main() -> None:
    """Compute both sides' states, then both ways' predictions; print seconds and differences."""
    from sklearn.decomposition import PCA

    from pytest_qxai.datasets import NLI_LABELS, load_esnli
    from pytest_qxai.methods.probes import RowSpan, probe_predictions
    from pytest_qxai.methods.task import NLI_TASK
    from pytest_qxai.runtime import Runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quant", default="bnb8")
    parser.add_argument("--model", default=None, help="--qxai-model (default: the embedded model)")
    parser.add_argument("--items", type=int, default=300)
    args = parser.parse_args()
    items = load_esnli(args.items, 0)
    labels = np.array([NLI_LABELS.index(it.label) for it in items])
    states = []
    for quant in ("none", args.quant):
        net, tokenizer = load_model(quant, args.model, None)
        prompts = [NLI_TASK.prompt(tokenizer, NLI_TASK.fields(it)) for it in items]
        states.append(Runtime(net, tokenizer).hidden_states(prompts)[:, 1:].astype(np.float32))
    reference, quantized = states
    full_pca = functools.partial(PCA, svd_solver="full")  # every component (min(n, d)): the span, as before
    runs = (("FP-trained", reference, [reference, quantized]), ("quantized-trained", quantized, [quantized]))
    for name, train, tests in runs:
        started = time.perf_counter()
        new = probe_predictions(train, labels, tests, seed=0)
        new_seconds = time.perf_counter() - started
        started = time.perf_counter()
        old = probe_predictions(train, labels, tests, seed=0, span=full_pca)
        old_seconds = time.perf_counter() - started
        print(f"{name}: RowSpan {new_seconds:.1f} s, full PCA {old_seconds:.1f} s; differing predictions "
              f"{[int((a != b).sum()) for a, b in zip(old, new)]} of {old[0].size} each")
        for test, a, b in zip(tests, old, new):
            for item, layer in zip(*np.nonzero(a != b)):
                probs = [_fold_probe(train, labels, item, layer, span).predict_proba(test[[item], layer])[0]
                         for span in (full_pca, RowSpan)]
                print(f"  item {item} layer {layer}: PCA predicts {a[item, layer]} {np.round(probs[0], 5)}, "
                      f"RowSpan {b[item, layer]} {np.round(probs[1], 5)}")


if __name__ == "__main__":
    main()
