"""The KFP components: compiled component.yaml files are current and loadable, thin, documented,
built on the project's launcher image without a kfp install, and never move a model's URI."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import yaml

kfp = pytest.importorskip("kfp")

from kfp import components as kfp_components  # noqa: E402

from components import COMPONENTS  # noqa: E402
from components.__main__ import compile_all  # noqa: E402
from umt.launch.images import LAUNCHER_IMAGE, release_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("credentials", "validate", "plan_shards", "shard_videos", "merge_shards",
         "pretrain_stage1", "pretrain_stage2", "finetune", "evaluate", "report", "cleanup")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.delenv("UMT_IMAGE_REPOSITORY", raising=False)
    folder = tmp_path_factory.mktemp("components")
    compile_all(folder)
    return folder


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_step_has_a_component_in_its_own_folder():
    assert tuple(COMPONENTS) == STEPS
    for name in STEPS:
        assert (ROOT / "components" / name / "component.py").is_file()
        assert (ROOT / "components" / name / "component.yaml").is_file()


@pytest.mark.parametrize("name", STEPS)
def test_component_yaml_is_current(name, fresh):
    """Fails when a component changed but `python -m components` was not run."""
    checked_in = (ROOT / "components" / name / "component.yaml").read_text()
    assert (fresh / name / "component.yaml").read_text() == checked_in, (
        f"components/{name}/component.yaml is out of date: run `python -m components`")


@pytest.mark.parametrize("name", STEPS)
def test_component_yaml_loads_with_its_interface(name):
    loaded = kfp_components.load_component_from_file(
        str(ROOT / "components" / name / "component.yaml"))
    original = COMPONENTS[name]
    assert loaded.name == original.name
    spec, want = loaded.component_spec, original.component_spec
    assert set(spec.inputs or {}) == set(want.inputs or {})
    assert set(spec.outputs or {}) == set(want.outputs or {})


@pytest.mark.parametrize("name", STEPS)
def test_component_is_documented_and_uses_the_launcher_image(name):
    doc = yaml.safe_load((ROOT / "components" / name / "component.yaml").read_text())
    (comp,) = doc["components"].values()
    for kind in ("parameters", "artifacts"):
        for key, spec in (comp.get("inputDefinitions", {}).get(kind) or {}).items():
            assert spec.get("description"), f"{name}: input {key} has no description"
        for key, spec in (comp.get("outputDefinitions", {}).get(kind) or {}).items():
            assert spec.get("description"), f"{name}: output {key} has no description"
    (executor,) = doc["deploymentSpec"]["executors"].values()
    container = executor["container"]
    assert container["image"] == release_image(LAUNCHER_IMAGE)  # pipelines pin it
    assert "pip install" not in " ".join(container["command"]), "install_kfp_package=False"
    assert "resources" not in container  # resources are set by the pipeline, per task


def test_shared_parameter_descriptions_are_filled_in_and_none_is_missing():
    from components.base import SHARED_DOCS, with_shared_docs

    # evaluate's docstring leaves out e.g. nodes and job: the compiled spec has the shared text
    doc = yaml.safe_load((ROOT / "components" / "evaluate" / "component.yaml").read_text())
    (comp,) = doc["components"].values()
    assert "        nodes: " not in inspect.getsource(COMPONENTS["evaluate"].python_func)
    assert comp["inputDefinitions"]["parameters"]["nodes"]["description"] == SHARED_DOCS["nodes"]
    assert comp["outputDefinitions"]["artifacts"]["job"]["description"] == SHARED_DOCS["job"]
    # its own wording wins over the shared one
    assert comp["inputDefinitions"]["parameters"]["node_pool"]["description"] != \
        SHARED_DOCS["node_pool"]

    def step(job: "Output[Artifact]", task: str, nodes: int = 1):  # noqa: F821 (only read as text)
        """Does a thing.

        Args:
            task: What to do.
        """

    filled = with_shared_docs(step)
    assert f"Args:\n    task: What to do.\n    nodes: {SHARED_DOCS['nodes']}\n" in filled
    assert filled.endswith(f"Returns:\n    job: {SHARED_DOCS['job']}\n")

    def bad(task: str, colour: str = ""):
        """Does a thing.

        Args:
            task: What to do.
        """

    with pytest.raises(TypeError, match="parameter 'colour' has no description"):
        with_shared_docs(bad)


@pytest.mark.parametrize("name", STEPS)
def test_component_bodies_are_thin_and_never_set_a_uri(name):
    """No training or data logic in components/: a component imports umt and calls one
    function; and no component assigns an artifact's URI (the backend rejects URIs outside
    the pipeline root)."""
    func = COMPONENTS[name].python_func
    tree = ast.parse(inspect.getsource(func))
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    body = fn.body[1:]  # after the docstring
    calls = [n for n in body if isinstance(n, (ast.Expr, ast.Return))
             and isinstance(n.value, ast.Call)]  # a call, or returning one (credentials)
    assert len(calls) == 1 and len(body) <= 3, f"{name} should call one umt function"
    imports = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports and all(getattr(n, "module", "").startswith("umt.") for n in imports)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            assert not any(isinstance(t, ast.Attribute) and t.attr == "uri" for t in targets)


def test_steps_library_never_sets_uri_and_never_imports_kfp():
    for path in (ROOT / "umt" / "pipeline").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                assert not any(isinstance(t, ast.Attribute) and t.attr == "uri"
                               for t in node.targets), path
    # The component bodies' library runs where kfp may be missing (and must not need it).
    for name in ("plan.py", "steps.py", "validate.py"):
        text = (ROOT / "umt" / "pipeline" / name).read_text()
        assert "import kfp" not in text and "from kfp" not in text, name


def test_the_readme_reuse_example_compiles_and_keeps_gpus_off_the_task_pods(tmp_path,
                                                                              monkeypatch):
    text = (ROOT / "components" / "README.md").read_text()
    (code,) = [b for b in text.split("```python\n")[1:] if "load_component_from_file" in b]
    code = code.split("```")[0].replace('"components/', f'"{ROOT}/components/')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "components/README.md", "exec", dont_inherit=True), {})
    docs = list(yaml.safe_load_all((tmp_path / "my_stage1.yaml").read_text()))
    spec, platform = docs[0], docs[1]
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["pretrain-stage1"]["dependentTasks"] == ["shard-videos"]
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "accelerator" not in executor["container"].get("resources", {})
    assert tasks["pretrain-stage1"]["inputs"]["parameters"]["gpus_per_node"][
        "runtimeValue"]["constant"] == 8
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all("secretAsEnv" in e for e in k8s.values())
