"""Datum and DatasetBase (Dassl's API; the attribute names match upstream so old few-shot pickles load)."""
import os
import os.path as osp
import random
import tarfile
import zipfile
from collections import defaultdict

from dassl.utils.registry import ConfigError, MissingFileError



class Datum:
    """One sample: image path, integer label, domain index and class name."""

    def __init__(self, impath="", label=0, domain=0, classname=""):
        if not isinstance(impath, str):
            raise TypeError(f"Datum: impath must be a str, got {type(impath).__name__}: {impath!r}")
        if not osp.isfile(impath):
            raise MissingFileError(f"Datum: image file not found: {impath}")
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return f"Datum(impath={self._impath!r}, label={self._label}, domain={self._domain}, classname={self._classname!r})"


def classname_key(name):
    """What a prompt sees of a class name: CLIP's tokenizer lower-cases and collapses white space, and the
    prompt builders turn "_" into " "."""
    return " ".join(str(name).replace("_", " ").lower().split())


def check_classnames(classnames, source, allowed=()):
    """Refuse (one line, ConfigError) empty class names and names that read the same in a prompt."""
    empty = [label for label, name in enumerate(classnames) if not classname_key(name)]
    if empty:
        raise ConfigError(f"{source}: empty class name for label(s) {empty[:10]}; give every class a name")
    seen = defaultdict(list)
    for label, name in enumerate(classnames):
        seen[classname_key(name)].append((label, name))
    allowed = {classname_key(name) for name in allowed}
    clashes = [entries for key, entries in seen.items() if len(entries) > 1 and key not in allowed]
    if clashes:
        shown = "; ".join(" = ".join(f"{name!r} (label {label})" for label, name in entries) for entries in clashes[:3])
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise ConfigError(f"{source}: duplicate class names (identical in a prompt): {shown}{more}; "
                          "rename them (a class-name file, or the folder names)")


class DatasetBase:
    """A dataset = lists of Datum: train_x (labeled), train_u (unlabeled), val and test.

    `classnames`, `lab2cname` and `num_classes` are derived from train_x.
    """

    dataset_dir = ""  # the folder name under DATASET.ROOT
    domains = []  # the domain names (domain-generalisation datasets)
    # class names that occur twice in the dataset's official name list and are kept (the published numbers use
    # them); any other duplicate is refused
    official_duplicate_classnames = ()

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)
        check_classnames(self._classnames, type(self).__name__, self.official_duplicate_classnames)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        """Number of classes = largest label + 1."""
        if not data_source:
            return 0
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source):
        """({label: classname}, [classname sorted by label]) from a list of Datum."""
        if not data_source:
            return {}, []
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains):
        assert len(source_domains) > 0, "source_domains (DATASET.SOURCE_DOMAINS) is empty"
        assert len(target_domains) > 0, "target_domains (DATASET.TARGET_DOMAINS) is empty"
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains):
        for domain in input_domains:
            if domain not in self.domains:
                raise ConfigError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    def download_data(self, url, dst, from_gdrive=True):
        """Download `url` to `dst` (Google Drive through gdown) and extract zip / tar archives next to it."""
        if not osp.exists(osp.dirname(dst)):
            os.makedirs(osp.dirname(dst))
        if not from_gdrive:
            raise NotImplementedError("download_data supports Google Drive links only (from_gdrive=True)")
        import gdown  # optional dependency, imported only when downloading

        gdown.download(url, dst, quiet=False)
        print("Extracting file ...")
        if dst.endswith(".zip"):
            with zipfile.ZipFile(dst, "r") as zip_ref:
                zip_ref.extractall(osp.dirname(dst))
        elif dst.endswith(".tar") or dst.endswith(".tar.gz") or dst.endswith(".tgz"):
            with tarfile.open(dst) as tar:
                try:
                    tar.extractall(osp.dirname(dst), filter="data")  # no paths outside the folder
                except TypeError:  # Python without extraction filters
                    tar.extractall(osp.dirname(dst))
        else:
            raise NotImplementedError(f"Cannot extract {dst}: unknown archive type")
        print(f"File extracted to {osp.dirname(dst)}")

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """Sample `num_shots` items per class (Python's `random`) from each data source.

        Classes with fewer items keep all of them, or sample with replacement when `repeat`.
        Returns one list for one source, else a list of lists.
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        print(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            short = {label: len(items) for label, items in tracker.items() if len(items) < num_shots}
            if short:
                names = [f"{items[0].classname or label} ({len(items)})" for label, items in tracker.items()
                         if label in short]
                names = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")
                print(f"WARNING: {num_shots} shots asked, but {len(short)} of {len(tracker)} classes have fewer "
                      f"images: {names}; " + ("they are sampled with replacement" if repeat else
                                              "they keep all their images"))
            dataset = []
            for label, items in tracker.items():
                if len(items) >= num_shots:
                    sampled_items = random.sample(items, num_shots)
                elif repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
                dataset.extend(sampled_items)
            output.append(dataset)
        return output[0] if len(output) == 1 else output

    @staticmethod
    def _group_by(data_source, attribute):
        output = defaultdict(list)
        for item in data_source:
            output[getattr(item, attribute)].append(item)
        return output

    def split_dataset_by_label(self, data_source):
        """{label: [Datum]}, in order of first appearance."""
        return self._group_by(data_source, "label")

    def split_dataset_by_domain(self, data_source):
        """{domain: [Datum]}, in order of first appearance."""
        return self._group_by(data_source, "domain")
