"""What Slicer's build and the module shell rely on, checked without the Slicer application."""

import ast
import re
import xml.etree.ElementTree as ElementTree

from realdata import MODULE_DIR, REPO

MODULE_FILE = MODULE_DIR / "BrainTumorFusion.py"
CMAKE = (MODULE_DIR / "CMakeLists.txt").read_text()


def cmake_list(name):
    block = re.search(rf"set\({name}\n(.*?)\)", CMAKE, re.S).group(1)
    return {line.strip().replace("${MODULE_NAME}", "BrainTumorFusion") for line in block.splitlines() if line.strip()}


def test_every_library_file_is_packaged():
    on_disk = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "BrainTumorFusionLib").rglob("*.py")}
    listed = cmake_list("MODULE_PYTHON_SCRIPTS")
    assert on_disk | {"BrainTumorFusion.py"} == listed


def test_every_resource_is_packaged():
    on_disk = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert on_disk == cmake_list("MODULE_PYTHON_RESOURCES")


def test_extension_metadata():
    top = (REPO / "CMakeLists.txt").read_text()
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top
    assert "set(EXTENSION_DEPENDS PyTorch)" in top and "add_subdirectory(BrainTumorFusion)" in top
    assert "WITH_GENERIC_TESTS" in CMAKE and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in CMAKE


def test_widget_uses_only_names_that_exist_in_the_ui_file():
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "BrainTumorFusion.ui")
    names = {widget.get("name") for widget in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used and used <= names, f"missing in .ui: {used - names}"
    # Every parameter of the parameter node is bound to a widget through SlicerParameterName.
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound == {"t1", "t1ce", "t2", "flair", "model", "members", "device", "precision", "tta", "grade",
                     "register", "skullStrip"}


def test_module_file_is_a_thin_shell_and_the_only_qt_importer():
    assert len(MODULE_FILE.read_text().splitlines()) < 500
    ast.parse(MODULE_FILE.read_text())
    for path in (MODULE_DIR / "BrainTumorFusionLib").rglob("*.py"):
        imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert not imported & {"qt", "ctk", "PythonQt"}, path


def test_only_the_scene_adapter_and_logic_import_slicer_at_module_level():
    allowed = {"scene.py", "logic.py"}  # logic imports slicer only through scene
    for path in (MODULE_DIR / "BrainTumorFusionLib").rglob("*.py"):
        top_level = {alias.name.split(".")[0] for node in ast.parse(path.read_text()).body
                     if isinstance(node, ast.Import) for alias in node.names}
        if "slicer" in top_level:
            assert path.name in allowed, path
