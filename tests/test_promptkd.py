"""PromptKD (trainers/promptkd.py, docs/PROMPTKD.md): the student against an independent restatement of the release's
formulas with a teacher and a student of different widths (eval logits, the KL loss with its reduction,
temperature and weight, one step's gradients, fp32); the teacher checks; the two stages end to end through the
sweep on the toy world, with a killed teacher and a killed student resumed."""
import io
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import mmpt
from dassl.utils import ConfigError
from mmpt.experiments import layout, record, results, sweep
from mmpt.prompt_trainer import freeze_all_but_prompt_learner
from tests.e2e import small_clip_model
from trainers.promptkd import PromptKD, PromptKDCLIP, check_teacher_run, load_teacher

CLASSNAMES = ["cat", "golden_retriever", "sunflower", "aircraft carrier ship", "tabby cat"]


def teacher_and_student(temperature=2.0, kd_weight=7.0):
    """A PromptSRC teacher (joint width 40, vision 80, text 56) and a student (joint 48, vision 96), fp32."""
    teacher_clip = small_clip_model(embed_dim=40, vision_width=80, transformer_width=56)
    teacher = mmpt.create_model("PromptSRC", teacher_clip, CLASSNAMES, PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=3,
                                PREC="fp32")
    with torch.no_grad():  # trained-looking teacher prompts
        for param in teacher.prompt_learner.parameters():
            param.normal_(0, 0.5)
    config = PromptKD.make_config(N_CTX_VISION=3, PROMPT_DEPTH_VISION=2, PROJECTOR_HIDDEN=24, PREC="fp32",
                                  TEMPERATURE=temperature, KD_WEIGHT=kd_weight)
    student = PromptKDCLIP(small_clip_model(), CLASSNAMES, config, teacher=teacher.requires_grad_(False).eval())
    freeze_all_but_prompt_learner(student)
    with torch.no_grad():
        student.prompt_learner.projector.layers[1].weight.uniform_(0.5, 1.5)
        student.prompt_learner.projector.layers[1].bias.normal_(0, 0.1)
    return teacher, student, config


def restated_logits(student, teacher_clip_features, images, train):
    """exp(logit_scale) * normalize(P(f)) @ W_t^T with f the prompted ViT's CLS feature (VPT's deep prompts, written
    with CLIP's own modules here) and P written out: W2 relu(BN(W1 f + b1)) + b2."""
    visual = student.image_encoder.visual
    prompts = student.prompt_learner.visual_ctx
    n = prompts.shape[1]
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for layer, block in enumerate(visual.transformer.resblocks):
        if 1 <= layer < prompts.shape[0]:
            x = torch.cat([x[:, :-n], prompts[layer].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x.transpose(0, 1)).transpose(0, 1)
    f = visual.ln_post(x[:, 0]) @ visual.proj
    conv1, bn, _, conv2 = student.prompt_learner.projector.layers
    h = f @ conv1.weight[:, :, 0, 0].t() + conv1.bias
    if train:
        mean, var = h.mean(0), h.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    h = torch.relu((h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias)
    g = h @ conv2.weight[:, :, 0, 0].t() + conv2.bias
    return student.logit_scale.exp() * F.normalize(g, dim=-1) @ teacher_clip_features.t()


def restated_kd(student_logits, teacher_logits, temperature):
    """T^2 / (B * C) * sum_{b,c} p_t (log p_t - log p_s)."""
    p_t = torch.softmax(teacher_logits / temperature, dim=-1)
    log_p_s = torch.log_softmax(student_logits / temperature, dim=-1)
    return temperature ** 2 * (p_t * (torch.log(p_t) - log_p_s)).sum() / student_logits.numel()


def test_student_matches_the_restatement_eval_loss_and_gradients():
    torch.manual_seed(5)
    teacher, student, config = teacher_and_student()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 4])
    with torch.no_grad():
        teacher_features = teacher.class_features()  # the teacher's own text tower, all classes
        teacher_logits = teacher(images)
    assert teacher_features.shape == (5, 40)

    student.eval()
    with torch.no_grad():
        student.prompt_learner.projector.layers[1].running_mean.normal_(0, 0.1)
        student.prompt_learner.projector.layers[1].running_var.uniform_(0.5, 2)
        assert torch.allclose(student(images), restated_logits(student, teacher_features, images, train=False),
                              atol=1e-5)

    # one training step (BatchNorm on the batch's statistics), through the library's step functions
    student.prompt_learner.train()
    outputs = PromptKD.training_outputs(student, images, labels, None)
    assert torch.equal(outputs.extra["teacher_logits"], teacher_logits)  # same batch, no gradient
    assert not outputs.extra["teacher_logits"].requires_grad
    loss, summary = PromptKD.training_loss(student, config, outputs)
    assert set(summary) == {"loss", "loss_kd", "acc"}  # no cross-entropy term
    loss.backward()
    grads = {name: p.grad.clone() for name, p in student.prompt_learner.named_parameters()}
    student.prompt_learner.zero_grad()

    expected_logits = restated_logits(student, teacher_features, images, train=True)
    assert torch.allclose(outputs.logits, expected_logits, atol=1e-5)
    expected = restated_kd(expected_logits, teacher_logits, config.TEMPERATURE)
    assert summary["loss_kd"] == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(config.KD_WEIGHT * expected.item(), rel=1e-5)
    (config.KD_WEIGHT * expected).backward()
    assert set(grads) == {name for name, _ in student.prompt_learner.named_parameters()}
    # the first conv's bias feeds the training-mode BatchNorm, which removes it: its gradient is rounding noise
    zero = {"projector.layers.0.bias"}
    for name, param in student.prompt_learner.named_parameters():
        scale = param.grad.abs().max()  # SDPA blocks against CLIP's own attention: float rounding only
        if name in zero:
            assert scale < 1e-4 and grads[name].abs().max() < 1e-4, name
            continue
        assert scale > 1e-3, name
        assert (grads[name] - param.grad).abs().max() <= 1e-4 * scale, (name, (grads[name] - param.grad).abs().max())
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen


