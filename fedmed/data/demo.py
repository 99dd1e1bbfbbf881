"""Demo hospitals by kind: the one place ``fedmed synth`` and ``data.synthesize`` choose a synthesizer.

Each kind writes real DICOM files (and DICOM SEG masks for segmentation) labelled for one
task: radiographs and CT series for the binary task, radiographs with several findings for
a multi-label task, radiographs with one class each for a multi-class task, images or CT
series with masks for segmentation. The task's names (labels, classes, structures) are what
the synthesizer draws and writes in the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedmed.config.schema import SynthesisConfig
from fedmed.errors import FedmedError

KINDS = ("radiograph", "ct-series", "multilabel", "multiclass", "segmentation", "ct-segmentation")


def synthesize_demo(
    root: Path, synth: SynthesisConfig, *, n_sites: int, names: Sequence[str] = (),
) -> list[Path]:
    """Write ``n_sites`` demo hospitals of ``synth.kind`` under ``root``; their folders.

    ``names`` are the task's labels (multilabel), classes (multiclass) or structures
    (segmentation); the synthesizer's defaults when empty.

    Raises:
        FedmedError: an unknown kind or an argument the synthesizer refuses.
    """
    common = {"n_sites": n_sites, "image_size": synth.stored_size, "test_fraction": synth.test_fraction,
              "seed": synth.seed}
    named = {"structures": tuple(names)} if names else {}
    if synth.kind == "radiograph":
        from fedmed.data.synth import synthesize_hospitals

        return synthesize_hospitals(root, images_per_site=synth.images_per_site, **common)
    if synth.kind == "ct-series":
        from fedmed.data.synth_ct import synthesize_ct_hospitals

        return synthesize_ct_hospitals(root, studies_per_site=synth.images_per_site, slices=synth.slices, **common)
    if synth.kind == "multilabel":
        from fedmed.data.synth_multilabel import synthesize_multilabel_hospitals

        labels = {"labels": tuple(names)} if names else {}
        return list(synthesize_multilabel_hospitals(root, images_per_site=synth.images_per_site, **common, **labels))
    if synth.kind == "multiclass":
        from fedmed.data.synth_multilabel import synthesize_multiclass_hospitals

        classes = {"classes": tuple(names)} if names else {}
        return synthesize_multiclass_hospitals(root, images_per_site=synth.images_per_site, **common, **classes)
    if synth.kind == "segmentation":
        from fedmed.data.synth_seg import synthesize_segmentation_hospitals

        sites = synthesize_segmentation_hospitals(root, images_per_site=synth.images_per_site, **common, **named)
        return [site.site_dir for site in sites]
    if synth.kind == "ct-segmentation":
        from fedmed.data.synth_seg import synthesize_ct_segmentation_hospitals

        sites = synthesize_ct_segmentation_hospitals(
            root, studies_per_site=synth.images_per_site, slices=synth.slices, **common, **named,
        )
        return [site.site_dir for site in sites]
    raise FedmedError(f"unknown kind of demo hospital {synth.kind!r}; use one of {', '.join(KINDS)}")
