"""Synthetic slide headers (no pixel data) for the index tests and the benchmark.

Deterministic from a seed, so both backends and the catalog see the same data
and a failing generated query can be replayed.
"""
from __future__ import annotations

import random
from typing import Iterator

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .documents import ANN_SOP_CLASS, WSI_SOP_CLASS

ORGANS = [("SCT", "64033007", "Kidney"), ("SCT", "10200004", "Liver"), ("SCT", "39607008", "Lung"),
          ("SCT", "76752008", "Breast"), ("SCT", "71854001", "Colon"), ("SCT", "41216001", "Prostate"),
          ("SCT", "69695003", "Stomach"), ("SCT", "39937001", "Skin")]
STAINS = [[("SCT", "12710003", "hematoxylin stain"), ("SCT", "36879007", "water soluble eosin stain")],
          [("SCT", "406972007", "Ki-67 antigen")], [("SCT", "255176008", "periodic acid Schiff stain")],
          [("SCT", "13958009", "Masson trichrome stain")]]
SCANNERS = [("Acme Imaging", "SlideScan 400"), ("Leica Biosystems", "Aperio GT 450"),
            ("Hamamatsu", "NanoZoomer S360"), ("3DHISTECH", "Pannoramic 1000")]
NAMES = ["ROE^JANA", "SMITH^JOHN", "MULLER^ANNA", "GARCIA^LUIS", "NGUYEN^MAI", "SMYTHE^JON", "O'BRIEN^PAT"]
DESCRIPTIONS = ["Kidney biopsy", "Liver resection margins", "Lung adenocarcinoma staging",
                "Breast core needle biopsy", "Colon polyp", "Prostate needle biopsy", "Skin excision"]
MODALITIES = ["SM", "SM", "SM", "OT"]


