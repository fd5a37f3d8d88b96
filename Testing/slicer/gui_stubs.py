"""Stand-ins for what the module file needs from Slicer's Qt layer and the slicer-core wheel lacks (widget tests).

`install(monkeypatch, app_logic)` puts them in place only for names that do not import:
- `qt`: widgets built from the real .ui file (a plain object per named widget with the properties the file
  sets, signals a test can emit), QFile/QUiLoader so the real `slicer.util.loadUI` and `childWidgetVariables`
  work, and a QTimer that fires only when the test calls `process_events()` (the event loop);
- Slicer's Qt-based Python modules: `slicer.ScriptedLoadableModule` (the base classes; the parameter node is a
  real vtkMRMLScriptedModuleNode of the scene, as in Slicer), `slicer.parameterNodeWrapper` (fields stored in
  that node: node references and string parameters; binding to widgets is left out, tests set the parameters
  as the bound widgets would) and `slicer.i18n`;
- `slicer.app`, the Qt application: the slicer-core wheel's version, testing mode (so `slicer.util.errorDisplay` only logs) and the test scene's
  real vtkSlicerApplicationLogic.
Everything else the widget touches is real: MRML scene, slicer.util, the logic and its background process.
"""

import importlib
import importlib.metadata
import inspect
import os
import sys
import types
import typing
import unittest
import weakref
import xml.etree.ElementTree as ElementTree

import slicer

# ------------------------------------------------------------------------------------------------------- qt


class QObject:
    def __init__(self, name="", class_name="QObject"):
        self.name = name
        self._class_name = class_name
        self._children = []
        self._slots = {}

    def className(self):
        return self._class_name

    def children(self):
        return list(self._children)

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)

    def emit(self, signal, *args):
        """What Qt does when the signal fires (a test's click or edit). Like PythonQt, a slot that takes fewer
        arguments than the signal carries gets the first ones."""
        for slot in self._slots.get(signal, []):
            parameters = inspect.signature(slot).parameters.values()
            if not any(p.kind == p.VAR_POSITIONAL for p in parameters):
                args = args[:len(parameters)]
            slot(*args)


class QWidget(QObject):
    def __init__(self, name="", class_name="QWidget"):
        super().__init__(name, class_name)
        self.enabled, self.visible, self.text, self.toolTip = True, True, "", ""

    def setMRMLScene(self, scene):
        self.mrmlScene = scene

    def addWidget(self, widget):  # as a layout
        self._children.append(widget)


class QPushButton(QWidget):
    def click(self):
        if self.enabled:
            self.emit("clicked(bool)", False)


class QComboBox(QWidget):
    def __init__(self, name="", class_name="QComboBox"):
        super().__init__(name, class_name)
        self.items, self.currentIndex = [], -1

    @property
    def count(self):
        return len(self.items)

    @property
    def currentText(self):
        return self.items[self.currentIndex] if 0 <= self.currentIndex < len(self.items) else ""

    def addItems(self, texts):
        self.items += list(texts)
        if self.currentIndex < 0 and self.items:
            self.currentIndex = 0

    def setCurrentText(self, text):
        self.currentIndex = self.items.index(text)
        self.emit("currentTextChanged(QString)", text)


class QPlainTextEdit(QWidget):
    def __init__(self, name="", class_name="QPlainTextEdit"):
        super().__init__(name, class_name)
        self._lines = []

    def appendPlainText(self, text):
        self._lines.append(text)

    def clear(self):
        self._lines = []

    def toPlainText(self):
        return "\n".join(self._lines)


class QProgressBar(QWidget):
    value = 0


WIDGET_CLASSES = {"QPushButton": QPushButton, "QComboBox": QComboBox, "QPlainTextEdit": QPlainTextEdit,
                  "QProgressBar": QProgressBar}


def _property_value(element):
    value = next(iter(element), None)
    if value is None:
        return None
    if value.tag == "bool":
        return value.text == "true"
    if value.tag == "number":
        return int(value.text)
    if value.tag == "string":
        return value.text or ""
    return None  # string lists, enums: not read by the module file


def _build(element, parent):
    """The widgets under a .ui element, with the properties the file sets."""
    for child in element:
        if child.tag != "widget":
            _build(child, parent)  # layouts and items only group widgets
            continue
        widget = WIDGET_CLASSES.get(child.get("class"), QWidget)(child.get("name"), child.get("class"))
        for prop in child.findall("property"):
            if prop.get("stdset") != "0":
                setattr(widget, prop.get("name"), _property_value(prop))
        if isinstance(widget, QComboBox):
            widget.addItems(item.find("property/string").text for item in child.findall("item"))
        parent._children.append(widget)
        _build(child, widget)


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return os.path.isfile(self.path)

    def open(self, mode):
        return True


