"""Text classification: accuracy and macro-F1 on a held-out test split, and training time.

    pip install -e ".[bench]"                                 # scikit-learn, for the baseline
    python benchmarks/classify.py                             # the default method, three data sets, 10 minutes each
    python benchmarks/classify.py --data sms --method ensemble,ngram,discriminative --budget 5m
    python benchmarks/classify.py --data my.tsv --method generative --threads 2

The data sets: `sms` (the shared SMS Spam Collection), and two built here from public-domain text
in ../shared/corpora: `songci-tunes` (the body of a Song ci poem -> which of the 10 commonest tunes
it was written to: the tune fixes line lengths and rhymes, so it is a matter of form more than of
words) and `shakespeare-speakers` (a speech of tinyshakespeare -> which of its 8 commonest
speakers says it). Any labelled file or folder can be given instead.

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
from collections import Counter
from pathlib import Path

from chargen.classify.metrics import Report, report
from chargen.config import ClassifierConfig, TrainConfig
from chargen.data.labelled import Examples, Split, read_examples, split_examples
from chargen.generation.kernels import cpu_model

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
SMS_SPAM = CORPORA / "sms_spam.tsv"
TEST_FRAC = 0.2
SMS_TARGET = (0.99, 0.975)  # accuracy, macro-F1 of the default method (issue 31)
SECOND_TARGET = 0.03  # the default method's accuracy above naive Bayes on a second data set
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


def songci_tunes(folder: Path) -> Path:
    """Each poem of songci.txt (its tune title, then its lines; poems apart by a blank line) whose
    tune is one of the 10 commonest: label the tune, text the lines joined."""
    poems = [p.split("\n") for p in (CORPORA / "songci.txt").read_text(encoding="utf-8").split("\n\n")]
    pairs = [(lines[0], "".join(lines[1:])) for lines in poems if len(lines) > 1]
    return _write_commonest(folder / "songci-tunes.tsv", pairs, 10)


def shakespeare_speakers(folder: Path) -> Path:
    """Each speech of tinyshakespeare.txt ("NAME:" then its lines) by one of the 8 commonest speakers."""
    pairs = []
    for block in (CORPORA / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n"):
        head, _, body = block.partition("\n")
        if head.endswith(":") and body.strip():
            pairs.append((head[:-1], " ".join(body.split("\n"))))
    return _write_commonest(folder / "shakespeare-speakers.tsv", pairs, 8)


def _write_commonest(path: Path, pairs: list[tuple[str, str]], classes: int) -> Path:
    commonest = {label for label, _ in Counter(label for label, _ in pairs).most_common(classes)}
    path.write_text("".join(f"{label}\t{text}\n" for label, text in pairs if label in commonest), encoding="utf-8")
    return path


BUILT = {"songci-tunes": songci_tunes, "shakespeare-speakers": shakespeare_speakers}


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
    parser.add_argument(
        "--data", default="sms,songci-tunes,shakespeare-speakers", help="comma-separated: names or paths"
    )
    parser.add_argument("--method", default=ClassifierConfig().method, help="comma-separated chargen methods")
    parser.add_argument("--budget", default="10m", help="training time per method and data set, e.g. 5m, 600s")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=TrainConfig().seed)
    args = parser.parse_args()
    import torch

    threads = args.threads or torch.get_num_threads()
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {threads} threads; budget {args.budget} per method")
    misses = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.data.split(","):
            path = SMS_SPAM if name == "sms" else BUILT[name](Path(folder)) if name in BUILT else Path(name)
            if not path.exists():
                sys.exit(f"{path} not found; pass labelled data (a .tsv or .jsonl file or a folder)")
            misses += benchmark(name, path, args.method.split(","), args, Path(folder))
    print("targets: " + ("all met" if not misses else "missed: " + "; ".join(misses)))


def benchmark(name: str, path: Path, methods: list[str], args: argparse.Namespace, folder: Path) -> list[str]:
    """One data set: naive Bayes and each method on the same split; the targets it missed."""
    examples = read_examples(path)
    split = split_examples(examples, TEST_FRAC, ClassifierConfig().val_frac, args.seed)
    assert split.test is not None
    print(f"\n{name}: {len(examples):,} examples, {len(examples.classes)} labels, test split {len(split.test):,}")
    baseline, nb_seconds, alpha = naive_bayes(split, examples.classes)
    rows = [(f"naive Bayes, char 1-4-grams, α={alpha:g}", baseline.accuracy, baseline.macro_f1, nb_seconds)]
    for method in methods:
        figures, seconds = chargen_method(path, method, args.budget, args.threads, args.seed, folder)
        rows.append((f"chargen {method}", figures["accuracy"], figures["macro_f1"], seconds))
        for part, scored in figures.get("parts", {}).items():
            rows.append((f"  its {part} part alone", scored["accuracy"], scored["macro_f1"], 0.0))
    print(f"{'method':36} {'accuracy':>9} {'macro-F1':>9} {'training':>10}")
    for label, accuracy, macro_f1, seconds in rows:
        print(f"{label:36} {accuracy:9.2%} {macro_f1:9.4f} {seconds:9.1f}s")
    misses = []
    default = next((row for row in rows if row[0] == f"chargen {ClassifierConfig().method}"), None)
    if default is not None:
        gain = default[1] - baseline.accuracy
        print(
            f"summary {name}: default {default[1]:.2%} (macro-F1 {default[2]:.4f}), "
            f"naive Bayes {baseline.accuracy:.2%}: {gain:+.2%}"
        )
        if gain < 0:
            misses.append(f"{name}: the default loses to naive Bayes")
        if path == SMS_SPAM and (default[1] < SMS_TARGET[0] or default[2] < SMS_TARGET[1]):
            misses.append(f"{name}: below {SMS_TARGET[0]:.1%} accuracy / {SMS_TARGET[1]} macro-F1")
        if name == "songci-tunes" and gain < SECOND_TARGET:
            misses.append(f"{name}: less than {SECOND_TARGET:.0%} above naive Bayes")
    return misses


if __name__ == "__main__":
    main()
