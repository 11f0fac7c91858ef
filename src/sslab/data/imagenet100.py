"""ImageNet-100 from an ImageNet-1k folder, without copying an image: a folder of symbolic links to the 100
class folders of CMC's subset (Tian et al., "Contrastive Multiview Coding", 2019, the list `imagenet100.txt`
of github.com/HobbitLong/CMC), the ImageNet-100 of solo-learn and of most self-supervised papers' tables.

    sslab imagenet100 --imagenet /data/imagenet --out /data/imagenet100
    sslab train --dataset folder --data-dir /data/imagenet100 --image-size 224 ...

`--imagenet` is laid out as torchvision's `ImageFolder` (and Facebook's SimSiam/MoCo code) expect:
`train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`. `--out` gets `train/<wnid>` and `val/<wnid>`, each a link to
the ImageNet class folder (126,689 training and 5,000 validation images); the folder loader follows them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from sslab.errors import DataError

# CMC's imagenet100.txt, in its order (the folder loader sorts the classes by name)
CLASSES = """
n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622
""".split()
SPLITS = ("train", "val")


def make_subset(imagenet: Path, out: Path, classes: Sequence[str] = CLASSES) -> dict[str, int]:
    """Link `out/<split>/<wnid>` to `imagenet/<split>/<wnid>` for every class and split; the number of class
    folders linked per split. Links already there and pointing to the same folder are kept."""
    missing = [f"{split}/{wnid}" for split in SPLITS for wnid in classes if not (imagenet / split / wnid).is_dir()]
    if missing:
        hint = ""
        if (imagenet / "val").is_dir() and not any(e.is_dir() for e in os.scandir(imagenet / "val")):
            hint = ("; val/ holds its 50,000 images directly: sort them into val/<wnid>/ first (the devkit's labels, "
                    "e.g. the valprep.sh of soumith/imagenetloader.torch)")
        raise DataError(f"{imagenet} lacks {len(missing)} of the {len(classes) * len(SPLITS)} class folders of "
                        f"ImageNet-100 (first: {missing[0]}); pass the ImageNet folder with train/<wnid>/ and "
                        f"val/<wnid>/{hint}")
    linked = {}
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        for wnid in classes:
            link, target = out / split / wnid, (imagenet / split / wnid).resolve()
            if link.is_symlink() and link.resolve() == target:
                continue
            if link.exists() or link.is_symlink():
                raise DataError(f"{link} exists and is not a link to {target}; pass an empty or new --out folder")
            try:
                link.symlink_to(target, target_is_directory=True)
            except OSError as e:
                raise DataError(f"cannot create the link {link} ({e.strerror or e}); on Windows enable Developer Mode "
                                "(or run as administrator) to allow symbolic links") from None
        linked[split] = len(classes)
    return linked
