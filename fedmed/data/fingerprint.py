"""A fingerprint of the records a site trains on: the key its privacy budget is kept under.

The budget belongs to the data, not to a run: two runs over the same training records
draw on one budget. The fingerprint covers each training file's bytes and label, in a
fixed order, so renaming the folder keeps it and changing any record changes it.
"""

from __future__ import annotations

import hashlib

from fedmed.data.dataset import SiteData


def dataset_fingerprint(data: SiteData) -> str:
    """SHA-256 over the sorted (file content hash, label) pairs of the training records."""
    records = sorted(
        (hashlib.sha256((data.site_dir / name).read_bytes()).hexdigest(), int(label))
        for name, label in zip(data.train.files, data.train.labels.tolist())
    )
    digest = hashlib.sha256(b"fedmed-dataset-v1\n")
    for content, label in records:
        digest.update(f"{content} {label}\n".encode())
    return digest.hexdigest()
