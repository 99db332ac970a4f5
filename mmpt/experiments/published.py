"""Published numbers (ViT-B/16, 16 shots; the MuDPT paper's, KgCoOp's and PromptSRC's from their releases, DePT's) as
data: the "(paper)" rows of `python -m mmpt.results`.

Keys are our dataset config names (mmpt.experiments.layout.DATASETS_11 ...) and trainer names; "CLIP" is zero-shot CLIP
(our ZeroshotCLIP). Accuracies in percent.
"""
from mmpt.experiments.layout import DATASETS_11, DG_TARGETS, XD_TARGETS, ZERO_SHOT

# what every published number here was measured with: a run is compared with them only on this backbone, with
# these shots, on the same dataset and protocol (mmpt.experiments.results)
BACKBONE = "ViT-B/16"
SHOTS = 16

SOURCE = "MuDPT paper (Miao et al., ICME 2023), ViT-B/16, 16 shots"
# rows taken from elsewhere than SOURCE: row name -> where its numbers come from
ROW_SOURCES = {"KgCoOp": "KgCoOp's official repository readme (Yao et al., CVPR 2023), ViT-B/16, 16 shots",
               "PromptSRC": "PromptSRC's official README (Khattak et al., ICCV 2023), ViT-B/16, 16 shots, 3 seeds",
               "TCP": "TCP paper (Yao, Zhang, Xu, CVPR 2024), ViT-B/16, 16 shots; its release's run log, seeds 1-3, "
                      "averages to the same numbers",
               "MMA": "MMA's official README, the paper's table (Yang et al., CVPR 2024), ViT-B/16, 16 shots, 3 seeds",
               "MMRL": "MMRL paper (Guo, Gu, CVPR 2025), ViT-B/16, 16 shots, 3 seeds, as quoted by later papers "
                       "(base-to-new average, domain generalisation)",
               **{f"{base}+DePT": "DePT paper (Zhang et al., CVPR 2024), ViT-B/16, 16 shots, 3 seeds, as its official "
                                  "README's tables give it (base-to-new average; domain generalisation from the "
                                  "repository's additional_results, a separate run)" + (
                                      "; PromptSRC+DePT has no released code or config" if base == "PromptSRC" else "")
                  for base in ("CoOp", "CoCoOp", "KgCoOp", "MaPLe", "PromptSRC")}}

# trainer name in our results -> the row name the paper uses
PAPER_NAMES = {ZERO_SHOT: "CLIP", "CoOp": "CoOp", "CoCoOp": "CoCoOp", "MuDPT": "MuDPT", "KgCoOp": "KgCoOp",
               "PromptSRC": "PromptSRC", "TCP": "TCP", "MMA": "MMA", "MMRL": "MMRL",
               **{f"ExtrasLinearProbe{base}": f"{base}+DePT" for base in ("CoOp", "CoCoOp", "KgCoOp", "MaPLe",
                                                                             "PromptSRC")}}


def _row(datasets, values, average):
    assert len(datasets) == len(values), (datasets, values)
    return {**dict(zip(datasets, values)), "average": average}


# few-shot recognition, 16 shots, per dataset + the 11-dataset average
FEWSHOT_16 = {
    "CLIP": _row(DATASETS_11, [66.7, 92.7, 89.1, 65.3, 70.8, 86.3, 24.8, 62.6, 44.3, 41.8, 66.7], 64.65),
    "CoOp": _row(DATASETS_11, [63.57, 92.43, 89.47, 71.2, 93.1, 77.17, 29.07, 69.77, 64.2, 80.1, 74.9], 73.18),
    "CoCoOp": _row(DATASETS_11, [72.4, 95.4, 95.8, 71.6, 79.4, 89.2, 33, 76.8, 63, 73.8, 75.4], 75.07),
    "MuDPT": _row(DATASETS_11, [72.7, 96.72, 94.19, 80.43, 96.47, 87.38, 43.13, 76.18, 72.37, 92.17, 83.53], 81.38),
}

# cross-dataset: source ImageNet accuracy, the 10 targets, target average
CROSS_DATASET = {
    "CoOp": {"imagenet": 71.51, **_row(XD_TARGETS, [93.7, 89.14, 64.51, 68.71, 85.3, 18.47, 64.15, 41.92, 46.39,
                                                    66.55], 63.88)},
    "CoCoOp": {"imagenet": 71.02, **_row(XD_TARGETS, [94.43, 90.14, 65.32, 71.88, 86.06, 22.94, 67.36, 45.73,
                                                      45.37, 68.21], 65.74)},
    "MuDPT": {"imagenet": 72.13, **_row(XD_TARGETS, [94.07, 90.74, 65.58, 71.8, 86.13, 24.12, 67.38, 45.3, 47.14,
                                                     69], 66.13)},
}