def test_temperature_and_weight_change_the_loss_as_the_formula_says():
    torch.manual_seed(6)
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    values = {}
    for temperature in (1.0, 4.0):
        teacher, student, config = teacher_and_student(temperature=temperature, kd_weight=1.0)
        student.prompt_learner.train()
        outputs = PromptKD.training_outputs(student, images, labels, None)
        loss, _ = PromptKD.training_loss(student, config, outputs)
        values[temperature] = loss.item()
        assert loss.item() == pytest.approx(restated_kd(outputs.logits.detach(), outputs.extra["teacher_logits"],
                                                        temperature).item(), rel=1e-5)
    assert values[1.0] != pytest.approx(values[4.0])


def test_teacher_text_features_are_computed_once_and_never_saved(monkeypatch):
    teacher, student, config = teacher_and_student()
    calls = []
    original = type(teacher).class_features
    monkeypatch.setattr(type(teacher), "class_features", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    student.prompt_learner.train()
    for _ in range(3):
        PromptKD.training_outputs(student, images, labels, None)
    student.eval()
    with torch.no_grad():
        student(images)
    assert len(calls) == 1
    saved = set(student.prompt_learner.state_dict())
    assert saved == {"visual_ctx"} | {f"projector.layers.{k}" for k in (
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "3.weight", "3.bias")}
    assert sum(p.numel() for p in student.parameters() if p.requires_grad) == \
        2 * 3 * 96 + (48 * 24 + 24) + 2 * 24 + (24 * 40 + 40)


# ------------------------------------------------------------------------------------------------ the toy pipeline
TOY = ["OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "DATASET.NUM_SHOTS", "2"]


def toy_sweep(data_root, out, *extra):
    return ["--trainers", "PromptKD", "--protocol", "base2new", "--datasets", "toy_world", "--seeds", "1",
            "--cfg", "toy_demo", "--data", str(data_root), "--output", str(out), "--jobs", "2", *extra,
            "--opts", *TOY]


@pytest.fixture(scope="module")
def toy_pipeline(tmp_path_factory):
    """The toy world, and one sweep of PromptKD base-to-new (teacher: PromptSRC on toy-ViT, then the student)."""
    from mmpt.data import toy_world

    tmp = tmp_path_factory.mktemp("promptkd")
    data_root = tmp / "data"
    toy_world.make_dataset("ToyWorld", str(data_root))
    out = tmp / "output"
    lines = []
    assert sweep.main(toy_sweep(data_root, out), echo=lines.append) == 0, "\n".join(lines)
    return data_root, out, json.loads((out / sweep.MANIFEST_NAME).read_text())["jobs"]


def job_of(jobs, trainer, stage):
    return next(k for k, j in jobs.items() if j["trainer"] == trainer and j["stage"] == stage)


def test_sweep_runs_teacher_then_student_and_tables_mark_the_track(toy_pipeline):
    data_root, out, jobs = toy_pipeline
    teacher = job_of(jobs, "PromptSRC", "base2new_train")
    student = job_of(jobs, "PromptKD", "base2new_train_all")
    assert list(jobs) == [teacher, student, job_of(jobs, "PromptKD", "base2new_test_base"),
                          job_of(jobs, "PromptKD", "base2new_test_new")]
    assert {j["status"] for j in jobs.values()} == {"done"}
    assert jobs[student]["depends_on"] == [teacher]
    student_log = (out / student / "log.txt").read_text()
    assert "loss_kd" in student_log and "loss_ce" not in student_log
    # the student trained on every class; its evaluations ran on each half with the teacher's features
    assert record.read_result(str(out / student)).subsample == "all"
    saved = torch.load(out / student / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]
    assert all(key.startswith(("visual_ctx", "projector.")) for key in saved)
    report = results.write_report(str(out), str(out / "report"), echo=lambda *_: None)
    names = [t.name for t in report["tables"]]
    # the student's only world is the toy world's distillation track: its tables say so, and no published row
    # of the inductive methods stands in them
    assert "base2new_average" in names
    table = next(t for t in report["tables"] if t.name == "base2new_average")
    assert "distillation track" in table.title and "toy world" in table.title
    assert "transductive" in table.note and "teacher PromptSRC at toy-ViT" in table.note
    assert not any("(paper)" in row[0] for row in table.rows)
    assert [row[0] for row in table.rows][0] == "PromptKD"


def kill_after_epoch_1(run_dir):
    """What a run killed in epoch 2 leaves: epoch 1's checkpoint as the last one, no epoch-2 file, no result."""
    (run_dir / record.RESULT_FILE).unlink()
    final = run_dir / "prompt_learner" / "model.pth.tar-2"
    kept = final.read_bytes()
    final.unlink()
    (run_dir / "prompt_learner" / "checkpoint").write_text("model.pth.tar-1\n")
    return kept


def test_killed_teacher_and_student_resume_to_the_same_checkpoints(toy_pipeline):
    data_root, out, jobs = toy_pipeline
    teacher = job_of(jobs, "PromptSRC", "base2new_train")
    student = job_of(jobs, "PromptKD", "base2new_train_all")
    before = {job: kill_after_epoch_1(out / job) for job in (teacher, student)}
    lines = []
    assert sweep.main(toy_sweep(data_root, out), echo=lines.append) == 0, "\n".join(lines)
    after = json.loads((out / sweep.MANIFEST_NAME).read_text())["jobs"]
    assert {k: j["status"] for k, j in after.items()} == {k: "done" if k in before else "skipped" for k in jobs}
    for job, kept in before.items():
        assert "resume" in (out / job / "log.txt").read_text().lower()
        resumed = torch.load(out / job / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]
        original = torch.load(io.BytesIO(kept), weights_only=True)["state_dict"]
        assert resumed.keys() == original.keys()
        assert all(torch.equal(resumed[k], original[k]) for k in original), job


# ------------------------------------------------------------------------------------------------ refusals
def teacher_copy(toy_pipeline, tmp_path, edit=None):
    _, out, jobs = toy_pipeline
    folder = tmp_path / "teacher"
    shutil.copytree(out / job_of(jobs, "PromptSRC", "base2new_train"), folder)
    if edit:
        text = (folder / "config.yaml").read_text()
        (folder / "config.yaml").write_text(edit(text))
    return folder


def toy_config(folder, **fields):
    return PromptKD.make_config(**{"TEACHER_DIR": str(folder), "TEACHER_BACKBONE": "toy-ViT", "PROMPT_DEPTH_VISION": 3,
                                   **fields})


def test_a_good_teacher_loads_with_its_prompts(toy_pipeline, tmp_path):
    folder = teacher_copy(toy_pipeline, tmp_path)
    teacher = load_teacher(toy_config(folder), ["red circle", "blue square"])
    saved = torch.load(folder / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]
    assert saved.keys() == teacher.prompt_learner.state_dict().keys()
    assert all(torch.equal(v, teacher.prompt_learner.state_dict()[k]) for k, v in saved.items())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


@pytest.mark.parametrize("case,expected", [
    ("empty", "TEACHER_DIR is empty"),
    ("missing folder", "no such folder"),
    ("not a run", "not a run folder"),
    ("other trainer", "a CoOp run, not a PromptSRC teacher"),
    ("backbone", "its backbone is toy-ViT, TRAINER.PROMPTKD.TEACHER_BACKBONE asks for ViT-L/14"),
    ("dataset", "a teacher of ToyWorld, this student needs one of ImageNet"),
    ("depth", "its vision prompt depth is 3, TRAINER.PROMPTKD.TEACHER_DEPTH_VISION asks for 9"),
    ("unfinished", "has not finished"),
    ("no checkpoint", "is missing"),
])
def test_wrong_teachers_are_refused_in_one_line(toy_pipeline, tmp_path, case, expected):
    folder = teacher_copy(toy_pipeline, tmp_path, (lambda t: t.replace("NAME: PromptSRC", "NAME: CoOp"))
                          if case == "other trainer" else None)
    fields, dataset = {}, "ToyWorld"
    if case == "empty":
        folder = ""
    elif case == "missing folder":
        folder = tmp_path / "nowhere"
    elif case == "not a run":
        (folder / "config.yaml").unlink()
    elif case == "backbone":
        fields["TEACHER_BACKBONE"] = "ViT-L/14"
    elif case == "dataset":
        dataset = "ImageNet"
    elif case == "depth":
        fields["TEACHER_DEPTH_VISION"] = 9
    elif case == "unfinished":
        (folder / record.RESULT_FILE).unlink()
    elif case == "no checkpoint":
        (folder / "prompt_learner" / "model.pth.tar-2").unlink()
    config = toy_config(folder, **fields)
    with pytest.raises(ConfigError) as error:
        check_teacher_run(config, dataset)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_that_does_not_fit_is_refused_not_loaded_with_random_prompts(toy_pipeline, tmp_path):
    folder = teacher_copy(toy_pipeline, tmp_path, lambda t: t.replace("PROMPT_DEPTH_VISION: 3", "PROMPT_DEPTH_VISION: 2"))
    with pytest.raises(ConfigError, match="does not fit a PromptSRC teacher") as error:
        load_teacher(toy_config(folder), ["red circle"])
    assert "\n" not in str(error.value)


def test_train_py_refuses_a_wrong_teacher_before_loading_anything(toy_pipeline, tmp_path):
    import train

    data_root, out, jobs = toy_pipeline
    job = layout.build_job("base2new_train_all", "PromptKD", "toy_world", 1, 0, cfg="toy_demo",
                           data_root=str(data_root), output_root=str(tmp_path), opts=["TRAINER.PROMPTKD.TEACHER_DIR",
                                                                                      str(tmp_path / "nowhere")])
    start = next(i for i, a in enumerate(job.argv) if a.endswith("train.py")) + 1
    with pytest.raises(ConfigError, match="no such folder"):
        train.main(train.get_parser().parse_args(job.argv[start:]))
    # refused by the input checks, before CLIP loads or a run folder is left behind
    assert not (tmp_path / job.id).exists()


def test_the_releases_selection_on_base_test_images(toy_pipeline, tmp_path):
    """MODEL_SELECTION best_base_test (the release's): each epoch's accuracy on the base classes' test images picks
    model-best.pth.tar, which the final test and --eval-only use; the selection accuracy is the base-half
    evaluation's own number for that checkpoint. Without TEST.FINAL_MODEL best_val it is refused in one line."""
    import train

    data_root, out, jobs = toy_pipeline
    teacher = out / job_of(jobs, "PromptSRC", "base2new_train")
    official = ["TRAINER.PROMPTKD.MODEL_SELECTION", "best_base_test", "TEST.FINAL_MODEL", "best_val"]

    def run(stage, opts, model_dir=None):
        job = layout.build_job(stage, "PromptKD", "toy_world", 1, 0, cfg="toy_demo", data_root=str(data_root),
                               output_root=str(tmp_path), opts=TOY + ["TRAINER.PROMPTKD.TEACHER_DIR", str(teacher)] + opts)
        start = next(i for i, a in enumerate(job.argv) if a.endswith("train.py")) + 1
        trainer = train.main(train.get_parser().parse_args(job.argv[start:]))
        return trainer, (tmp_path / job.id / "log.txt").read_text(), tmp_path / job.id

    with pytest.raises(ConfigError, match="MODEL_SELECTION='best_base_test' with TEST.FINAL_MODEL='last_step'"):
        run("base2new_train_all", official[:2])
    _, log, run_dir = run("base2new_train_all", official)
    selections = [float(v) for v in __import__("re").findall(r"\* selection accuracy: ([\d.]+)%", log)]
    assert len(selections) == 2 and "Deploy the model with the best val performance" in log
    best = torch.load(run_dir / "prompt_learner" / "model-best.pth.tar", weights_only=True)
    assert round(best["val_result"], 1) == max(selections)
    evaluation, log, _ = run("base2new_test_base", official)
    assert "loading model-best.pth.tar instead of epoch 2" in log
    assert evaluation.loaded_epoch == best["epoch"] and evaluation.test_result == pytest.approx(best["val_result"])


def test_the_stage_graph_of_both_protocols(tmp_path):
    """base-to-new: per dataset one ViT-L/14 PromptSRC teacher (seed 1) for every student seed; cross-dataset: one
    ImageNet teacher for every target's student; the student's own options never reach the teacher."""
    jobs = sweep.expand_grid(["PromptKD"], ["base2new", "xd"], ["dtd"], seeds=[1, 2], output_root=str(tmp_path),
                             opts=["TRAINER.PROMPTKD.KD_WEIGHT", "50.0", "OPTIM.MAX_EPOCH", "3"])
    by_stage = {}
    for job in jobs:
        by_stage.setdefault((job.trainer, job.stage), []).append(job)
    b2n_teacher, = by_stage[("PromptSRC", "base2new_train")]
    xd_teacher, = by_stage[("PromptSRC", "xd_train")]
    assert (b2n_teacher.dataset, xd_teacher.dataset) == ("dtd", "imagenet")
    assert {b2n_teacher.cfg, xd_teacher.cfg} == {"vit_l14_c2_ep20_batch8_4+4ctx"} and b2n_teacher.seed == 1
    for teacher in (b2n_teacher, xd_teacher):
        assert "OPTIM.MAX_EPOCH" in teacher.argv and "TRAINER.PROMPTKD.KD_WEIGHT" not in teacher.argv
    students = by_stage[("PromptKD", "base2new_train_all")] + by_stage[("PromptKD", "xd_train_target")]
    assert len(students) == 4 and all(job.shots == 0 for job in students)
    for job in students:
        teacher = b2n_teacher if job.stage == "base2new_train_all" else xd_teacher
        assert job.depends_on == [teacher.id] and jobs.index(teacher) < jobs.index(job)
        assert job.argv[job.argv.index("TRAINER.PROMPTKD.TEACHER_DIR") + 1] == teacher.output_dir
    for job in by_stage[("PromptKD", "base2new_test_new")]:
        assert job.depends_on[0].startswith("base2new/train_all/") and "--eval-only" in job.argv
    with pytest.raises(ValueError, match="base2new and xd protocols only"):
        sweep.expand_grid(["PromptKD"], ["fewshot"], ["dtd"], seeds=[1])
