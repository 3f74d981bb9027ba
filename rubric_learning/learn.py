"""``python -m rubric_learning.learn``: learn a weighted rubric set from preference pairs.

AutoRubric-T2I as a working-set sparse logistic regression (see docs/rubric_learning.md):

1. **data**: load pairs (``data`` node), drop unreadable images and ties, split train/val/test;
2. **seeds**: pick seed pairs by proxy-reward margin and prompt diversity;
3. **synthesis**: the generative judge explains each seed preference and writes rubric
   statements; they form the deduplicated working set. An answer cut at ``max_new_tokens``
   inside its list gives its complete statements; one that holds no list is asked again once
   with ``synthesis.retry_max_new_tokens`` (both counted in ``cut_answers``);
4. **rounds**: score the working set on train and validation pairs (cached, only new rubrics
   cost judge calls), fit the L1 refiner, bring back pruned rubrics the fit would now weigh
   (``working_set.readmit``, judged from their remembered scores), keep the Top-N positive
   rubrics as the reward, remember the round with the best validation accuracy; prune the
   working set to the rubrics the fit did not zero (``working_set.prune``; a pruned rubric is
   not admitted again when the writer proposes it anew); then mine misranked training pairs by
   bucket and ask the generator, in two stages, for the rubrics they show to be missing; they
   join the working set within the judge budget (``budget.max_rubrics``). A round that admits
   nothing new ends the loop;
5. **outputs**: the best round's rubric set (``rubric_set.json``, with the data source and a
   hash of every training and validation pair), its held-out test accuracy,
   ``report.json``/``report.md``/``accuracy.png``. When the data node declares ``hidden_rules``
   (the synthetic worlds) the hidden set's own test accuracy is reported as ``oracle_accuracy``,
   with how many hidden rules and offered distractors were kept, and per round how many hidden
   rules have been found so far.

The test split is only reported (per round and for the best round); every choice -- C, the best
round -- is made on the validation split.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rewards import build_reward, instantiate
from rewards.judges.base import Judge, JudgeError
from rewards.rubric_set import DEFAULT_TEMPLATE, Rubric, RubricSetError
from rl.redact import protect_run
from rubric_learning.cache import JudgeCache, make_key
from rubric_learning.dedup import StatementKey
from rubric_learning.failures import diagnosis_requests, extraction_requests
from rubric_learning.mining import HardPairMiner
from rubric_learning.pairs import (
    PairDataError,
    PreferencePair,
    Splits,
    drop_ties,
    drop_unreadable,
    pair_hash,
    split_pairs,
)
from rubric_learning.refiner import (
    RefinerResult,
    entering,
    pairwise_accuracy,
    refine,
    score_differences,
)
from rubric_learning.report import RunReport, save_rubric_set
from rubric_learning.scoring import CachedGenerator, JudgeStats, RubricScorer
from rubric_learning.seeds import select_seed_pairs
from rubric_learning.synthesis import (
    RubricParseError,
    RubricPool,
    read_answer,
    synthesis_requests,
)

log = logging.getLogger(__name__)
ENTRY = "learn"
PRUNE_POLICIES = ("nonzero", "kept", "none")
READMIT_PASSES = 3  # fits per round that may bring pruned rubrics back


class EmptyWorkingSetError(RuntimeError):
    """No rubric statement survived synthesis, so there is nothing to score or fit."""


class EntryError(ValueError):
    """An experiment preset for another entry (e.g. a training preset) was chosen."""


def check_entry(cfg: DictConfig, experiment: str | None) -> None:
    """Fail with one message when an experiment preset for another entry was chosen."""
    if cfg.get("entry") != ENTRY:
        raise EntryError(
            f"experiment={experiment} is a preset for {cfg.get('entry')}, not rubric_learning.learn"
        )


def judge_identity(node: Any, override: str | None) -> str:
    """The cache's name for a judge: given, or a hash of its whole config node."""
    if override:
        return str(override)
    return make_key(OmegaConf.to_yaml(node, resolve=True))[:16]


# ---------------------------------------------------------------------------------- data


