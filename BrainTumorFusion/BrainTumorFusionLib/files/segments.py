"""The output segments: BraTS label value, name, fixed colour and DICOM terminology, defined once."""

from dataclasses import dataclass

from ..case import LABEL_EDEMA, LABEL_ENHANCING, LABEL_NECROTIC

# Codes as codingScheme^codeValue^codeMeaning (DICOM CID 7168/7169 brain lesion codes, region brain); Slicer's
# terminology entries and the DICOM SEG (dicom_io.py) are both made from these.
CATEGORY_CODE = "SCT^49755003^Morphologically Altered Structure"
ANATOMY_CODE = "SCT^12738006^Brain"
# Slicer terminology entries serialise as
# context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier.
_ANATOMY = f"Anatomic codes - DICOM master list~{ANATOMY_CODE}~^^"
_CONTEXT = "Segmentation category and type - DICOM master list"


@dataclass(frozen=True)
class SegmentSpec:
    segment_id: str
    label: int
    name: str
    color: tuple[float, float, float]  # RGB in 0..1
    type_code: str  # codingScheme^codeValue^codeMeaning

    @property
    def terminology(self) -> str:
        return f"{_CONTEXT}~{CATEGORY_CODE}~{self.type_code}~^^~{_ANATOMY}"


SEGMENTS = (
    SegmentSpec("necrotic_core", LABEL_NECROTIC, "Necrotic / non-enhancing tumor core", (0.85, 0.20, 0.20),
                "SCT^6574001^Necrosis"),
    SegmentSpec("edema", LABEL_EDEMA, "Peritumoral edema", (0.35, 0.80, 0.35), "SCT^79654002^Edema"),
    SegmentSpec("enhancing_tumor", LABEL_ENHANCING, "Enhancing tumor", (0.95, 0.85, 0.20),
                "NCIt^C113842^Enhancing Lesion"),
)


def code_parts(code: str) -> tuple[str, str, str]:
    """(coding scheme, code value, code meaning) of a codingScheme^codeValue^codeMeaning string."""
    scheme, value, meaning = code.split("^")
    return scheme, value, meaning

