"""KgCoOp: Knowledge-guided Context Optimization (Yao, Zhang, Xu; CVPR 2023).

CoOp's prompt (a shared shallow text context, "a photo of a" = 4 tokens, class name at the end; plain CLIP on
the image side) trained with one more loss term: each class's prompted text feature t_c is kept close, in
cosine, to the frozen CLIP feature t0_c of the dataset's hand-written prompt ("a photo of a {}, a type of pet."):

    L = CE(logits, y) + W * (1 - mean_c cos(t_c, t0_c)),   W = 8 in every published run.

The model is CoOp's; t_c are the class features of its one forward path, computed once per step and shared by
the logits and the term. t0 is computed once per class set (on first use, so an evaluation never computes it),
in fp32 with the frozen CLIP the model already holds, and is not saved in checkpoints. Evaluation is CoOp's.
"""
import torch
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY
from dassl.metrics import compute_accuracy
from dassl.utils import ConfigError
from mmpt.prompt_trainer import PromptTrainer
from mmpt.sentences import CLASS_POSITIONS, check_positive, template_sentences
from mmpt.templates import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE

from trainers.coop import CoOp, CoOpCLIP

# KgCoOp's hand-written templates are CoOp's except for DTD (its release uses "a photo of a {}, a type of
# texture." where CoOp uses "{} texture.")
KGCOOP_TEMPLATES = {**CUSTOM_TEMPLATES, "DescribableTextures": "a photo of a {}, a type of texture."}
COSINE_EPS = 1e-7  # the release's nn.CosineSimilarity(dim=1, eps=1e-07)
# modules the release builds in its prompt learner but never uses; they are in its checkpoints, not in ours
RELEASE_UNUSED_MODULES = ("bias_vectors", "meta_net")


def dataset_template(dataset_name):
    """The dataset's KgCoOp template; "a photo of a {}." for a dataset outside the table."""
    if dataset_name in KGCOOP_TEMPLATES:
        return KGCOOP_TEMPLATES[dataset_name]
    # the release raises KeyError here; a dataset of our own gets the generic template and says so
    print(f"KgCoOp: no hand-written template for dataset {dataset_name!r}: using {DEFAULT_TEMPLATE!r} "
          f"(set TRAINER.KGCOOP.TEMPLATE to choose one)")
    return DEFAULT_TEMPLATE


class KgCoOpCLIP(CoOpCLIP):
    """CoOp's model (prompts and forward path unchanged) plus the frozen hand-written class features."""

    def __init__(self, clip_model, classnames, node):
        super().__init__(clip_model, classnames, node)
        self.template = node.TEMPLATE or DEFAULT_TEMPLATE  # the trainer fills TEMPLATE in from the dataset
        self.hand_written = template_sentences(self.template, classnames, "TRAINER.KGCOOP.TEMPLATE")
        # t0 [C, E]: filled on first use; a buffer (moves with the model), not persistent (not in checkpoints)
        self.register_buffer("hand_written_features", None, persistent=False)

    def describe(self):
        return f"KgCoOp hand-written template: {self.template!r}"

    @torch.no_grad()
    def hand_written_class_features(self):
        """[C, E] fp32 L2-normalised frozen CLIP features of the hand-written prompts (computed once)."""
        if self.hand_written_features is None:
            token_ids = self.hand_written.token_ids
            with torch.autocast(token_ids.device.type, enabled=False):  # fp32 whatever PREC is
                self.hand_written_features = F.normalize(self.text_encoder(token_ids).float(), dim=-1)
        return self.hand_written_features

    def knowledge_guided_loss(self, class_features):
        """1 - mean over classes of cos(t_c, t0_c), in fp32; `class_features` [C, E] are the prompted ones."""
        similarity = F.cosine_similarity(class_features.float(), self.hand_written_class_features(), dim=-1,
                                         eps=COSINE_EPS)
        return 1.0 - similarity.mean()


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTrainer):
    cfg_node = "KGCOOP"
    scripts_folder = "kgcoop"
    # the release trains every protocol with its one config (100 epochs, batch 128)
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), "vit_b16_ep100_ctxv1")
    model_class = KgCoOpCLIP

    @staticmethod
    def add_config(node):
        """CoOp's keys with the published defaults, plus W and TEMPLATE."""
        CoOp.add_config(node)
        node.N_CTX = 4  # ignored when CTX_INIT is given
        node.CTX_INIT = "a photo of a"  # "" = N_CTX random tokens, N(0, 0.02)
        node.W = 8.0  # weight of the knowledge-guided term (8.0 in every published run)
        node.TEMPLATE = ""  # hand-written prompt with one "{}"; "" = the dataset's (KGCOOP_TEMPLATES)

    @classmethod
    def check_node(cls, node):
        """KgCoOp's own values, each a one-line ConfigError naming its TRAINER.KGCOOP key (checked before
        CoOp's model, whose own errors would name TRAINER.COOP)."""
        super().check_node(node)
        if node.CLASS_TOKEN_POSITION not in CLASS_POSITIONS:
            raise ConfigError(f"TRAINER.KGCOOP.CLASS_TOKEN_POSITION={node.CLASS_TOKEN_POSITION!r}: "
                              f"expected one of {CLASS_POSITIONS}")
        if not node.CTX_INIT:
            check_positive("TRAINER.KGCOOP.N_CTX", node.N_CTX)
        if isinstance(node.W, bool) or not isinstance(node.W, (int, float)) or node.W < 0:
            raise ConfigError(f"TRAINER.KGCOOP.W={node.W!r}: expected a number >= 0")
        if node.TEMPLATE and not (isinstance(node.TEMPLATE, str) and node.TEMPLATE.count("{}") == 1):
            raise ConfigError(f"TRAINER.KGCOOP.TEMPLATE={node.TEMPLATE!r}: expected a sentence with one '{{}}' "
                              f"for the class name")

    def model_node(self, cfg):
        """TRAINER.KGCOOP with TEMPLATE filled in from DATASET.NAME when the config leaves it empty."""
        node = self.trainer_cfg(cfg)
        if node.TEMPLATE:
            return node
        node = node.clone()
        node.defrost()
        node.TEMPLATE = dataset_template(cfg.DATASET.NAME)
        return node

    def load_state_dict_into(self, name, state_dict, model_path):
        """The release's checkpoints load too: its unused modules' tensors are dropped."""
        state_dict = {key: value for key, value in state_dict.items()
                      if key.split(".")[0] not in RELEASE_UNUSED_MODULES}
        super().load_state_dict_into(name, state_dict, model_path)

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        model = self.model
        with self.precision.autocast():
            prompts = model.compute_prompts()
            class_features = model.class_features(prompts)  # once per step: the logits and the term share them
            logits = model(images, prompts=prompts, class_features=class_features)
        loss_ce = F.cross_entropy(logits.float(), labels)
        loss_kg = model.knowledge_guided_loss(class_features)
        loss = loss_ce + self.trainer_cfg().W * loss_kg
        self.backward_and_update(loss)
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "loss_ce": loss_ce.item(), "loss_kg": loss_kg.item(),
                "acc": compute_accuracy(logits.float(), labels)[0].item()}
