"""PromptKD: unsupervised prompt distillation for vision-language models (Li et al., CVPR 2024). docs/PROMPTKD.md.

Two stages. Stage 1 is the project's PromptSRC trained on any backbone (the release: ViT-L/14, 16 labelled shots
of the base classes, or of ImageNet for cross-dataset): the teacher. Stage 2 is this trainer: a student with deep
visual prompts (VPT, 4 tokens x 9 layers) and a projector (1x1 conv -> BatchNorm -> ReLU -> 1x1 conv, student
width -> teacher width) trained ONLY by KL(teacher || student) on the logits over the teacher's text features, on
unlabeled training images of every class of the dataset (transductive: the new classes' images are seen); it is
tested with the teacher's text features (the student's own text tower never runs).

The teacher is loaded by reference: TEACHER_DIR names the run folder of a finished PromptSRC run (the sweep and
the scripts fill it from TEACHER_CONFIG / TEACHER_SEED); its recorded config gives the backbone and the prompt
shapes, its last checkpoint the prompts. A folder that is missing, unfinished, of another trainer, backbone,
dataset or prompt depth, or a checkpoint that does not fit, is refused in one line before the student is built;
the teacher is never used with random prompts. The teacher is frozen, in eval mode and not in `prompt_learner`:
the student's checkpoints hold the visual prompts and the projector only. Its text features are computed once
(the teacher is frozen: exact), its image pass runs under no_grad on every training batch.
"""
import math
import os.path as osp
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError, distributed
from mmpt.config import PromptOptions
from mmpt.experiments import record
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, check_depth, layer_counts, random_prompts, vision_width
from mmpt.run_folder import recorded_config
from mmpt.sentences import template_sentences
from mmpt.templates import DEFAULT_TEMPLATE

TEACHER_TRAINER = "PromptSRC"  # stage 1: the project's PromptSRC (trainers/promptsrc.py)
MODEL_SELECTIONS = {
    "last": "the last epoch (no test data seen before the final test)",
    "best_base_test": "the epoch with the best accuracy on the base classes' TEST images (the release's choice, "
                      "base-to-new)",
    "best_test": "the epoch with the best accuracy on the TEST images (the release's choice, cross-dataset)",
}