class QUiLoader:
    def load(self, qfile):
        holder = QWidget()
        _build(ElementTree.parse(qfile.path).getroot(), holder)
        return holder.children()[0]


class QTimer(QObject):
    _pending = []  # single-shot callbacks, run by the next process_events()
    _timers = weakref.WeakSet()

    def __init__(self):
        super().__init__("", "QTimer")
        self.active, self.interval = False, 0
        QTimer._timers.add(self)

    def setInterval(self, msec):
        self.interval = msec

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active

    @staticmethod
    def singleShot(msec, callback):
        QTimer._pending.append(callback)


def process_events():
    """One turn of the event loop: due single shots, then one timeout of every running timer."""
    pending, QTimer._pending[:] = list(QTimer._pending), []
    for callback in pending:
        callback()
    for timer in list(QTimer._timers):
        if timer.active:
            timer.emit("timeout()")


def _qt_module():
    qt = types.ModuleType("qt")
    for name in ("QObject", "QWidget", "QPushButton", "QComboBox", "QPlainTextEdit", "QProgressBar", "QFile",
                 "QUiLoader", "QTimer"):
        setattr(qt, name, globals()[name])
    qt.QVBoxLayout = QWidget
    qt.QMessageBox = types.SimpleNamespace(Ok=0x400, Cancel=0x400000, Yes=0x4000, No=0x10000, Retry=0x80000,
                                           Close=0x200000, Critical=3, Question=4, Warning=2, Information=1)
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    return qt


# ---------------------------------------------------------------------------- Slicer's Qt-based Python modules


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else types.SimpleNamespace(isEntered=True)
        self.moduleName = type(self).__name__[:-len("Widget")]
        self.layout = QWidget("layout", "QVBoxLayout")

    def setup(self):
        pass

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(sys.modules[type(self).__module__].__file__), "Resources", filename)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[:-len("Logic")]

    def getParameterNode(self):
        """The module's singleton vtkMRMLScriptedModuleNode in slicer.mrmlScene, added on first use."""
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        pass


def _field(name, kind):
    if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
        return property(lambda self: self.parameterNode.GetNodeReference(name),
                        lambda self, node: self.parameterNode.SetNodeReferenceID(
                            name, None if node is None else node.GetID()))
    parse = (lambda text: text == "True") if kind is bool else kind
    return property(lambda self: parse(self.parameterNode.GetParameter(name)),
                    lambda self, value: self.parameterNode.SetParameter(name, str(value)))


def parameterNodeWrapper(cls):
    """The decorated class's annotated fields, stored in the parameter node it wraps (defaults when unset)."""
    fields = typing.get_type_hints(cls)
    defaults = {name: cls.__dict__[name] for name in fields if name in cls.__dict__}

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        for name, value in defaults.items():
            if name not in parameterNode.GetParameterNames():
                setattr(self, name, value)

    members = {name: _field(name, kind) for name, kind in fields.items()}
    members.update(
        __init__=__init__,
        AddObserver=lambda self, *args: self.parameterNode.AddObserver(*args),
        RemoveObserver=lambda self, tag: self.parameterNode.RemoveObserver(tag),
        connectGui=lambda self, ui: object(),
        disconnectGui=lambda self, tag: None)
    return type(cls.__name__, (), members)


def _modules():
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = parameterNodeWrapper
    return {"qt": _qt_module(), "slicer.i18n": i18n, "slicer.ScriptedLoadableModule": scripted,
            "slicer.parameterNodeWrapper": wrapper}


def _importable(name):
    if name in sys.modules:
        return True
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def install(monkeypatch, app_logic):
    """Stand-ins for the missing names (restored by monkeypatch after the test); returns what was stubbed."""
    stubbed = []
    for name, module in _modules().items():
        if not _importable(name):
            monkeypatch.setitem(sys.modules, name, module)
            stubbed.append(name)
    if not hasattr(slicer, "app"):
        major, minor = (int(v) for v in importlib.metadata.version("slicer-core").split(".")[:2])
        monkeypatch.setattr(slicer, "app", types.SimpleNamespace(
            majorVersion=major, minorVersion=minor, slicerHome=sys.prefix,
            testingEnabled=lambda: True, applicationName="Slicer", applicationLogic=lambda: app_logic,
            setOverrideCursor=lambda cursor: None, restoreOverrideCursor=lambda: None), raising=False)
        stubbed.append("slicer.app")
    return stubbed
