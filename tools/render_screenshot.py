"""The extension's screenshot (Resources/Screenshots/): a real case segmented by the shipped default model, its
slices with the labels over them (the library's --preview picture) beside a 3D view of the three segments' surfaces,
rendered offscreen by VTK (EGL; no display needed).

    .venv/bin/python tools/render_screenshot.py --case ../shared/data/brats/Brats18_CBICA_ABM_1 \
        --output Resources/Screenshots/BrainTumorFusion.png
"""

import argparse
from pathlib import Path

import numpy as np
import vtk
from PIL import Image, ImageDraw
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from BrainTumorFusionLib.files.preview import render
from BrainTumorFusionLib.files.segments import SEGMENTS

SIZE = 520  # pixels of the 3D view's side


def image_data(mask, ijk_to_ras):
    """vtkImageData of a (K, J, I) mask in RAS millimetres (direction and spacing from the IJK-to-RAS matrix)."""
    image = vtk.vtkImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    image.SetSpacing(*spacing)
    image.SetOrigin(*ijk_to_ras[:3, 3])
    direction = vtk.vtkMatrix3x3()
    for row in range(3):
        for column in range(3):
            direction.SetElement(row, column, ijk_to_ras[row, column] / spacing[column])
    image.SetDirectionMatrix(direction)
    image.GetPointData().SetScalars(numpy_to_vtk(mask.ravel().astype(np.uint8), deep=True))
    return image


def surface_actor(mask, ijk_to_ras, color, opacity=1.0):
    surface = vtk.vtkFlyingEdges3D()
    surface.SetInputData(image_data(mask, ijk_to_ras))
    surface.SetValue(0, 0.5)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(surface.GetOutputPort())
    smooth.SetNumberOfIterations(20)
    smooth.SetPassBand(0.05)
    smooth.NormalizeCoordinatesOn()
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(smooth.GetOutputPort())
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(normals.GetOutputPort())
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetOpacity(opacity)
    return actor


def render_3d(case, labels):
    """The three segments as nested surfaces (edema translucent) inside a faint brain outline, seen from the
    patient's front-left and above."""
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.1, 0.1, 0.15)
    renderer.AddActor(surface_actor(case.image[case.present.index(True)] > 0, case.ijk_to_ras, (0.8, 0.8, 0.8), 0.12))
    for spec in SEGMENTS:
        opacity = 0.45 if spec.segment_id == "edema" else 1.0
        renderer.AddActor(surface_actor(labels == spec.label, case.ijk_to_ras, spec.color, opacity))
    camera = renderer.GetActiveCamera()
    camera.SetViewUp(0, 0, 1)
    camera.SetPosition(-1, 1.2, 0.6)  # RAS: from the left, anterior and above
    camera.SetFocalPoint(0, 0, 0)
    renderer.ResetCamera()
    camera.Zoom(1.3)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.AddRenderer(renderer)
    window.SetSize(SIZE, SIZE)
    window.SetMultiSamples(8)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    output = grab.GetOutput()
    width, height, _ = output.GetDimensions()
    pixels = vtk_to_numpy(output.GetPointData().GetScalars()).reshape(height, width, -1)
    return Image.fromarray(np.ascontiguousarray(pixels[::-1, :, :3]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, required=True, help="a case folder (four images)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--model", default="auto")
    args = parser.parse_args(argv)
    case, _ = read_case(case_files_in(args.case))
    result = Pipeline(model=args.model, device="cpu").run(case)
    slices = render(case, result.labels)
    view = render_3d(case, result.labels).resize((slices.height, slices.height))
    picture = Image.new("RGB", (slices.width + view.width + 4, slices.height + 16), "black")
    picture.paste(slices, (0, 0))
    picture.paste(view, (slices.width + 4, 0))
    draw = ImageDraw.Draw(picture)
    left = 4
    for spec in SEGMENTS:
        draw.rectangle((left, slices.height + 3, left + 10, slices.height + 13),
                       fill=tuple(int(255 * c) for c in spec.color))
        draw.text((left + 14, slices.height + 2), spec.name, fill="white")
        left += 24 + int(draw.textlength(spec.name))
    draw.text((left + 10, slices.height + 2), f"model: {result.model}", fill="white")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.output, optimize=True)
    print(f"{args.output}: {picture.width} x {picture.height}, model {result.model}, volumes (mL) "
          + ", ".join(f"{k} {v:.1f}" for k, v in result.volumes_ml.items()))


if __name__ == "__main__":
    main()
