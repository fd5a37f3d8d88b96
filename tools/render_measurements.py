"""What the GUI shows of the RANO measurements, rendered offscreen from the scene's own nodes: a real case segmented
by a shipped model and written into a headless MRML scene by the module's logic (as Apply does), then the T1ce
slice of the first target lesion with the labels and the target lesions' line markups drawn from their control
points, and the measurements table node's rows below it - before and after one line's end is moved as a reader
would drag it (the table follows). Slicer's slice views need Qt, so the picture is drawn with Pillow.

    .venv/bin/python tools/render_measurements.py --case ../shared/data/brats/Brats18_CBICA_AME_1 \
        --output docs/images/rano_gui.png
"""

import argparse
from pathlib import Path

import numpy as np
import slicer
import slicer.util
from PIL import Image, ImageDraw, ImageFont

from BrainTumorFusionLib.app.logic import MEASUREMENTS_ATTRIBUTE, SceneLogic
from BrainTumorFusionLib.app.scene import add_volume_node
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from BrainTumorFusionLib.files.segments import SEGMENTS
from BrainTumorFusionLib.modalities import MODALITIES

ZOOM = 3
LINE_COLOURS = ((255, 230, 0), (0, 230, 255))  # longest, perpendicular
MONOSPACE = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")  # table columns line up; else Pillow's own
FONT = ImageFont.truetype(str(MONOSPACE), 12) if MONOSPACE.is_file() else ImageFont.load_default()


def scene_with_logic():
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    for logic, name in ((app.GetColorLogic(), "Colors"), (slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations"),
                        (slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")):
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
    return scene, app


def table_text(table_node):
    table = table_node.GetTable()
    columns = range(table.GetNumberOfColumns())
    rows = [[table.GetColumn(c).GetName() for c in columns]]
    rows += [[table.GetValue(r, c).ToString()[:48] for c in columns] for r in range(table.GetNumberOfRows())]
    widths = [max(len(row[c]) for row in rows) for c in columns]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


def slice_picture(t1ce, labels, ijk_to_ras, lines, k):
    grey = t1ce[k].astype(np.float32)
    grey = np.clip(grey / max(np.percentile(grey[grey > 0], 99.5), 1e-6), 0, 1) if grey.any() else grey
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for spec in SEGMENTS:
        rgb[labels[k] == spec.label] = 0.55 * rgb[labels[k] == spec.label] + 0.45 * np.array(spec.color)
    picture = Image.fromarray((rgb * 255).astype(np.uint8)).resize((grey.shape[1] * ZOOM, grey.shape[0] * ZOOM),
                                                                    Image.Resampling.NEAREST)
    picture = picture.transpose(Image.Transpose.ROTATE_180)  # anterior up, the patient's right on the left
    draw = ImageDraw.Draw(picture)
    to_ijk = np.linalg.inv(ijk_to_ras)
    corner = np.array(picture.size, dtype=float)
    for name, (start, end) in lines.items():
        pixels = [corner - ((to_ijk @ np.append(point, 1.0))[:2] + 0.5) * ZOOM for point in (start, end)]
        colour = LINE_COLOURS[name.endswith("perpendicular")]
        draw.line([tuple(p) for p in pixels], fill=colour, width=2)
        draw.text(tuple(pixels[1] + 4), name.split(" lesion ")[1], fill=colour, font=FONT)
    return picture


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, required=True)
    parser.add_argument("--model", default="hafb")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    case, _ = read_case(case_files_in(args.case))
    result = Pipeline(model=args.model, device="cpu").run(case)
    scene, _ = scene_with_logic()
    slicer.mrmlScene = scene
    reference = add_volume_node(scene, case.image[MODALITIES.index("t1ce")], case.ijk_to_ras, f"{case.name}_t1ce")
    segmentation = SceneLogic(scene).write_result(result, reference)[0]
    table = scene.GetNodeByID(segmentation.GetAttribute(MEASUREMENTS_ATTRIBUTE))
    line_nodes = {node.GetName(): node for node in scene.GetNodesByClass("vtkMRMLMarkupsLineNode")}
    target = result.measurements.targets[0]
    on_slice = {f"{case.name} lesion {lesion.number} {which}" for lesion in result.measurements.targets
                if lesion.slice_index == target.slice_index for which in ("longest", "perpendicular")}
    lines = {name: (np.array(node.GetNthControlPointPositionWorld(0)), np.array(node.GetNthControlPointPositionWorld(1)))
             for name, node in line_nodes.items() if name in on_slice}
    before = table_text(table)
    longest = line_nodes[f"{case.name} lesion {target.number} longest"]
    start, end = lines[longest.GetName()]
    longest.SetNthControlPointPositionWorld(1, *(end + 5.0 * (end - start) / np.linalg.norm(end - start)))
    after = table_text(table)
    picture = slice_picture(case.image[MODALITIES.index("t1ce")], result.labels, case.ijk_to_ras, lines,
                            target.slice_index)
    text = (f"{table.GetName()} (scene table node)\n{before}\n\nafter dragging the end of 'lesion {target.number} "
            f"longest' 5 mm outwards:\n{after}")
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    box = probe.multiline_textbbox((0, 0), text, font=FONT)
    sheet = Image.new("RGB", (max(picture.width, box[2] + 20), picture.height + box[3] + 30), (255, 255, 255))
    sheet.paste(picture, (0, 0))
    ImageDraw.Draw(sheet).multiline_text((10, picture.height + 15), text, fill=(0, 0, 0), font=FONT)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    print(f"{args.output}: {sheet.width} x {sheet.height}\n{before}\n\n{after}")


if __name__ == "__main__":
    main()
