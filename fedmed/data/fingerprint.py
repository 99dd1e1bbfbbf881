"""A fingerprint of the records a site trains on: the key its privacy budget is kept under.

The budget belongs to the data, not to a run: two runs over the same training records
draw on one budget. The fingerprint covers each training record's bytes (an image's file,
or every slice of a series in order) and target, in a fixed order, so renaming the folder
keeps it and changing any record changes it.
"""

from __future__ import annotations

import hashlib

from fedmed.data.dataset import SiteData


def dataset_fingerprint(data: SiteData) -> str:
    """SHA-256 over the sorted (record content hash, target) pairs of the training records.

    A binary label is written as before (``0`` or ``1``), so existing ledgers keep their
    fingerprint; other tasks' targets as their task writes them exactly (a mask by its hash).
    """
    records = sorted(
        (_record_hash(data, sources), target)
        for sources, target in zip(data.train.sources, data.train.target_texts, strict=True)
    )
    digest = hashlib.sha256(b"fedmed-dataset-v1\n")
    for content, target in records:
        digest.update(f"{content} {target}\n".encode())
    return digest.hexdigest()


def _record_hash(data: SiteData, sources: tuple[str, ...]) -> str:
    """A one-file record hashes as its file (so 2-D fingerprints stay as they were); a series over
    its slices' hashes."""
    hashes = [hashlib.sha256((data.site_dir / name).read_bytes()).hexdigest() for name in sources]
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256(("series:" + ",".join(hashes)).encode()).hexdigest()
