from .evaluator import EVALUATOR_REGISTRY, EvaluatorBase, Classification, build_evaluator
