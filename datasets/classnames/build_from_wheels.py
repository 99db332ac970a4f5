"""Rebuild imagenet.txt, imagenet_a.txt, imagenet_r.txt (run once by hand; the outputs are committed).

    pip download --no-deps timm open_clip_torch -d /tmp/wheels
    cd /tmp/wheels && unzip -o timm-*.whl 'timm/data/_info/*' && unzip -o open_clip_torch-*.whl open_clip/zero_shot_metadata.py
    python datasets/classnames/build_from_wheels.py
Neither package is a dependency of this project.
"""
import os
import ast
src = open("/tmp/wheels/open_clip/zero_shot_metadata.py").read()
tree = ast.parse(src)
names = None
for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "IMAGENET_CLASSNAMES":
        names = ast.literal_eval(node.value)
info = "/tmp/wheels/timm/data/_info/"
wnids = open(info + "imagenet_synsets.txt").read().split()
assert len(names) == 1000 and len(wnids) == 1000 and wnids == sorted(wnids)
out = os.path.dirname(os.path.abspath(__file__)) + "/"
hdr = ("# ImageNet-1k classes in label order (= sorted wnids): wnid<TAB>CLIP's cleaned class name.\n"
       "# wnids: timm 1.0.31, timm/data/_info/imagenet_synsets.txt; names: open_clip_torch 3.3.0,\n"
       "# open_clip/zero_shot_metadata.py IMAGENET_CLASSNAMES, from CLIP's prompt-engineering notebook (the names CoOp's classnames.txt holds).\n")
with open(out + "imagenet.txt", "w") as f:
    f.write(hdr)
    for w, n in zip(wnids, names):
        assert "\t" not in n
        f.write(f"{w}\t{n}\n")
for sub, label in (("a", "ImageNet-A"), ("r", "ImageNet-R")):
    syn = open(info + f"imagenet_{sub}_synsets.txt").read().split()
    idx = [int(x) for x in open(info + f"imagenet_{sub}_indices.txt").read().split()]
    assert len(syn) == 200 and [wnids.index(s) for s in syn] == idx, sub
    with open(out + f"imagenet_{sub}.txt", "w") as f:
        f.write(f"# The 200 {label} classes: wnid<TAB>index into the 1000 ImageNet classes, in label order.\n"
                f"# From timm 1.0.31, timm/data/_info/imagenet_{sub}_synsets.txt and imagenet_{sub}_indices.txt.\n")
        for s, i in zip(syn, idx):
            f.write(f"{s}\t{i}\n")
print(names[0], names[-1], wnids[0], wnids[-1])
