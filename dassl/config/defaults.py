"""Default config: the keys of docs/ENGINE.md (Dassl's names and defaults) plus a few upstream extras."""
from .node import CfgNode as CN

_C = CN()

_C.VERSION = 1
_C.OUTPUT_DIR = "./output"
_C.RESUME = ""
_C.SEED = -1  # negative: a random seed
_C.USE_CUDA = True
# deterministic kernels (mmpt.determinism; train.py --deterministic sets it): repeatable reruns, at a cost
_C.DETERMINISTIC = False
_C.VERBOSE = True

_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
_C.INPUT.INTERPOLATION = "bilinear"
_C.INPUT.TRANSFORMS = ()
_C.INPUT.NO_TRANSFORM = False
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
_C.INPUT.CROP_PADDING = 4
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
_C.INPUT.RANDAUGMENT_N = 2
_C.INPUT.RANDAUGMENT_M = 10
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
_C.INPUT.RGS_P = 0.2
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

_C.DATASET = CN()
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
_C.DATASET.NUM_LABELED = -1
_C.DATASET.NUM_SHOTS = -1
_C.DATASET.VAL_PERCENT = 0.1
_C.DATASET.SUBSAMPLE_CLASSES = "all"  # all / base / new (CoCoOp's base-to-new protocol)
_C.DATASET.ALL_AS_UNLABELED = False
# OwnDataset (datasets/own.py, docs/DATASETS.md): a user's images described by the dataset yaml alone
_C.DATASET.OWN = CN()
_C.DATASET.OWN.DIR = ""  # the dataset folder: absolute, or relative to DATASET.ROOT
_C.DATASET.OWN.LIST = ""  # "" = an image folder; else a CSV / JSON list (path,label[,split]) inside DIR
_C.DATASET.OWN.CLASSNAMES = ""  # optional class-name file inside DIR (`key class name` per line)
_C.DATASET.OWN.SPLIT = (0.5, 0.2)  # train / val fraction per class when no split is given (CoOp's 50/20/30)
_C.DATASET.OWN.SPLIT_SEED = 1  # the seed of that split (independent of the run's SEED)
_C.DATASET.OWN.TEST_ONLY = False  # every image is a test image (a cross-dataset / DG target)
_C.DATASET.OWN.MATCH_CLASSNAMES = ""  # a DG target: match class names to "imagenet" or a class-name file

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.K_TRANSFORMS = 1
_C.DATALOADER.RETURN_IMG0 = False
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
_C.DATALOADER.TRAIN_X.N_INS = 16
_C.DATALOADER.TRAIN_U = CN()
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32

_C.MODEL = CN()
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = ""
_C.MODEL.BACKBONE.PRETRAINED = True
_C.MODEL.BACKBONE.PATH = ""  # ours: a local checkpoint file for the backbone
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0

_C.OPTIM = CN()
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.RMSPROP_ALPHA = 0.99
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
# the epsilon of every optimizer that has one (adam, amsgrad, adamw, radam, rmsprop); 1e-8 is torch's default
# for all of them, so runs that leave it alone are unchanged. sgd has none.
_C.OPTIM.EPS = 1e-8
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
_C.OPTIM.LR_SCHEDULER = "single_step"
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
_C.OPTIM.WARMUP_EPOCH = -1
_C.OPTIM.WARMUP_TYPE = "linear"  # constant / linear
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
_C.OPTIM.WARMUP_RECOUNT = True

_C.TRAIN = CN()
# 0: keep only the resumable `checkpoint` (saved every epoch) and the final model;
# k > 0: additionally keep model.pth.tar-<epoch> every k epochs (upstream semantics)
_C.TRAIN.CHECKPOINT_FREQ = 0
_C.TRAIN.PRINT_FREQ = 10
_C.TRAIN.COUNT_ITER = "train_x"

_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
_C.TEST.COMPUTE_CMAT = False
_C.TEST.NO_TEST = False
_C.TEST.SPLIT = "test"
_C.TEST.FINAL_MODEL = "last_step"  # last_step / best_val

_C.TRAINER = CN()
_C.TRAINER.NAME = ""