def load_splits(cfg: DictConfig) -> tuple[Splits, dict[str, Any]]:
    """Pairs from the data node, readable and decided, split; plus counts for the report.

    Ties are always dropped (and counted): the refiner needs a preferred image.
    """
    loaded = instantiate(cfg.data, _convert_="all")
    if isinstance(loaded, Splits):
        parts = {"train": loaded.train, "val": loaded.val, "test": loaded.test}
    else:
        split = split_pairs(list(loaded), cfg.splits.train, cfg.splits.val, cfg.seed)
        parts = {"train": split.train, "val": split.val, "test": split.test}
    dropped: Counter = Counter()
    for name, pairs in parts.items():
        pairs, unreadable = drop_unreadable(pairs)
        dropped.update(unreadable)
        dropped["tie"] += sum(p.is_tie for p in pairs)
        parts[name] = drop_ties(pairs, name)
    if not parts["train"]:
        raise ValueError("the training split is empty: give more pairs or a larger splits.train")
    splits = Splits(parts["train"], parts["val"], parts["test"])
    return splits, {"sizes": splits.sizes(), "dropped": dict(dropped)}


def labels_of(pairs: list[PreferencePair]) -> np.ndarray:
    return np.array([p.label for p in pairs], dtype=float)


def accuracy(scores: np.ndarray, pairs: list[PreferencePair], weights: np.ndarray) -> float:
    """Pairwise accuracy of the weighted rubrics on ``pairs`` from their ``[n, k, 2]`` scores."""
    return pairwise_accuracy(score_differences(scores)[0], labels_of(pairs), weights)


# ---------------------------------------------------------------------------------- learner


