"""Evaluators (Dassl's API): Classification prints the `=> result` block that parse_test_res.py reads."""
import os.path as osp
from collections import OrderedDict, defaultdict

import numpy as np
import torch

from dassl.utils import Registry, check_availability

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def build_evaluator(cfg, **kwargs):
    check_availability(cfg.TEST.EVALUATOR, EVALUATOR_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print(f"Loading evaluator: {cfg.TEST.EVALUATOR}")
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)


class EvaluatorBase:
    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self):
        raise NotImplementedError

    def process(self, mo, gt):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError

    def shard_state(self):
        """What process() accumulated, as plain values (distributed evaluation gathers it from every rank)."""
        raise NotImplementedError(f"evaluator {type(self).__name__} cannot evaluate across processes: it needs "
                                  f"shard_state() and merge_shards()")

    def merge_shards(self, states):
        """Replace the accumulated results by the concatenation of `states` (one shard_state() per rank)."""
        raise NotImplementedError(f"evaluator {type(self).__name__} cannot evaluate across processes: it needs "
                                  f"shard_state() and merge_shards()")


def macro_f1_score(y_true, y_pred):
    """Macro F1 over the labels present in y_true (= sklearn's f1_score(average='macro', labels=unique(y_true)))."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for label in np.unique(y_true):
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def confusion_matrix(y_true, y_pred, num_classes):
    """Row-normalised confusion matrix [true, pred] (rows without samples stay zero)."""
    cmat = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(cmat, (np.asarray(y_true), np.asarray(y_pred)), 1)
    rows = cmat.sum(axis=1, keepdims=True)
    return np.divide(cmat, rows, out=np.zeros_like(cmat), where=rows > 0)


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accuracy, error and macro F1 (+ per-class accuracy and confusion matrix on request)."""

    def __init__(self, cfg, lab2cname=None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname
        if cfg.TEST.PER_CLASS_RESULT and lab2cname is None:
            raise ValueError("TEST.PER_CLASS_RESULT needs lab2cname")
        self.reset()

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        self._per_class_res = defaultdict(list) if self.cfg.TEST.PER_CLASS_RESULT else None

    def process(self, mo, gt):
        """mo: [B, C] model outputs; gt: [B] labels."""
        self._add(gt.detach().cpu().tolist(), mo.max(1)[1].detach().cpu().tolist())

    def _add(self, y_true, y_pred):
        matches = [int(t == p) for t, p in zip(y_true, y_pred)]
        self._correct += sum(matches)
        self._total += len(y_true)
        self._y_true.extend(y_true)
        self._y_pred.extend(y_pred)
        if self._per_class_res is not None:
            for label, match in zip(y_true, matches):
                self._per_class_res[label].append(match)

    def shard_state(self):
        return {"y_true": list(self._y_true), "y_pred": list(self._y_pred)}

    def merge_shards(self, states):
        self.reset()
        for state in states:
            self._add(state["y_true"], state["y_pred"])

    def evaluate(self):
        results = OrderedDict()
        acc = 100.0 * self._correct / max(self._total, 1)
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(self._y_true, self._y_pred)
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1
        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )
        if self._per_class_res is not None:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                class_acc = 100.0 * correct / total
                accs.append(class_acc)
                print(f"* class: {label} ({self._lab2cname[label]})\ttotal: {total:,}\tcorrect: {correct:,}\t"
                      f"acc: {class_acc:.1f}%")
            mean_acc = float(np.mean(accs))
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc
        if self.cfg.TEST.COMPUTE_CMAT:
            num_classes = max(self._y_true + self._y_pred) + 1
            cmat = confusion_matrix(self._y_true, self._y_pred, num_classes)
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch.save(torch.from_numpy(cmat), save_path)
            print(f"Confusion matrix is saved to {save_path}")
        return results
