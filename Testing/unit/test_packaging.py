"""What Slicer's build and the module shell rely on, checked without the Slicer application."""

import ast
import importlib.util
import json
import re
import xml.etree.ElementTree as ElementTree

from PIL import Image

from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.options import GUI_FIELDS
from Testing.realdata import MODULE_DIR, REPO

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


def extension_variable(name):
    value = re.search(rf'set\({name} "?([^")]*)"?\)', (REPO / "CMakeLists.txt").read_text()).group(1)
    return re.sub(r"\$\{(\w+)\}", lambda variable: extension_variable(variable.group(1)), value)


def test_extension_metadata():
    top = (REPO / "CMakeLists.txt").read_text()
    assert extension_variable("EXTENSION_CATEGORY") == "Segmentation"
    assert "set(EXTENSION_DEPENDS PyTorch)" in top and "add_subdirectory(BrainTumorFusion)" in top
    assert "WITH_GENERIC_TESTS" in CMAKE and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in CMAKE
    # The icon and screenshot URLs name files of this repository (under the placeholder repository URL).
    raw = extension_variable("EXTENSION_RAW_FILES")
    for name in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        url = extension_variable(name)
        assert url.startswith(raw + "/") and (REPO / url[len(raw) + 1:]).is_file(), url
    with Image.open(REPO / "Resources" / "Screenshots" / "BrainTumorFusion.png") as screenshot:
        assert screenshot.format == "PNG" and screenshot.width >= 800


def test_extensions_index_description_matches_the_cmake_metadata():
    """The file to submit to Slicer's ExtensionsIndex (schema v1.0.1: required $schema, category, scm_url; nothing
    outside the schema's fields)."""
    entry = json.loads((REPO / "Resources" / "ExtensionsIndex" / "BrainTumorFusion.json").read_text())
    assert entry["$schema"].endswith("/slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled",
                          "scm_revision", "scm_type", "scm_url", "tier"}
    assert entry["category"] == extension_variable("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == extension_variable("EXTENSION_DEPENDS").split()
    assert entry["scm_url"] == extension_variable("EXTENSION_REPOSITORY") + ".git"


def test_code_licence_and_weights_terms_are_stated():
    assert "Apache License\n                           Version 2.0" in (REPO / "LICENSE").read_text()
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()
    terms = json.loads((MODULE_DIR / "Resources" / "models.json").read_text())["terms"]
    for text in (terms, MODULE_FILE.read_text(), (REPO / "README.md").read_text()):
        assert "not for clinical diagnosis" in text and "BraTS" in text and "research use" in text


def test_widget_uses_only_names_that_exist_in_the_ui_file():
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "BrainTumorFusion.ui")
    names = {widget.get("name") for widget in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used and used <= names, f"missing in .ui: {used - names}"
    # Every parameter of the parameter node is bound to a widget through SlicerParameterName.
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound == set(MODALITIES) | {"prior"} | set(GUI_FIELDS)


def test_module_file_is_a_thin_shell_and_the_only_qt_importer():
    assert len(MODULE_FILE.read_text().splitlines()) < 500
    ast.parse(MODULE_FILE.read_text())
    for path in (MODULE_DIR / "BrainTumorFusionLib").rglob("*.py"):
        imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert not imported & {"qt", "ctk", "PythonQt"}, path


def test_only_the_scene_adapters_and_logic_import_slicer_at_module_level():
    allowed = {"scene.py", "scene_measurements.py", "logic.py"}  # logic imports slicer only through the adapters
    for path in (MODULE_DIR / "BrainTumorFusionLib").rglob("*.py"):
        top_level = {alias.name.split(".")[0] for node in ast.parse(path.read_text()).body
                     if isinstance(node, ast.Import) for alias in node.names}
        if "slicer" in top_level:
            assert path.name in allowed, path


def test_the_readme_model_table_is_generated_from_the_catalogue():
    """README.md's table is tools/model_table.py's rendering of models.json (run it after changing the catalogue)."""
    spec = importlib.util.spec_from_file_location("model_table", REPO / "tools" / "model_table.py")
    model_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_table)
    readme = (REPO / "README.md").read_text()
    assert model_table.current_readme(readme, model_table.render()) == readme, "run tools/model_table.py"


def library_imports():
    """{module: library modules it imports}, module-level and lazy (inside functions) imports alike."""
    graph = {}
    for path in (MODULE_DIR / "BrainTumorFusionLib").rglob("*.py"):
        parts = list(path.relative_to(MODULE_DIR / "BrainTumorFusionLib").with_suffix("").parts)
        package = parts[:-1]
        name = ".".join(package if parts[-1] == "__init__" else parts) or "__init__"
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                if node.module:
                    imported.add(".".join(base + [node.module]))
                else:
                    imported |= {".".join(base + [alias.name]) for alias in node.names}
        graph[name] = imported
    return graph


# The library's floors, lowest first: each sub-package imports only from its own floor and those below.
FLOORS = ("", "preparation", "measurements", "engine", "files", "app")  # "": the shared basics at the top of the folder, networks


def test_sub_packages_import_only_downwards():
    graph = library_imports()

    def floor(module):
        package = module.split(".")[0] if "." in module else ""
        return FLOORS.index("" if package == "networks" else package)

    upward = [f"{module} -> {imported}" for module, imports in graph.items() if module != "__main__"
              for imported in imports if floor(imported) > floor(module)]
    assert not upward


def test_library_imports_point_one_way():
    """No import circle in the library, not even through imports deferred into functions."""
    graph = library_imports()
    finished, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in finished:
            return
        path.append(module)
        for imported in graph.get(module, ()):
            visit(imported)
        path.pop()
        finished.add(module)

    for module in graph:
        visit(module)
    # The two circles of old, opened: case discovery sits above both file adapters, and cases are assembled by the
    # input preparation, above the geometry it uses.
    assert {"files.file_io", "files.dicom_io"} <= graph["files.cases"]
    assert "files.cases" not in graph["files.file_io"] | graph["files.dicom_io"]
    assert "preparation.geometry" in graph["preparation.inputs"]
    assert "preparation.inputs" not in graph["preparation.geometry"]