def code(scheme: str, value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _content_item(name: tuple[str, str, str], value: tuple[str, str, str] | None = None,
                  text: str | None = None) -> Dataset:
    item = Dataset()
    item.ConceptNameCodeSequence = Sequence([code(*name)])
    if value is not None:
        item.ValueType = "CODE"
        item.ConceptCodeSequence = Sequence([code(*value)])
    else:
        item.ValueType = "TEXT"
        item.TextValue = text or ""
    return item


def slide_headers(n: int, seed: int = 0, study_uid: str | None = None, patient: int | None = None
                  ) -> list[Dataset]:
    """The instance headers of synthetic slide ``n``: VOLUME levels, LABEL and OVERVIEW."""
    rnd = random.Random(seed * 1_000_003 + n)
    p = patient if patient is not None else n // 3
    organ = ORGANS[rnd.randrange(len(ORGANS))]
    stain = STAINS[rnd.randrange(len(STAINS))]
    maker, model = SCANNERS[rnd.randrange(len(SCANNERS))]
    width, height = rnd.choice([(40000, 30000), (80000, 60000), (120000, 90000), (20000, 15000)])
    levels = rnd.randint(2, 5)
    power = rnd.choice([20.0, 40.0, None])
    base = Dataset()
    base.SOPClassUID = WSI_SOP_CLASS
    base.PatientName = NAMES[p % len(NAMES)] + ("" if p < len(NAMES) else f"{p}")
    base.PatientID = f"PSEUDO-{p:06d}"
    base.PatientSex = "FM"[p % 2] if p % 5 else "O"
    base.PatientAge = f"{20 + p % 70:03d}Y"
    species = ("SCT", "447612001", "Mus musculus") if p % 7 == 3 else ("SCT", "337915000", "Homo sapiens")
    base.PatientSpeciesCodeSequence = Sequence([code(*species)])
    base.PatientBirthDate = f"{1930 + p % 70}0{1 + p % 9}15"
    base.StudyInstanceUID = study_uid or f"2.25.{seed + 1}1{n // 2 if patient is None else p}"
    base.StudyDate = f"20{10 + (n // 2) % 15}{1 + (n // 2) % 12:02d}{1 + (n // 2) % 28:02d}"
    base.StudyTime = f"{8 + (n // 2) % 10:02d}{(n * 7) % 60:02d}00"
    base.AccessionNumber = f"ACC{(n // 2):07d}"
    base.StudyID = f"S{(n // 2) % 1000}"
    base.ReferringPhysicianName = NAMES[(p + 3) % len(NAMES)]
    base.StudyDescription = DESCRIPTIONS[(n // 2) % len(DESCRIPTIONS)]
    base.SeriesInstanceUID = f"2.25.{seed + 1}2{n}"
    base.Modality = MODALITIES[n % len(MODALITIES)]
    base.SeriesNumber = n % 50 + 1
    base.SeriesDescription = f"{organ[2]} {stain[0][2]}"
    base.SeriesDate = base.StudyDate
    base.SeriesTime = base.StudyTime
    base.BodyPartExamined = organ[2].upper()
    base.Manufacturer, base.ManufacturerModelName = maker, model
    base.SoftwareVersions = f"{1 + n % 3}.{n % 10}"
    base.ContainerIdentifier = f"SLIDE-{n:07d}"
    base.ContainerTypeCodeSequence = Sequence([code("SCT", "433466003", "Microscope slide")])
    spec = Dataset()
    spec.SpecimenIdentifier = f"SPEC-{n:07d}"
    spec.SpecimenUID = f"2.25.{seed + 1}3{n}"
    spec.PrimaryAnatomicStructureSequence = Sequence([code(*organ)])
    spec.SpecimenTypeCodeSequence = Sequence([code("SCT", "430856003", "Tissue section")])
    spec.SpecimenShortDescription = f"{organ[2]} tissue section"
    steps = []
    for s in stain:
        step = Dataset()
        step.SpecimenPreparationStepContentItemSequence = Sequence([
            _content_item(("DCM", "121041", "Specimen Identifier"), text=spec.SpecimenIdentifier),
            _content_item(("DCM", "111701", "Processing type"), ("SCT", "127790008", "Staining")),
            _content_item(("SCT", "424361007", "Using substance"), s),
        ])
        steps.append(step)
    fix = Dataset()
    fix.SpecimenPreparationStepContentItemSequence = Sequence([
        _content_item(("SCT", "430864009", "Tissue Fixative"), ("SCT", "431510009", "Formalin"))])
    steps.append(fix)
    spec.SpecimenPreparationSequence = Sequence(steps)
    base.SpecimenDescriptionSequence = Sequence([spec])
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.IlluminationTypeCodeSequence = Sequence([code("DCM", "111744", "Brightfield illumination")])
    path.IlluminationColorCodeSequence = Sequence([code("DCM", "11621", "Full Spectrum")])
    if power:
        path.ObjectiveLensPower = power
    base.OpticalPathSequence = Sequence([path])
    out = []
    for level in range(levels):
        ds = _copy(base)
        ds.SOPInstanceUID = f"{base.SeriesInstanceUID}.{level + 1}"
        ds.InstanceNumber = level + 1
        ds.ImageType = ["ORIGINAL" if level == 0 else "DERIVED", "PRIMARY", "VOLUME",
                        "NONE" if level == 0 else "RESAMPLED"]
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width >> level, height >> level
        shared = Dataset()
        measures = Dataset()
        measures.PixelSpacing = [f"{0.00025 * 2 ** level:.8f}", f"{0.00025 * 2 ** level:.8f}"]
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        out.append(ds)
    for i, flavor in enumerate(["LABEL", "OVERVIEW"][: rnd.randint(0, 2)]):
        ds = _copy(base)
        ds.SOPInstanceUID = f"{base.SeriesInstanceUID}.{levels + i + 1}"
        ds.InstanceNumber = levels + i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", flavor, "NONE"]
        out.append(ds)
    return out


def annotation_headers(slide: list[Dataset], n: int, algorithm: str = "NucleiNet",
                       version: str = "2.1") -> list[Dataset]:
    """One Microscopy Bulk Simple Annotations header referencing the slide's series."""
    first = slide[0]
    ds = Dataset()
    ds.SOPClassUID = ANN_SOP_CLASS
    for kw in ("PatientName", "PatientID", "PatientSex", "PatientAge", "PatientBirthDate", "StudyInstanceUID",
               "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
               "StudyDescription"):
        if kw in first:
            setattr(ds, kw, first.data_element(kw).value)
    ds.SeriesInstanceUID = f"{first.SeriesInstanceUID}.9{n}"
    ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.1"
    ds.Modality = "ANN"
    ds.SeriesNumber = 900 + n
    ds.Manufacturer = "slidearchive tests"
    ref = Dataset()
    ref.SeriesInstanceUID = first.SeriesInstanceUID
    ds.ReferencedSeriesSequence = Sequence([ref])
    groups = []
    for g, (label, prop) in enumerate([("nuclei", ("SCT", "84640000", "Nucleus")),
                                       ("tumor", ("SCT", "108369006", "Neoplasm"))]):
        group = Dataset()
        group.AnnotationGroupNumber = g + 1
        group.AnnotationGroupLabel = label
        group.AnnotationGroupGenerationType = "AUTOMATIC"
        group.NumberOfAnnotations = 100 * (g + 1) + n
        group.AnnotationPropertyCategoryCodeSequence = Sequence([code("SCT", "91723000", "Anatomical structure")])
        group.AnnotationPropertyTypeCodeSequence = Sequence([code(*prop)])
        alg = Dataset()
        alg.AlgorithmName, alg.AlgorithmVersion = algorithm, version
        alg.AlgorithmFamilyCodeSequence = Sequence([code("DCM", "123109", "Manual Processing")])
        group.AnnotationGroupAlgorithmIdentificationSequence = Sequence([alg])
        groups.append(group)
    ds.AnnotationGroupSequence = Sequence(groups)
    return [ds]


def _copy(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        out.add(elem)
    return out


def documents(count: int, seed: int = 0) -> Iterator[dict]:
    """``count`` slide documents, every third one with an AI result (for the benchmark)."""
    from .documents import build_document

    for n in range(count):
        headers = slide_headers(n, seed)
        ai = annotation_headers(headers, 1) if n % 3 == 0 else []
        yield build_document(headers, f"collection-{n % 4}", ai)
