"""Text classification: accuracy and macro-F1 on a held-out test split, and training time.

    pip install -e ".[bench]"                                 # scikit-learn, for the baseline
    python benchmarks/classify.py                             # both methods, 10 minutes each
    python benchmarks/classify.py --method generative --budget 5m --threads 2

chargen runs as a user would run it: `chargen classify train DATA --test-frac 0.2 --max-time
BUDGET` in a subprocess (its wall time is the training time reported), then `chargen classify
eval MODEL DATA --format json`, which scores the test examples held out by that seeded,
stratified split. The baseline, measured in the same run on the same split, is a multinomial
naive Bayes on character 1-4-grams (scikit-learn), its smoothing chosen on chargen's validation
examples, then trained on every non-test example.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chargen.classify.metrics import Report, report
from chargen.config import ClassifierConfig, TrainConfig
from chargen.data.labelled import Examples, Split, read_examples, split_examples
from chargen.generation.kernels import cpu_model

SMS_SPAM = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "sms_spam.tsv"
TEST_FRAC = 0.2
NB_ALPHAS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)  # ties go to the larger (smoother) one


def naive_bayes(split: Split, labels: list[str]) -> tuple[Report, float, float]:
    """Its smoothing chosen on the validation examples (as chargen chooses its weights), then
    refitted on every non-test example. Returns the test report, the seconds it took, and alpha."""
    try:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.naive_bayes import MultinomialNB
    except ImportError:
        sys.exit('the baseline needs scikit-learn: pip install -e ".[bench]"')
    assert split.test is not None
    index = {label: i for i, label in enumerate(labels)}

    def fitted(train: Examples, test: Examples, alpha: float) -> Report:
        vectorizer = CountVectorizer(analyzer="char", ngram_range=(1, 4), lowercase=False)
        model = MultinomialNB(alpha=alpha).fit(vectorizer.fit_transform(train.texts), train.labels)
        predicted = model.predict(vectorizer.transform(test.texts))
        return report(labels, [index[label] for label in test.labels], [index[p] for p in predicted])

    started = time.perf_counter()
    alpha = max(NB_ALPHAS, key=lambda a: fitted(split.train, split.val, a).macro_f1)
    rest = Examples(split.train.texts + split.val.texts, split.train.labels + split.val.labels)
    scored = fitted(rest, split.test, alpha)
    return scored, time.perf_counter() - started, alpha


def chargen_method(data: Path, method: str, budget: str, threads: int, seed: int, folder: Path) -> tuple[dict, float]:
    model = folder / f"{method}.clf"
    command = [sys.executable, "-m", "chargen", "classify", "train", str(data), "--out", str(model)]
    command += ["--method", method, "--test-frac", str(TEST_FRAC), "--max-time", budget, "--seed", str(seed)]
    command += ["--quiet"] + (["--threads", str(threads)] if threads else [])
    started = time.perf_counter()
    trained = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if trained.returncode:
        sys.exit(f"chargen classify train failed: {trained.stderr.strip()}")
    evaluate = [sys.executable, "-m", "chargen", "classify", "eval", str(model), str(data), "--format", "json"]
    figures = json.loads(subprocess.run(evaluate, capture_output=True, text=True, check=True).stdout)
    if figures["subset"] != "test":
        sys.exit("chargen classify eval did not recognise the training data's test split")
    return figures, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=SMS_SPAM)
    parser.add_argument("--method", choices=["generative", "discriminative", "both"], default="both")
    parser.add_argument("--budget", default="10m", help="training time per method, e.g. 5m, 600s")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=TrainConfig().seed)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found; pass labelled data (a .tsv or .jsonl file or a folder)")
    import torch

    threads = args.threads or torch.get_num_threads()
    examples = read_examples(args.data)
    split = split_examples(examples, TEST_FRAC, ClassifierConfig().val_frac, args.seed)
    assert split.test is not None
    print(
        f"{args.data}: {len(examples):,} examples {examples.counts()}, "
        f"test split {len(split.test):,} (seed {args.seed})"
    )
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {threads} threads; budget {args.budget} per method")

    baseline, nb_seconds, alpha = naive_bayes(split, examples.classes)
    rows = [(f"naive Bayes, char 1-4-grams, α={alpha:g}", baseline.accuracy, baseline.macro_f1, nb_seconds)]
    methods = ["generative", "discriminative"] if args.method == "both" else [args.method]
    with tempfile.TemporaryDirectory() as folder:
        for method in methods:
            figures, seconds = chargen_method(args.data, method, args.budget, args.threads, args.seed, Path(folder))
            rows.append((f"chargen {method}", figures["accuracy"], figures["macro_f1"], seconds))
    print(f"{'method':32} {'accuracy':>9} {'macro-F1':>9} {'training':>10}")
    for name, accuracy, macro_f1, seconds in rows:
        print(f"{name:32} {accuracy:9.2%} {macro_f1:9.4f} {seconds:9.1f}s")
    best = max(rows[1:], key=lambda row: row[2])
    print(
        f"summary: best {best[0]}: accuracy {best[1]:.2%}, macro-F1 {best[2]:.4f} in {best[3]:.0f}s "
        f"(naive Bayes {baseline.accuracy:.2%}, {baseline.macro_f1:.4f}; "
        f"errors {1 - best[1]:.2%} vs {1 - baseline.accuracy:.2%})"
    )


if __name__ == "__main__":
    main()
