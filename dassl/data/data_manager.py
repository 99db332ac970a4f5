"""DataManager, DatasetWrapper and build_data_loader (Dassl's API)."""
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset
from torchvision.transforms import Compose, Normalize, Resize, ToTensor

from dassl.utils import capped_worker_count, distributed, read_image

from .datasets import build_dataset
from .samplers import build_sampler
from .transforms import INTERPOLATION_MODES, build_transform
from dassl.utils.registry import ConfigError


def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64, n_domain=0,
                      n_ins=2, tfm=None, is_train=True, dataset_wrapper=None):
    """A DataLoader over `data_source` (a list of Datum) wrapped by `dataset_wrapper` (default DatasetWrapper).

    Training drops the last incomplete batch when the set holds at least one full batch. In a distributed run a
    training loader yields the global batches on every rank (the trainer keeps each rank's slice) and an
    evaluation loader yields this rank's contiguous shard, in order (its sampler_type is not used).
    """
    if not data_source:
        raise ConfigError(f"Cannot build a {'training' if is_train else 'test'} data loader: the data source is empty")
    if not is_train and distributed.get_world_size() > 1:  # each image evaluated once, on one rank
        sampler = distributed.ShardSampler(data_source)
    else:
        sampler = build_sampler(sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size,
                                n_domain=n_domain, n_ins=n_ins)
    dataset_wrapper = DatasetWrapper if dataset_wrapper is None else dataset_wrapper
    workers = capped_worker_count(cfg.DATALOADER.NUM_WORKERS)
    return DataLoader(
        dataset_wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
        # evaluation loaders keep their workers between evaluations; training loaders re-fork theirs each epoch
        # because a worker's seed is drawn from the main RNG when the epoch starts: that is what makes a resumed
        # run's augmentations equal an uninterrupted run's (persistent workers would carry their own RNG state)
        persistent_workers=workers > 0 and not is_train,
        # an evaluation loader draws its worker seed from its own generator, never from the global RNG: with
        # persistent workers it would draw once per run, so a resumed run's RNG (and data order) would drift
        generator=None if is_train else torch.Generator(),
    )


class DataManager:
    """Builds the dataset named by cfg.DATASET.NAME and its train_x / train_u / val / test loaders."""

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        dataset = build_dataset(cfg)
        tfm_train = build_transform(cfg, is_train=True) if custom_tfm_train is None else custom_tfm_train
        tfm_test = build_transform(cfg, is_train=False) if custom_tfm_test is None else custom_tfm_test

        def loader(loader_cfg, data_source, tfm, is_train):
            return build_data_loader(cfg, sampler_type=loader_cfg.SAMPLER, data_source=data_source,
                                     batch_size=loader_cfg.BATCH_SIZE, n_domain=getattr(loader_cfg, "N_DOMAIN", 0),
                                     n_ins=getattr(loader_cfg, "N_INS", 2), tfm=tfm, is_train=is_train,
                                     dataset_wrapper=dataset_wrapper)

        self.train_loader_x = loader(cfg.DATALOADER.TRAIN_X, dataset.train_x, tfm_train, True)
        self.train_loader_u = None
        if dataset.train_u:
            u_cfg = cfg.DATALOADER.TRAIN_X if cfg.DATALOADER.TRAIN_U.SAME_AS_X else cfg.DATALOADER.TRAIN_U
            self.train_loader_u = loader(u_cfg, dataset.train_u, tfm_train, True)
        self.val_loader = loader(cfg.DATALOADER.TEST, dataset.val, tfm_test, False) if dataset.val else None
        self.test_loader = loader(cfg.DATALOADER.TEST, dataset.test, tfm_test, False) if dataset.test else None

        self.dataset = dataset
        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        rows = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(["Source", str(list(cfg.DATASET.SOURCE_DOMAINS))])
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(["Target", str(list(cfg.DATASET.TARGET_DOMAINS))])
        rows.append(["# classes", f"{self.num_classes:,}"])
        rows.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            rows.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        if self.dataset.test:
            rows.append(["# test", f"{len(self.dataset.test):,}"])
        print(format_table(rows))


def format_table(rows):
    """A plain two-column text table (no tabulate dependency)."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    line = f"{'-' * (w0 + 2)}  {'-' * (w1 + 2)}"
    return "\n".join([line] + [f"  {a:<{w0}}    {b:<{w1}}" for a, b in rows] + [line])


class DatasetWrapper(TorchDataset):
    """Reads the image of a Datum and returns the batch dict: img, label, domain, impath, index (+ img0)."""

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform  # a transform, or a list/tuple of transforms (img, img2, ...)
        self.is_train = is_train
        # K_TRANSFORMS augmented views per image, training only
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise ConfigError("DATALOADER.K_TRANSFORMS > 1 needs a transform")
        interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
        to_tensor = [Resize(tuple(cfg.INPUT.SIZE), interpolation=interp_mode), ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = Compose(to_tensor)

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath)
        if self.transform is None:
            output["img"] = self.to_tensor(img0)
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform_image(self, tfm, img0):
        views = [tfm(img0) for _ in range(self.k_tfm)]
        return views[0] if len(views) == 1 else views