# domain generalisation: source ImageNet, then -V2, -Sketch, -A, -R (the paper gives no average)
DOMAIN_GENERALISATION = {
    "CLIP": {"imagenet": 66.7, **dict(zip(DG_TARGETS, [60.83, 46.15, 47.77, 73.96]))},
    "CoOp": {"imagenet": 71.51, **dict(zip(DG_TARGETS, [64.20, 47.99, 49.71, 75.21]))},
    "CoCoOp": {"imagenet": 71.02, **dict(zip(DG_TARGETS, [64.07, 48.75, 50.63, 76.18]))},
    "MuDPT": {"imagenet": 72.13, **dict(zip(DG_TARGETS, [64.92, 49.31, 49.61, 77.02]))},
    "MMRL": {"imagenet": 72.03, **dict(zip(DG_TARGETS, [64.47, 49.17, 51.20, 77.53]))},  # ROW_SOURCES
    # ROW_SOURCES; DG_TARGETS order (V2, Sketch, A, R)
    "CoOp+DePT": {"imagenet": 70.70, **dict(zip(DG_TARGETS, [64.13, 49.40, 51.57, 77.33]))},
    "CoCoOp+DePT": {"imagenet": 70.57, **dict(zip(DG_TARGETS, [63.97, 49.83, 50.90, 76.87]))},
    "KgCoOp+DePT": {"imagenet": 70.63, **dict(zip(DG_TARGETS, [63.70, 48.90, 50.77, 76.57]))},
    "MaPLe+DePT": {"imagenet": 70.97, **dict(zip(DG_TARGETS, [64.33, 49.33, 49.70, 77.37]))},
}

# base-to-new, average over the 11 datasets; HM = harmonic mean of the average base and average new
BASE2NEW_AVERAGE = {
    "CLIP": {"base": 69.34, "new": 74.22, "hm": 71.70},
    "CoOp": {"base": 82.69, "new": 63.22, "hm": 71.66},
    "CoCoOp": {"base": 80.47, "new": 71.69, "hm": 75.83},
    "MuDPT": {"base": 82.71, "new": 74.5, "hm": 78.39},
    "KgCoOp": {"base": 80.73, "new": 73.6, "hm": 77.0},  # ROW_SOURCES (only its base-to-new average is published there)
    "PromptSRC": {"base": 84.26, "new": 76.10, "hm": 79.97},  # ROW_SOURCES (its CLIP row agrees with ours)
    "TCP": {"base": 84.13, "new": 75.36, "hm": 79.51},  # ROW_SOURCES (per dataset: docs/TCP.md, from the run log)
    "MMA": {"base": 83.20, "new": 76.80, "hm": 79.87},  # ROW_SOURCES (its CLIP, CoOp, CoCoOp, KgCoOp rows agree)
    "MMRL": {"base": 85.68, "new": 77.16, "hm": 81.20},  # ROW_SOURCES
    # ROW_SOURCES; the paper's average rows (per dataset: docs/DEPT.md)
    "CoOp+DePT": {"base": 83.66, "new": 71.82, "hm": 77.29},
    "CoCoOp+DePT": {"base": 83.80, "new": 72.89, "hm": 77.97},
    "KgCoOp+DePT": {"base": 83.62, "new": 75.04, "hm": 79.10},
    "MaPLe+DePT": {"base": 84.85, "new": 74.82, "hm": 79.52},
    "PromptSRC+DePT": {"base": 85.19, "new": 76.17, "hm": 80.43},
}


# results tracks (a method's declared `track`): their own tables and published rows, never averaged with the above.
# PromptKD (Li et al., CVPR 2024): ViT-B/16 student, ViT-L/14 PromptSRC teacher, 3 seeds; base-to-new = the paper's
# Table 1 (its README), the teacher's = appendix Table 10 (our averages of it); cross-dataset = Table 2, teacher =
# appendix Table 11 (arXiv 2403.02781; the student has no source number, the teacher's ImageNet is 78.12)
TRACKS = {
    "distillation": {
        "base2new": {"PromptKD": {"base": 86.96, "new": 80.73, "hm": 83.73},
                     "PromptKD's teacher (PromptSRC, ViT-L/14)": {"base": 87.86, "new": 81.45, "hm": 84.53}},
        "cross_dataset": {
            "PromptKD": _row(XD_TARGETS, [93.61, 91.59, 73.93, 75.33, 88.84, 26.24, 68.57, 55.08, 63.74, 76.39], 71.33),
            "PromptKD's teacher (PromptSRC, ViT-L/14)": {
                "imagenet": 78.12, **_row(XD_TARGETS, [95.61, 94.19, 77.70, 77.54, 91.59, 31.29, 70.86, 56.32, 47.55,
                                                       76.20], 71.89)}},
    },
}
TRACK_SOURCES = {"distillation": "PromptKD paper (Li et al., CVPR 2024; arXiv 2403.02781) Tables 1, 2, 10, 11: "
                                 "ViT-B/16 student, ViT-L/14 PromptSRC teacher, 3 seeds"}


def sources_note():
    """Where the "(paper)" rows come from, one sentence."""
    return "; ".join([SOURCE] + [f"{name} (paper): {source}" for name, source in ROW_SOURCES.items()]
                     + [f"{track} track (paper): {source}" for track, source in TRACK_SOURCES.items()])


def source_of(name):
    """Where the published row `name` ("CoOp", "CLIP", ...) comes from."""
    return ROW_SOURCES.get(name, SOURCE)


def paper_name(trainer):
    """The published row of one of our trainers, or None."""
    return PAPER_NAMES.get(trainer)
