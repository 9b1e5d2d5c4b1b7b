"""Where peftx caches generated or converted datasets and counted budgets (``$PEFTX_CACHE``, default
~/.cache/peftx). `datasets` is imported only when a dataset is cached: budget tables read this cache
without it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets


def cache_root() -> Path:
    return Path(os.environ.get("PEFTX_CACHE", Path.home() / ".cache" / "peftx"))


def cached_dataset_dict(kind: str, key: dict, build: Callable[[], datasets.DatasetDict]) -> datasets.DatasetDict:
    """Load the DatasetDict cached under (kind, key), or build, save and return it.

    The key is hashed from its JSON form, so any argument that changes the data changes the path. The
    save goes to a temporary folder renamed into place, so an interrupted build leaves no half cache.
    """
    import datasets

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / kind / digest
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{digest}-"))
    try:
        datasets.disable_progress_bars()  # a progress bar per split is noise around peftx's own output
        data.save_to_disk(str(tmp))
        (tmp / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "dataset_dict.json").exists():
            raise
    return datasets.load_from_disk(str(path))
