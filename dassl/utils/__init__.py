from dassl.errors import ConfigError, MissingFileError, RunError
from .registry import Registry, UnknownNameError, check_availability
from .logger import setup_logger, Logger
from .tools import (
    set_random_seed, collect_env_info, mkdir_if_missing, check_isfile, listdir_nohidden,
    read_json, write_json, read_image, ImageReadError, tolist_if_not, get_random_rng_state, set_random_rng_state,
    get_most_similar_str_to_a_from_b, available_cpus, capped_worker_count,
)
from .torchtools import (
    save_checkpoint, load_checkpoint, resume_from_checkpoint, load_pretrained_weights,
    count_num_param, atomic_torch_save, atomic_write, remove_temp_files, restore_checkpoint, open_all_layers,
    open_specified_layers,
)
from .meters import AverageMeter, MetricMeter