@dataclass
class PromptKDConfig(PromptOptions):
    """Defaults = the release's base-to-new student (configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml)."""

    N_CTX_VISION: int = 4  # visual prompt tokens per layer
    PROMPT_DEPTH_VISION: int = 9  # J_v: vision layers 0..J_v-1 receive fresh prompts (cross-dataset: 3)
    PROJECTOR_HIDDEN: int = 0  # hidden width of the projector; 0 = the teacher's width (the release: 768)
    TEMPERATURE: float = 1.0
    KD_WEIGHT: float = 1000.0  # weight of T^2 * KL / (B * C) (the release: 200 on Aircraft, Flowers, DTD)
    TEACHER_DIR: str = ""  # the teacher's run folder (a finished PromptSRC run); the layout fills it
    TEACHER_CONFIG: str = "vit_l14_c2_ep20_batch8_4+4ctx"  # the PromptSRC config the layout trains the teacher with
    TEACHER_SEED: int = 1  # the teacher run's seed: one teacher serves every student seed (the release)
    TEACHER_BACKBONE: str = "ViT-L/14"  # the backbone the teacher run must have used
    TEACHER_BACKBONE_PATH: str = ""  # its weights ("": the teacher run's MODEL.BACKBONE.PATH, else clip's cache)
    TEACHER_DATASET: str = ""  # the teacher run's DATASET.NAME ("": the student's; cross-dataset: "ImageNet")
    TEACHER_DEPTH_TEXT: int = 0  # required prompt depths of the teacher run (0: whatever it used)
    TEACHER_DEPTH_VISION: int = 0
    MODEL_SELECTION: str = "last"  # see MODEL_SELECTIONS; not "last" needs TEST.FINAL_MODEL "best_val"

    def validate(self):
        super().validate()
        for name in ("N_CTX_VISION", "TEACHER_SEED"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected an int >= 1")
        for name in ("PROJECTOR_HIDDEN", "TEACHER_DEPTH_TEXT", "TEACHER_DEPTH_VISION"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected an int >= 0")
        if not self.TEMPERATURE > 0:
            raise ConfigError(f"TEMPERATURE={self.TEMPERATURE!r}: expected a number > 0")
        if self.MODEL_SELECTION not in MODEL_SELECTIONS:
            raise ConfigError(f"MODEL_SELECTION={self.MODEL_SELECTION!r}: expected one of {sorted(MODEL_SELECTIONS)}")


# ------------------------------------------------------------------------------------------------ the teacher
def teacher_checkpoint(folder, recorded):
    """The checkpoint a finished PromptSRC run tested with: model-best.pth.tar under TEST.FINAL_MODEL best_val,
    else model.pth.tar-<OPTIM.MAX_EPOCH> (after Gaussian prompt aggregation)."""
    learner = osp.join(folder, "prompt_learner")
    if recorded.get("TEST.FINAL_MODEL") == "best_val":
        return osp.join(learner, "model-best.pth.tar")
    return osp.join(learner, f"model.pth.tar-{recorded.get('OPTIM.MAX_EPOCH')}")


def check_teacher_run(config, dataset=None, key="TRAINER.PROMPTKD"):
    """(recorded config {dotted key: value}, checkpoint path) of the teacher run TEACHER_DIR, or a one-line
    ConfigError saying what is wrong with it (`dataset`: the student's DATASET.NAME, checked when given)."""
    folder = config.TEACHER_DIR
    where = f"{key}.TEACHER_DIR={folder!r}"
    if not folder:
        raise ConfigError(f"{key}.TEACHER_DIR is empty: name the run folder of a finished {TEACHER_TRAINER} run "
                          f"(stage 1; the sweep and scripts/promptkd train it first and fill this in)")
    if not osp.isdir(folder):
        raise ConfigError(f"{where}: no such folder; train the teacher first (stage 1: {TEACHER_TRAINER} with "
                          f"config {config.TEACHER_CONFIG})")
    recorded = recorded_config(folder)
    if recorded is None:
        raise ConfigError(f"{where}: not a run folder (no config.yaml): name a {TEACHER_TRAINER} run's output folder")
    trainer = recorded.get("TRAINER.NAME")
    if trainer != TEACHER_TRAINER:
        raise ConfigError(f"{where}: a {trainer} run, not a {TEACHER_TRAINER} teacher")
    backbone = recorded.get("MODEL.BACKBONE.NAME")
    if backbone != config.TEACHER_BACKBONE:
        raise ConfigError(f"{where}: its backbone is {backbone}, {key}.TEACHER_BACKBONE asks for "
                          f"{config.TEACHER_BACKBONE}")
    wanted = config.TEACHER_DATASET or dataset
    if wanted is not None and recorded.get("DATASET.NAME") != wanted:
        raise ConfigError(f"{where}: a teacher of {recorded.get('DATASET.NAME')}, this student needs one of {wanted}"
                          + ("" if config.TEACHER_DATASET else f" (or set {key}.TEACHER_DATASET)"))
    node = f"TRAINER.{TEACHER_TRAINER.upper()}"
    for tower in ("TEXT", "VISION"):
        required, used = getattr(config, f"TEACHER_DEPTH_{tower}"), recorded.get(f"{node}.PROMPT_DEPTH_{tower}")
        if required and used != required:
            raise ConfigError(f"{where}: its {tower.lower()} prompt depth is {used}, {key}.TEACHER_DEPTH_{tower} "
                              f"asks for {required}")
    try:
        finished = record.is_finished(folder)
    except Exception as error:  # noqa: BLE001  a corrupt record: its own one-line message
        raise ConfigError(f"{where}: {error}") from None
    if not finished:
        raise ConfigError(f"{where}: the teacher run has not finished (no result.json): rerun stage 1 to finish it")
    path = teacher_checkpoint(folder, recorded)
    if not osp.isfile(path):
        raise ConfigError(f"{where}: its checkpoint {path} is missing (deleted?): rerun stage 1 into a new folder")
    return recorded, path


def teacher_fields(recorded, method):
    """The teacher method's config fields as its run recorded them."""
    node = f"TRAINER.{method.cfg_node}."
    known = set(method.config_node())
    return {k[len(node):]: v for k, v in recorded.items() if k.startswith(node) and k[len(node):] in known}


def load_teacher(config, classnames, key="TRAINER.PROMPTKD"):
    """The frozen PromptSRC teacher of run TEACHER_DIR on `classnames`, its prompts from the run's checkpoint
    (every prompt tensor required, shapes checked)."""
    from dassl.utils import load_checkpoint
    from mmpt.clip_backbone import load_clip_by_name
    from mmpt.methods import get_method

    recorded, path = check_teacher_run(config, key=key)
    method = get_method(TEACHER_TRAINER)
    fields = teacher_fields(recorded, method)
    fields["PREC"] = config.PREC  # the teacher runs under the student's precision policy
    clip_model = load_clip_by_name(recorded["MODEL.BACKBONE.NAME"],
                                   path=config.TEACHER_BACKBONE_PATH or recorded.get("MODEL.BACKBONE.PATH") or "")
    teacher = method.build_method_model(clip_model, classnames, method.make_config(**fields))
    try:
        state = load_checkpoint(path)["state_dict"]
        teacher.prompt_learner.load_state_dict(state)
    except Exception as error:  # noqa: BLE001  shapes / keys / unreadable: one line naming the file
        first = " ".join(line.strip() for line in str(error).strip().splitlines()[:2])
        raise ConfigError(f"{key}.TEACHER_DIR: {path} does not fit a {TEACHER_TRAINER} teacher of its recorded "
                          f"config: {first}") from None
    return teacher.requires_grad_(False).eval()


# ------------------------------------------------------------------------------------------------ the student
def joint_width(model):
    """The width of the joint image-text space of a CLIP or a PromptedCLIP (its text projection's output)."""
    return getattr(model, "text_encoder", model).text_projection.shape[1]


class FeatureProjector(nn.Module):
    """The release's projector on [B, E] features: a 1x1 conv E -> H, BatchNorm2d(H), ReLU, a 1x1 conv H -> E'
    (the release's layers and initialisation, on a [B, E, 1, 1] map)."""

    def __init__(self, width, hidden, out_width):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(width, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                                    nn.Conv2d(hidden, out_width, 1))

    def forward(self, features):
        return self.layers(features[:, :, None, None]).flatten(1)


class PromptKDPromptLearner(nn.Module):
    """visual_ctx [J_v, n, d_v] (the release's image_encoder.VPT and VPT_shallow) and projector
    (VPT_image_trans)."""

    def __init__(self, n_ctx, depth, d_vision, width, hidden, teacher_width):
        super().__init__()
        self.visual_ctx = random_prompts(depth, n_ctx, d_vision)
        self.projector = FeatureProjector(width, hidden or teacher_width, teacher_width)


class PromptKDCLIP(PromptedCLIP):
    """The student: deep visual prompts, the projector as image head, the teacher's class features.
    `teacher`: a frozen teacher model (a PromptedCLIP) instead of loading TEACHER_DIR's."""

    def __init__(self, clip_model, classnames, config, teacher=None):
        check_depth("PROMPT_DEPTH_VISION", config.PROMPT_DEPTH_VISION, layer_counts(clip_model)[1])
        # the sentences are never encoded: the class features are the teacher's
        super().__init__(clip_model, template_sentences(DEFAULT_TEMPLATE, classnames))
        self.teacher = teacher if teacher is not None else load_teacher(config, classnames)
        self.teacher.requires_grad_(False).eval()
        teacher_width = joint_width(self.teacher)
        self.prompt_learner = PromptKDPromptLearner(config.N_CTX_VISION, config.PROMPT_DEPTH_VISION,
                                                    vision_width(clip_model), joint_width(clip_model),
                                                    config.PROJECTOR_HIDDEN, teacher_width)
        self.temperature = config.TEMPERATURE
        self.cached_teacher_features = None

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()  # frozen: its own mode never changes
        return self

    def teacher_class_features(self):
        """[C, E_t] the teacher's normalised class features, fp32: computed on first use and kept (the teacher
        is frozen, so once is exact), never saved."""
        cached = self.cached_teacher_features
        if cached is None or cached.device != self.logit_scale.device:
            with torch.no_grad():
                cached = self.teacher.class_features().float()
            self.cached_teacher_features = cached
        return cached

    def teacher_logits(self, images):
        """[B, C] the teacher's logits on `images` (fp32, no gradient)."""
        with torch.no_grad():
            return self.teacher(images, class_features=self.teacher_class_features()).float()

    def compute_prompts(self):
        return Prompts(vision=list(self.prompt_learner.visual_ctx.unbind(0)),
                       image_head=self.prompt_learner.projector, class_features=self.teacher_class_features())


def distillation_loss(student_logits, teacher_logits, temperature):
    """T^2 * KL(softmax(q_t / T) || softmax(q_s / T)) summed over the batch and the classes, divided by B * C
    (the release's reduction), in fp32; the gradient flows through the student's logits only."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.softmax(teacher_logits.float().detach() / temperature, dim=-1)
    return F.kl_div(log_student, teacher, reduction="sum") * temperature ** 2 / student_logits.numel()


@TRAINER_REGISTRY.register()
class PromptKD(PromptTrainer):
    cfg_node = "PROMPTKD"
    scripts_folder = "promptkd"
    default_configs = {"b2n": "vit_b16_c2_ep20_batch8_4+4ctx", "xd": "vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets"}
    # the release's KD weights (base2new_train.sh): 200 on these three, 1000 (the config's) elsewhere
    dataset_opts = {"b2n": {dataset: {"KD_WEIGHT": 200.0} for dataset in ("fgvc_aircraft", "oxford_flowers", "dtd")}}
    config_class = PromptKDConfig
    model_class = PromptKDCLIP
    summary = ("deep visual prompts + projector distilled (KL only, unlabeled images of all classes) from a frozen "
               "PromptSRC teacher; tested with the teacher's text features")
    parameter_counts = {"vit_b16_c2_ep20_batch8_4+4ctx": 1_013_760,
                        "vit_b16_c2_ep20_batch8_4+4ctx_clean": 1_013_760,
                        "vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets": 995_328,
                        "vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets_clean": 995_328}
    text_is_constant = True  # the class features are the frozen teacher's
    cross_entropy_weight = 0  # no label enters the loss
    loss_weights = {"loss_kd": "KD_WEIGHT"}
    # the protocol: trains on the unlabeled training images of every class it is tested on (base-to-new: base and
    # new; cross-dataset: each target), from a teacher run (stage 1) named by TEACHER_DIR
    # the records' student (3 layers, joint width 48) and a finished teacher run of random-tiny-ViT (width 64)
    record_variants = {"PromptKD": dict(TEACHER_DIR="tests/data/promptkd_teacher", TEACHER_BACKBONE="random-tiny-ViT",
                                        N_CTX_VISION=2, PROMPT_DEPTH_VISION=2, PROJECTOR_HIDDEN=16,
                                        TEMPERATURE=2.0, KD_WEIGHT=3.0)}
    transductive = True
    track = "distillation"
    teacher_field = "TEACHER_DIR"

    @classmethod
    def teacher_run(cls, node):
        """(trainer, config name, seed) of the stage-1 run the layout trains before this one."""
        return TEACHER_TRAINER, node.TEACHER_CONFIG, node.TEACHER_SEED

    @classmethod
    def track_note(cls, recorded):
        node = f"TRAINER.{cls.cfg_node}."
        return (f"teacher {TEACHER_TRAINER} at {recorded.get(node + 'TEACHER_BACKBONE')}, model selection "
                f"{recorded.get(node + 'MODEL_SELECTION')}")

    @classmethod
    def training_outputs(cls, model, images, labels, class_features=None):
        """The student's pass plus the frozen teacher's logits on the same augmented batch (no gradient)."""
        outputs = super().training_outputs(model, images, labels, class_features)
        outputs.extra["teacher_logits"] = model.teacher_logits(images)
        return outputs

    @classmethod
    def loss_terms(cls, model, outputs):
        return {"loss_kd": distillation_loss(outputs.logits, outputs.extra["teacher_logits"], model.temperature)}

    @classmethod
    def parameter_breakdown(cls, model):
        learner = model.prompt_learner
        return [("visual prompts", learner.visual_ctx.numel()),
                ("projector", sum(p.numel() for p in learner.projector.parameters()))]

    # ---------------------------------------------------------------- checks before anything long
    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        config = self.config_from_node(self.trainer_cfg(cfg))
        selects = config.MODEL_SELECTION != "last"
        if selects != (cfg.TEST.FINAL_MODEL == "best_val"):
            raise ConfigError(f"{self.trainer_key}.MODEL_SELECTION={config.MODEL_SELECTION!r} with TEST.FINAL_MODEL="
                              f"{cfg.TEST.FINAL_MODEL!r}: 'last' goes with 'last_step', the selections on test images "
                              f"with 'best_val'")
        check_teacher_run(config, cfg.DATASET.NAME, self.trainer_key)

    # ---------------------------------------------------------------- the release's model selection (optional)
    def test(self, split=None):
        """split "val" (the engine's per-epoch selection under TEST.FINAL_MODEL best_val): MODEL_SELECTION's test
        images, the release's choice; anything else: the engine's evaluation."""
        if split != "val":
            return super().test(split)
        return self.selection_accuracy()

    @torch.no_grad()
    def selection_accuracy(self):
        """Accuracy (%) on the test images of the base classes (labels < ceil(C / 2), logits over those classes'
        features: best_base_test) or of every class (best_test)."""
        self.set_model_mode("eval")
        n_classes = self.dm.num_classes
        kept = math.ceil(n_classes / 2) if self.config.MODEL_SELECTION == "best_base_test" else n_classes
        what = "base-class test images" if kept < n_classes else "test images"
        print(f"Model selection ({self.config.MODEL_SELECTION}): evaluate on the {what}")
        with self.precision.autocast():
            prompts = self.model.compute_prompts()
            class_features = self.model.class_features(prompts)[:kept]
        self.evaluator.reset()
        for batch in self.test_loader:  # distributed: each rank its shard, gathered below
            images, labels = self.parse_batch_test(batch)
            keep = labels < kept
            if keep.any():
                with self.precision.autocast():
                    logits = self.model(images[keep], prompts=prompts, class_features=class_features)
                self.evaluator.process(logits.float(), labels[keep])
        accuracy = distributed.evaluate_gathered(self.evaluator)["accuracy"]
        print(f"* selection accuracy: {accuracy:.1f}%")
        return accuracy

    def load_model(self, directory, epoch=None):
        """With a selection on test images, an evaluation loads the selected model (model-best.pth.tar)."""
        if directory and epoch is not None and self.config.MODEL_SELECTION != "last":
            print(f"MODEL_SELECTION {self.config.MODEL_SELECTION}: loading model-best.pth.tar instead of epoch {epoch}")
            epoch = None
        return super().load_model(directory, epoch)
