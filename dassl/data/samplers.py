"""Samplers by name (DATALOADER.*.SAMPLER)."""
import random
from collections import defaultdict

from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler
from dassl.utils.registry import ConfigError

AVAI_SAMPLERS = ["RandomSampler", "SequentialSampler", "RandomClassSampler"]


class RandomClassSampler(Sampler):
    """Each batch holds `n_ins` samples of each of batch_size // n_ins random classes (upstream Dassl)."""

    def __init__(self, data_source, batch_size, n_ins):
        if batch_size < n_ins:
            raise ConfigError(f"batch_size={batch_size} must be >= n_ins={n_ins}")
        self.batch_size, self.n_ins = batch_size, n_ins
        self.ncls_per_batch = batch_size // n_ins
        self.index_dic = defaultdict(list)
        for index, item in enumerate(data_source):
            self.index_dic[item.label].append(index)
        self.labels = list(self.index_dic.keys())
        if len(self.labels) < self.ncls_per_batch:
            raise ConfigError(f"{len(self.labels)} classes < {self.ncls_per_batch} classes per batch")
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        batch_idxs_dict = defaultdict(list)
        for label in self.labels:
            idxs = list(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = random.choices(idxs, k=self.n_ins)
            random.shuffle(idxs)
            batch = []
            for idx in idxs:
                batch.append(idx)
                if len(batch) == self.n_ins:
                    batch_idxs_dict[label].append(batch)
                    batch = []
        avai_labels = list(self.labels)
        final_idxs = []
        while len(avai_labels) >= self.ncls_per_batch:
            for label in random.sample(avai_labels, self.ncls_per_batch):
                final_idxs.extend(batch_idxs_dict[label].pop(0))
                if not batch_idxs_dict[label]:
                    avai_labels.remove(label)
        return iter(final_idxs)

    def __len__(self):
        return self.length


def build_sampler(sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=16):
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins)
    raise ConfigError(f"Unknown sampler '{sampler_type}'; available: {AVAI_SAMPLERS}")