class RubricLearner:
    """One rubric-learning run; :meth:`run` reads as the algorithm."""

    def __init__(self, cfg: DictConfig, out_dir: Path) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        if cfg.working_set.prune not in PRUNE_POLICIES:
            raise ValueError(
                f"working_set.prune must be one of {PRUNE_POLICIES}, got {cfg.working_set.prune!r}"
            )
        self.splits, self.data_info = load_splits(cfg)
        self.judge: Judge = instantiate(cfg.judge)
        # An empty generator node (conf/generator/scorer.yaml) lets the scoring judge write.
        self.generator: Judge = instantiate(cfg.generator) if cfg.generator else self.judge
        cache_path = cfg.scoring.cache_path or out_dir / "judge_cache.sqlite"
        self.cache = JudgeCache(cache_path)
        self.stats = JudgeStats()
        self.template = dict(cfg.scoring.template or DEFAULT_TEMPLATE)
        self.scorer = RubricScorer(
            self.judge,
            self.cache,
            judge_identity(cfg.judge, cfg.scoring.judge_id),
            self.template,
            cfg.scoring.batch_size,
            self.stats,
            cfg.scoring.retry_failed,
        )
        gen_node = cfg.generator if cfg.generator else cfg.judge
        self.writer = CachedGenerator(
            self.generator,
            self.cache,
            judge_identity(gen_node, cfg.synthesis.generator_id),
            cfg.synthesis.max_new_tokens,
            cfg.synthesis.batch_size,
            self.stats,
        )
        self.pool = RubricPool(
            cfg.synthesis.min_words,
            cfg.synthesis.max_words,
            cfg.budget.max_rubrics,
            dict(cfg.synthesis.synonyms or {}),
        )
        self.hidden = HiddenRules.from_config(
            cfg.data.get("hidden_rules"), self.pool, getattr(self.judge, "canonical", None)
        )
        self.miner = HardPairMiner(seed=cfg.seed, **OmegaConf.to_container(cfg.mining))
        self.report = RunReport(out_dir, header={"data": self.data_info, "cache": str(cache_path)})
        self.train_scores = np.empty((0, 0, 2))  # the latest round's working-set scores on train
        self.writer_pairs = 0  # pairs shown to the writer: seed pairs, then hard pairs
        self.reasked: Counter = Counter()  # writer answers asked again with a larger budget
        self.dropped_train: dict[str, np.ndarray] = {}  # pruned rubric -> its [n, 2] train scores

    def run(self) -> dict[str, Any]:
        cfg, best, mark = self.cfg, None, self.stats.snapshot()  # round 0 counts the synthesis
        seeds = self.select_seeds()
        self.pool.add_candidates(
            (text, {"round": 0, "source": "initial"})
            for text in cfg.synthesis.initial_rubrics or []
        )
        self.add_generated(seeds, self.synthesize(seeds), {"round": 0, "source": "seed"})
        self.check_working_set(len(seeds))
        for round_index in range(cfg.rounds):
            record, fit = self.fit_round(round_index)
            kept = [self.pool.rubrics[i] for i in fit.kept]
            if best is None or record["val_accuracy"] > best[0]["val_accuracy"]:
                best = (record, kept, fit.weights[fit.kept])
            if round_index + 1 < cfg.rounds:
                hard, record["buckets"] = self.mine(fit.weights, round_index)
                record["hard_pairs"] = [p.id for p in hard]
                self.writer_pairs += len(hard)
                answers = self.analyse_failures(hard, kept)
                record["pruned"] = self.prune(fit)
                origin = {"round": round_index + 1, "source": "failure"}
                record["admitted"] = self.add_generated(hard, answers, origin)
                if not record["admitted"]:
                    record["stopped"] = (
                        "judge budget used up" if self.pool.budget_spent else "no new rubrics"
                    )
            record["judge"], mark = self.stats.since(mark), self.stats.snapshot()
            self.report.add_round(record)
            if record.get("stopped"):
                log.warning(
                    "round %d admitted no rubric (%s): stopping", round_index, record["stopped"]
                )
                break
        return self.finish(*best)

    # -- steps, in the order run() calls them -------------------------------------------------

    def select_seeds(self) -> list[PreferencePair]:
        cfg = self.cfg.seeds
        proxy = build_reward(cfg.proxy_reward) if cfg.proxy_reward else None
        seeds = select_seed_pairs(
            self.splits.train, cfg.num, proxy, cfg.n_clusters, cfg.margin_weight, self.cfg.seed
        )
        if proxy is not None:
            proxy.release()
        self.report.header["seed_pairs"] = len(seeds)
        self.writer_pairs += len(seeds)
        return seeds

    def synthesize(self, pairs: list[PreferencePair]) -> list[str]:
        return self.ask_for_rubrics(synthesis_requests(pairs), "rule synthesis")

    def ask_for_rubrics(self, requests: list, desc: str) -> list[str]:
        """The writer's answers to requests for a rubric list. An answer that holds no list,
        not even the start of one (e.g. cut at ``max_new_tokens`` inside a long explanation:
        the generator does not say why it stopped), is asked again once with
        ``synthesis.retry_max_new_tokens``; both counts go to the report."""
        answers = self.writer.generate_many(requests, desc)
        retry = self.cfg.synthesis.retry_max_new_tokens
        if not retry or retry <= self.cfg.synthesis.max_new_tokens:
            return answers
        todo = [i for i, answer in enumerate(answers) if not holds_statements(answer)]
        if todo:
            again = self.writer.generate_many(
                [requests[i] for i in todo], f"{desc} (re-asked)", retry
            )
            for i, answer in zip(todo, again):
                answers[i] = answer
            self.reasked["re-asked"] += len(todo)
            self.reasked["re-asked, still no list"] += sum(not holds_statements(a) for a in again)
        return answers

    def add_generated(self, pairs: list[PreferencePair], answers: list[str], origin: dict) -> int:
        """Admit the answers' statements to the working set; unparseable answers are counted."""
        provenances = [{**origin, "pair_id": pair.id} for pair in pairs]
        added, failed = self.pool.add_answers(
            answers, provenances, self.cfg.budget.max_new_per_round
        )
        if failed:
            log.warning(
                "%d/%d generator answers unparseable, e.g. %s", len(failed), len(answers), failed[0]
            )
        return len(added)

    def check_working_set(self, answers: int) -> None:
        """Fail clearly when synthesis left nothing to score (answers and scores stay cached)."""
        if not len(self.pool):
            raise EmptyWorkingSetError(
                f"empty working set: {answers} generator answers gave no rubric statement "
                f"(rejected: {dict(self.pool.rejected)}). Check the generator, or start from "
                "synthesis.initial_rubrics. Scores and answers so far are kept in "
                f"{self.cache.path}."
            )

    def fit_round(self, round_index: int) -> tuple[dict[str, Any], RefinerResult]:
        """Score the working set, fit the refiner (re-admitting pruned rubrics the fit would
        now weigh, ``working_set.readmit``), measure the kept set."""
        cfg = self.cfg
        train, val, fit = self.score_and_fit(round_index)
        readmitted: list[str] = []
        for _ in range(READMIT_PASSES):
            back = self.readmissible(train, fit)
            if not back:
                break
            self.pool.readmit(back)  # appended to the working set, in this order
            readmitted += back
            for text in back:
                del self.dropped_train[text]
            train, val, fit = self.score_and_fit(round_index, train, val)
        texts = self.pool.texts()
        new = sum(r.provenance.get("round") == round_index for r in self.pool.rubrics)
        kept_texts = [texts[i] for i in fit.kept]
        record = {
            "round": round_index,
            "train_accuracy": accuracy(train, self.splits.train, fit.weights),
            "val_accuracy": accuracy(val, self.splits.val, fit.weights),
            "test_accuracy": self.test_accuracy(kept_texts, fit.weights[fit.kept]),
            "C": fit.C,
            "working_set_size": len(texts),
            "new_rubrics": new,
            "nonzero_weights": int(np.count_nonzero(fit.fitted)),
            "readmitted": len(readmitted),
            "judge_budget": {"used": self.pool.admitted, "max": cfg.budget.max_rubrics},
            "nan_features": fit.nan_features,
            "kept": [
                {"id": self.pool.rubrics[i].id, "text": texts[i], "weight": float(fit.weights[i])}
                for i in fit.kept
            ],
        }
        if self.hidden is not None:
            record["hidden"] = self.hidden.progress(self.pool.tried_texts(), kept_texts)
        return record, fit

    def score_and_fit(
        self, round_index: int, train: np.ndarray | None = None, val: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, RefinerResult]:
        """The working set's train and validation scores (cached) and the refiner's fit.

        ``train``/``val``: scores of the working set's first rubrics, already looked up this
        round; only the rubrics after them (re-admitted ones) are looked up.
        """
        cfg, texts = self.cfg, self.pool.texts()
        done = 0 if train is None else train.shape[1]
        parts = {"train": (self.splits.train, train), "val": (self.splits.val, val)}
        scores = {}
        for name, (pairs, known) in parts.items():
            new = self.scorer.score_pairs(pairs, texts[done:], f"round {round_index} {name}")
            scores[name] = new if known is None else np.concatenate([known, new], axis=1)
        train, val = scores["train"], scores["val"]
        self.train_scores = train
        fit = refine(
            train,
            labels_of(self.splits.train),
            cfg.refiner.top_n,
            cfg.refiner.C,
            list(cfg.refiner.C_grid),
            val,
            labels_of(self.splits.val),
            cfg.refiner.random_state,
            cfg.refiner.selection,
            cfg.refiner.nonnegative,
            cfg.refiner.min_weight_ratio,
        )
        return train, val, fit

    def readmissible(self, train: np.ndarray, fit: RefinerResult) -> list[str]:
        """Pruned rubrics that the fit would now give a positive weight (``refiner.entering``),
        judged from their remembered training scores: no judge call."""
        if not self.cfg.working_set.readmit or not self.dropped_train:
            return []
        texts = list(self.dropped_train)
        candidates = score_differences(np.stack([self.dropped_train[t] for t in texts], 1))[0]
        mask = entering(
            score_differences(train)[0], fit.fitted, candidates, labels_of(self.splits.train), fit.C
        )
        return [t for t, m in zip(texts, mask) if m]

    def test_accuracy(self, texts: list[str], weights: np.ndarray) -> float | None:
        """The kept set's accuracy on the test split, for the report only (None: not measured)."""
        if not self.cfg.report.test_each_round or not self.splits.test or not texts:
            return None
        scores = self.scorer.score_pairs(self.splits.test, texts, "test (reported only)")
        return accuracy(scores, self.splits.test, weights)

    def prune(self, fit: RefinerResult) -> int:
        """Prune the working set as ``working_set.prune`` says; returns how many rubrics left."""
        policy = self.cfg.working_set.prune
        if policy == "none":
            return 0
        keep = fit.kept if policy == "kept" else np.flatnonzero(fit.fitted).tolist()
        texts = self.pool.texts()
        gone = self.pool.prune(keep)
        for rubric in gone:  # remembered for re-admission (working_set.readmit)
            self.dropped_train[rubric.text] = self.train_scores[:, texts.index(rubric.text)]
        return len(gone)

    def mine(self, weights: np.ndarray, round_index: int) -> tuple[list[PreferencePair], dict]:
        """Draw this round's hard training pairs from the current reward's mistakes."""
        rewards = np.einsum("nks,k->ns", np.nan_to_num(self.train_scores), weights)
        train = self.splits.train
        chosen, buckets = self.miner.mine(
            rewards, labels_of(train), [p.id for p in train], round_index, self.cfg.rounds - 1
        )
        return [train[i] for i in chosen], buckets

    def analyse_failures(self, pairs: list[PreferencePair], kept: list[Rubric]) -> list[str]:
        """Two-stage failure analysis: diagnose the missing dimension, then extract rubrics."""
        current = [r.text for r in kept]
        diagnoses = self.writer.generate_many(diagnosis_requests(pairs, current), "diagnosis")
        return self.ask_for_rubrics(
            extraction_requests(pairs, self.pool.tried_texts(), diagnoses), "extraction"
        )

    def finish(self, best: dict, rubrics: list[Rubric], weights: np.ndarray) -> dict[str, Any]:
        """Test the best round's set, compare with hidden rules if any, save everything."""
        test_pairs = self.splits.test
        texts = [r.text for r in rubrics]
        final: dict[str, Any] = {"best_round": best["round"], "val_accuracy": best["val_accuracy"]}
        if test_pairs:
            scores = self.scorer.score_pairs(test_pairs, texts, "test")
            final["test_accuracy"] = accuracy(scores, test_pairs, weights)
        if self.hidden is not None and test_pairs:
            oracle = self.scorer.score_pairs(test_pairs, self.hidden.texts, "hidden rules")
            final["oracle_accuracy"] = accuracy(oracle, test_pairs, self.hidden.weights)
            final.update(self.hidden.summary(self.pool.tried_texts(), texts))
        final["rounds_run"] = len(self.report.rounds)
        final["stopped"] = self.report.rounds[-1].get("stopped")
        final["judge_budget_used"] = self.pool.admitted
        final["judge_totals"] = self.stats.snapshot()
        final["working_set_size"] = len(self.pool)
        final["rejected_statements"] = dict(self.pool.rejected)
        final["writer_pairs"] = self.writer_pairs
        final["cut_answers"] = {"cut in the list, statements kept": self.pool.cut_answers}
        final["cut_answers"] |= dict(self.reasked)
        final["rubric_set"] = None
        if rubrics:
            figures = {k: v for k, v in final.items() if not isinstance(v, dict)}
            path = save_rubric_set(
                self.out_dir / "rubric_set.json",
                list(zip(rubrics, weights.tolist())),
                self.template,
                str(self.cfg.judge.get("scoring", "normalized")),
                figures | self.data_info | {"pairs": self.pair_record()},
                judge=self.judge.identity(),
            )
            final["rubric_set"] = str(path)
        else:
            log.warning("no rubric got a positive weight in any round: rubric_set.json not written")
        self.report.final = final
        self.report.write()
        self.cache.close()
        print({k: v for k, v in final.items() if not isinstance(v, dict)}, flush=True)
        return final

    def pair_record(self) -> dict[str, Any]:
        """Where the rubric set's training and validation pairs came from: the data node and a
        :func:`~rubric_learning.pairs.pair_hash` per pair (``eval.preference`` leaves them out)."""
        source = OmegaConf.to_container(self.cfg.data, resolve=True)
        hashes = self.scorer.hashes
        return {
            "source": source,
            "hash": "rubric_learning.pairs.pair_hash: sha256(prompt, sorted sha1 of image bytes)",
            "train": [pair_hash(p, hashes) for p in self.splits.train],
            "val": [pair_hash(p, hashes) for p in self.splits.val],
        }


