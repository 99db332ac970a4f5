"""Options every prompt trainer shares; PromptTrainer.config_node adds them to each method's TRAINER.<NODE>."""
from mmpt.precision import DEFAULT_PRECISION


def add_prompt_trainer_options(node):
    """Add the shared options to the yacs node `node` (e.g. cfg.TRAINER.COOP) and return it."""
    node.PREC = DEFAULT_PRECISION  # "amp" (bf16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16" | "fp16" (+ GradScaler)
    node.TRUNCATE_TEXT = True  # text tower on max EOT + 1 tokens instead of 77 (exact under the causal mask)
    node.CACHE_TEXT_FEATURES = True  # class text features once per evaluation (unless text depends on the image)
    node.TEXT_CHUNK_SIZE = 0  # 0 = all classes in one text pass; k = k classes at a time (memory)
    node.TEXT_CHECKPOINT = False  # activation checkpointing in the text tower (memory for compute)
    return node
