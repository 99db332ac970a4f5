"""The PromptKD teacher run folder the records use (tests/data/promptkd_teacher): a finished PromptSRC run on
`random-tiny-ViT` (joint width 64, the records' student has 48), 1 epoch, 1 shot of a generated Caltech101, depth 2.

    PYTHONPATH=$PWD python -m tests.promptkd_teacher      # rewrites tests/data/promptkd_teacher

Kept: config.yaml (its place-naming keys blanked), result.json and the last checkpoint, so that a record variant
of PromptKD names it by TEACHER_DIR like any teacher run. Rebuild it only with the records (python -m tests.records
--rewrite), whose PromptKD entries depend on it.
"""
import os
import shutil
import sys
import tempfile

# relative: the records run from the repository root (trainers/promptkd.py's record_variants name it)
FOLDER = os.path.join("tests", "data", "promptkd_teacher")
BLANKED = ("OUTPUT_DIR", "ROOT")  # where the run happened to be


def make(folder=FOLDER):
    from tests.e2e import run_train

    with tempfile.TemporaryDirectory() as tmp:
        output_dir, _ = run_train(tmp, "PromptSRC", "configs/trainers/PromptSRC/toy_demo.yaml", subsample="base",
                                  opts=["MODEL.BACKBONE.NAME", "random-tiny-ViT", "DATASET.NUM_SHOTS", "1",
                                        "OPTIM.MAX_EPOCH", "1", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2",
                                        "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2", "TRAINER.PROMPTSRC.GPA_MEAN",
                                        "1.0"])
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(os.path.join(folder, "prompt_learner"))
        with open(output_dir / "config.yaml", encoding="utf-8") as f:
            lines = [f"{line.split(':')[0]}: ''" if line.strip().split(":")[0] in BLANKED else line.rstrip("\n")
                     for line in f]
        with open(os.path.join(folder, "config.yaml"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        shutil.copy(output_dir / "result.json", folder)
        shutil.copy(output_dir / "prompt_learner" / "model.pth.tar-1", os.path.join(folder, "prompt_learner"))
    return folder


if __name__ == "__main__":
    print(make())
    sys.exit(0)