def holds_statements(answer: str) -> bool:
    """Whether the answer holds a statement list (maybe empty), complete or cut inside."""
    try:
        read_answer(answer)
    except RubricParseError:
        return False
    return True


class HiddenRules:
    """The synthetic world's hidden rule set, matched to rubrics by their dedup key.

    When the judge can say which statement of its grammar a text means (``canonical``, the
    realistic world's judge), texts are matched by that meaning, so a hidden rule found in any
    spelling counts as found, and two spellings of it kept count once.
    """

    def __init__(
        self,
        rules: list[tuple[str, float]],
        pool: RubricPool,
        canonical: Callable[[str], str | None] | None = None,
    ) -> None:
        self.texts = [text for text, _ in rules]
        self.weights = np.array([weight for _, weight in rules])
        self.canonical = canonical
        self.pool = pool
        self.keys = {self.key(text) for text in self.texts}

    def key(self, text: str) -> StatementKey:
        meaning = self.canonical(text) if self.canonical is not None else None
        return self.pool.key(meaning or text)

    @classmethod
    def from_config(
        cls, node: Any, pool: RubricPool, canonical: Callable[[str], str | None] | None = None
    ) -> HiddenRules | None:
        if not node:
            return None
        return cls([(str(r["text"]), float(r["weight"])) for r in node], pool, canonical)

    def progress(self, tried: list[str], kept: list[str]) -> dict[str, int]:
        """Hidden rules found so far (admitted to the working set at some point) and kept now."""
        tried_keys, kept_keys = {self.key(t) for t in tried}, {self.key(t) for t in kept}
        return {
            "found": len(self.keys & tried_keys),
            "kept": len(self.keys & kept_keys),
            "distractors_kept": len(kept_keys - self.keys),
            "total": len(self.keys),
        }

    def summary(self, tried: list[str], kept: list[str]) -> dict[str, Any]:
        """Final counts: hidden rules offered and kept, distractors offered and kept."""
        tried_keys, kept_keys = {self.key(t) for t in tried}, {self.key(t) for t in kept}
        return {
            "hidden_rules": len(self.keys),
            "hidden_offered": len(self.keys & tried_keys),
            "hidden_kept": len(self.keys & kept_keys),
            "distractors_offered": len(tried_keys - self.keys),
            "distractors_kept": len(kept_keys - self.keys),
            "distractor_share": len(kept_keys - self.keys) / len(kept_keys) if kept_keys else 0.0,
        }


def learn(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run rubric learning with ``cfg`` into ``out_dir``; returns the final figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return RubricLearner(cfg, out_dir).run()


# A mistake in the input (a missing or malformed file, a preset for another entry, a judge
# server that is not up): the command ends with its message in one line, not a traceback.
USER_ERRORS = (PairDataError, RubricSetError, FileNotFoundError, EntryError, JudgeError)


@hydra.main(config_path="../conf", config_name="learn", version_base=None)
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    try:
        check_entry(cfg, hydra_cfg.runtime.choices.get("experiment"))
        out_dir = Path(hydra_cfg.runtime.output_dir)
        # a judge.api_key=... override leaves argv, Hydra's files and the logs (rl/redact.py)
        protect_run(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), out_dir)
        learn(cfg, out_dir)
    except USER_ERRORS as err:
        raise SystemExit(f"rubric_learning.learn: {type(err).__name__}: {err}") from None


if __name__ == "__main__":
    main()
