"""Readable names for the coded values the search facets show.

The index keeps codes (``SCT:12710003``); a person reads "hematoxylin stain". These are the
code meanings (as DICOM spells them, PS3.16 CID 8112 stains, CID 4 anatomic regions, CID 8101
container types) of the codes the archive's own slide makers write (tests/slides.py,
indexer/synthetic.py). The page also learns a meaning from any hit whose slide carries a
single code of a kind; a code it cannot name is shown as the code.
"""
from __future__ import annotations

MEANINGS: dict[str, str] = {
    "SCT:12710003": "hematoxylin stain",
    "SCT:337915000": "Homo sapiens",
    "SCT:447612001": "Mus musculus",
    "SCT:430856003": "Tissue section",
    "SCT:36879007": "water soluble eosin stain",
    "SCT:13958009": "Masson trichrome stain",
    "SCT:255176008": "periodic acid Schiff stain",
    "SCT:406972007": "Ki-67 antigen",
    "SCT:76752008": "Breast",
    "SCT:64033007": "Kidney",
    "SCT:10200004": "Liver",
    "SCT:39607008": "Lung",
    "SCT:71854001": "Colon",
    "SCT:41216001": "Prostate",
    "SCT:69695003": "Stomach",
    "SCT:39937001": "Skin",
    "SCT:433466003": "Microscope slide",
}
