"""What the components call (umt.pipeline.plan / steps / validate), run in-process on real
data, with kfp's own artifact classes as the artifacts."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from umt.data import dataset_json
from umt.data.synthetic import write_dataset
from umt.pipeline import plan as planning
from umt.pipeline import steps
from umt.pipeline.fingerprint import fingerprint
from umt.pipeline.validate import InvalidPipelineSettings, Settings, validate

dsl = pytest.importorskip("kfp.dsl")


@pytest.fixture(autouse=True)
def local_backend(monkeypatch):
    monkeypatch.setenv(planning.BACKEND_ENV, "local")
    monkeypatch.delenv("KFP_RUN_ID", raising=False)


def artifact(kind, folder: Path, name: str):
    return getattr(dsl, kind)(name=name, uri=str(folder / name), metadata={})


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    return Path(write_dataset(str(folder), 8, num_frames=8, size=32))


@pytest.fixture(scope="module")
def sharded(videos, tmp_path_factory):
    """The real shard step on 8 synthetic clips."""
    out = tmp_path_factory.mktemp("shard")
    ds = artifact("Dataset", out, "dataset")
    meta = steps.shard(str(videos), "", str(out / "prefix"), classes=str(videos.parent /
                       "classes.txt"), samples_per_shard=4, dataset=ds)
    return ds, meta, out


def tiny(**kw) -> Settings:
    base = dict(output_prefix="", model_size="tiny", nodes=2, gpus_per_node=0,
                downstream_nodes=2, node_pool="cpu", run_stage2=False, tasks=[])
    return Settings(**{**base, **kw})


# -- plan ------------------------------------------------------------------------------------
def test_output_folders_are_stable_and_follow_the_config(tmp_path):
    a = planning.plan_step("stage1", "tiny", str(tmp_path), data="/d/dataset.json")
    b = planning.plan_step("stage1", "tiny", str(tmp_path), data="/d/dataset.json")
    assert a.output_dir == b.output_dir == str(tmp_path / f"stage1-{a.config_hash}")
    assert a.overrides == b.overrides
    changed = [planning.plan_step("stage1", "tiny", str(tmp_path), data="/d/dataset.json",
                                  steps=7).output_dir,
               planning.plan_step("stage1", "tiny", str(tmp_path), data="/e/dataset.json").output_dir,
               planning.plan_step("stage1", "tiny", str(tmp_path), data="/d/dataset.json",
                                  parent="s3://b/other").output_dir,
               planning.plan_step("stage1", "tiny", str(tmp_path), data="/d/dataset.json",
                                  extra=["optim.base_lr=0.5"]).output_dir]
    assert len({a.output_dir, *changed}) == 5
    # The parent's checkpoint is added to the job, not hashed (it is not known in advance).
    assert a.job_overrides("s3://b/ck.pt")[-1] == "model.pretrained=s3://b/ck.pt"


def test_plan_refuses_pipeline_managed_keys_and_unknown_sizes(tmp_path):
    with pytest.raises(ValueError, match="train.output_dir is set by the pipeline"):
        planning.plan_step("stage1", "tiny", str(tmp_path), data="x", extra=["train.output_dir=y"])
    with pytest.raises(ValueError, match="model_size='huge' is not one of tiny, base, large"):
        planning.plan_step("stage1", "huge", str(tmp_path), data="x")


@pytest.mark.parametrize("size", list(planning.MODEL_SIZES))
def test_every_offered_model_size_plans_every_stage(size, videos, tmp_path):
    """What the pipeline offers as model_size has a preset in every stage of the catalogue:
    validation plans (loads and renders) every job of the full DAG."""
    from umt import catalogue

    s = tiny(output_prefix=str(tmp_path), input_videos=str(videos), model_size=size,
             run_stage2=True, tasks=catalogue.tasks())
    result = validate(s)
    assert set(result["steps"]) == set(catalogue.STAGES)
    assert all(step["config"] == planning.MODEL_SIZES[size]
               for step in result["steps"].values())


def test_stages_reading_several_corpora_get_a_list():
    from umt.configs.schema import DataConfig, VLDataConfig

    @dataclasses.dataclass
    class VL:
        data: VLDataConfig = dataclasses.field(default_factory=VLDataConfig)

    @dataclasses.dataclass
    class One:
        data: DataConfig = dataclasses.field(default_factory=DataConfig)

    assert "sources" in planning._data_fields(VL) and "source" in planning._data_fields(One)
    assert planning.data_overrides("stage1", "s3://b/d/dataset.json") == [
        "data.source=s3://b/d/dataset.json"]
    assert planning.data_overrides("stage1", "/a b/dataset.json") == [
        'data.source="/a b/dataset.json"']  # quoted where OmegaConf would misread it


def test_job_backend_is_the_cluster_only_inside_a_pod(monkeypatch):
    monkeypatch.delenv(planning.BACKEND_ENV)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert planning.job_backend() == "local"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert planning.job_backend() == "cluster"
    monkeypatch.setenv(planning.BACKEND_ENV, "local")
    assert planning.job_backend() == "local"
    monkeypatch.setenv(planning.BACKEND_ENV, "docker")
    with pytest.raises(ValueError, match="must be 'cluster' or 'local'"):
        planning.job_backend()


def test_the_job_backend_parameter_picks_the_kind_of_job_not_where_it_runs(monkeypatch):
    """job_backend=trainjob|pytorchjob|cluster: on a cluster that kind; locally the local
    executor of that kind (never the cluster from a laptop, never local from a pod)."""
    monkeypatch.setenv(planning.BACKEND_ENV, "local")
    assert [planning.job_backend(k) for k in planning.JOB_KINDS] == [
        "local", "local-trainjob", "local"]
    monkeypatch.setenv(planning.BACKEND_ENV, "cluster")
    assert [planning.job_backend(k) for k in planning.JOB_KINDS] == [
        "cluster", "trainjob", "pytorchjob"]
    with pytest.raises(ValueError, match="job_backend='local': must be one of cluster, "
                                         "trainjob, pytorchjob"):
        planning.job_backend("local")


# -- validate --------------------------------------------------------------------------------
def test_validate_plans_exactly_what_the_steps_will_run(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sentinel-secret-value-123")
    s = tiny(output_prefix=str(tmp_path), input_videos=str(videos), stage1_steps=3)
    result = validate(s)
    assert result["backend"] == "local" and set(result["steps"]) == {"stage1"}
    assert "stage2" in result["skipped"] and "eval-action" in result["skipped"]
    prints = result["fingerprints"]
    assert prints["data"] == fingerprint(str(videos))
    dataset = planning.dataset_dir(str(tmp_path), str(videos), samples_per_shard=1000,
                                   short_side=320, fingerprint=prints["data"])
    assert result["dataset"] == f"{dataset}/dataset.json"
    stage1 = result["steps"]["stage1"]
    want = planning.plan_step("stage1", "tiny", str(tmp_path), data=result["dataset"], steps=3,
                              data_fingerprint=prints["data"])
    assert stage1["output_dir"] == want.output_dir
    job = stage1["job"]
    assert "kind: PyTorchJob" in job and "secretKeyRef" in job and "umt-s3" in job
    assert "sentinel-secret-value-123" not in json.dumps(result)


def test_validate_reports_every_problem_at_once(videos, tmp_path, monkeypatch):
    s = tiny(output_prefix=str(tmp_path), input_videos=str(tmp_path / "missing.csv"),
             node_pool="cpux", tasks=["action", "qa", "speech"], nodes=0,
             stage1_overrides=["train.stepz=3"])
    with pytest.raises(InvalidPipelineSettings) as err:
        validate(s)
    text = str(err.value)
    assert "nothing was started" in text
    assert "unknown node pool 'cpux'" in text
    assert "nodes=0 must be >= 1" in text
    assert f"input_videos {tmp_path / 'missing.csv'} does not exist" in text
    assert "task qa needs the Stage 2: vision-language pretraining model" in text
    assert ("tasks: 'speech' not among the downstream tasks (action, retrieval, qa, ava, mc)"
            in text)
    assert "stepz" in text  # the config typo, named


def test_validate_needs_data_and_s3_on_a_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv(planning.BACKEND_ENV, "cluster")
    with pytest.raises(InvalidPipelineSettings) as err:
        validate(tiny(output_prefix=str(tmp_path)), cluster_checks=False)
    assert "no data: set input_videos" in str(err.value)
    assert "must be an s3:// prefix on a cluster" in str(err.value)


# -- steps -----------------------------------------------------------------------------------
def test_shard_writes_a_portable_dataset_artifact(sharded, videos):
    ds, meta, out = sharded
    assert meta["num_samples"] == 8 and meta["num_shards"] == 2 and meta["num_failed"] == 0
    assert ds.metadata["dataset_json"] == meta["dataset_json"]
    assert meta["dataset_json"].startswith(str(out / "prefix" / "datasets" / "manifest-"))
    info = dataset_json.from_dict(json.loads(Path(ds.path).read_text()), location=ds.path)
    assert all(Path(uri).is_file() for uri in info.shard_uris())  # absolute: works anywhere
    assert info.num_samples == 8 and len(info.classes) == 4
    # An existing dataset is described, not re-sharded.
    again = artifact("Dataset", out, "again")
    meta2 = steps.shard("", meta["dataset_json"], str(out / "other"), dataset=again)
    assert meta2["dataset_json"] == meta["dataset_json"] and not (out / "other").exists()


def test_the_shard_fan_out_plans_shards_parts_and_merges(videos, tmp_path):
    """plan_shards -> shard (per part) -> merge_shards, as the pipeline's tasks call them;
    validate plans the folder they write; one part is today's single shard step."""
    prefix, classes = str(tmp_path / "prefix"), str(videos.parent / "classes.txt")
    kw = dict(classes=classes, samples_per_shard=4)
    fp = fingerprint(str(videos))  # validate's data_fingerprint
    plan = steps.plan_shards(str(videos), "", shard_parts=3, fingerprint=fp)
    assert [p["part"] for p in plan] == [0, 1, 2] and {p["num_parts"] for p in plan} == {3}
    assert len(fp) == 16 and {p["fingerprint"] for p in plan} == {fp}
    for p in plan:
        meta = steps.shard(str(videos), "", prefix, part=p["part"], num_parts=3,
                           fingerprint=fp, dataset=artifact("Dataset", tmp_path,
                                                                  f"part{p['part']}"), **kw)
        assert (meta["part"], meta["num_parts"]) == (p["part"], 3)
        assert meta["dataset_json"].endswith(f"part-0000{p['part']}-of-00003/part.json")
    # The loop hands items over as JSON numbers (kfp.local: 3.0 for 3).
    floats = [{**p, "part": float(p["part"]), "num_parts": 3.0} for p in plan]
    merged = artifact("Dataset", tmp_path, "merged")
    meta = steps.merge_shards(str(videos), "", prefix, shard_plan=floats, dataset=merged, **kw)
    assert meta["num_samples"] == 8 and len(meta["classes"]) == 4
    folder = Path(meta["dataset_json"]).parent
    assert sorted(p.name for p in folder.glob("part-*")) == [
        "part-00000-of-00003", "part-00001-of-00003", "part-00002-of-00003"]
    # validate plans exactly this folder (the report reads the stages' records by the plan).
    planned = validate(tiny(output_prefix=prefix, input_videos=str(videos), classes=classes,
                            samples_per_shard=4, shard_parts=3))
    assert planned["dataset"] == meta["dataset_json"]

    # One part: today's single shard step, byte for byte, and the merge publishes it as is.
    one = steps.plan_shards(str(videos), "", shard_parts=1, fingerprint=fp)
    assert one == [{"part": 0, "num_parts": 1, "fingerprint": fp}]
    single = steps.shard(str(videos), "", prefix, fingerprint=fp,
                         dataset=artifact("Dataset", tmp_path, "single"), **kw)
    published = artifact("Dataset", tmp_path, "published")
    assert steps.merge_shards(str(videos), "", prefix, shard_plan=one, dataset=published,
                              **kw) == single
    today = tmp_path / "today"
    steps.shard(str(videos), "", str(today), dataset=artifact("Dataset", tmp_path, "t"), **kw)
    (today_json,) = today.glob("datasets/*/dataset.json")
    assert Path(single["dataset_json"]).read_text() == today_json.read_text()
    # The folder is keyed by the content fingerprint (computed when none is given), not by
    # the part count: the same samples, whichever way they were sharded.
    assert Path(single["dataset_json"]).parent == folder
    assert folder.name == today_json.parent.name

    # Nothing to shard: one part, no fingerprint; a bad count is refused.
    assert steps.plan_shards("", meta["dataset_json"], shard_parts=8, fingerprint="f") == [
        {"part": 0, "num_parts": 1, "fingerprint": "f"}]
    with pytest.raises(ValueError, match="shard_parts=0"):
        steps.plan_shards(str(videos), shard_parts=0)


def test_an_edited_manifest_gets_a_new_fingerprint_and_the_old_one_is_refused(videos, tmp_path):
    edited = tmp_path / "manifest.csv"
    lines = videos.read_text().splitlines(keepends=True)
    edited.write_text("".join(lines[:-1]).replace("videos/", f"{videos.parent}/videos/"))
    before = fingerprint(str(edited))  # what validate saw when it planned the run
    edited.write_text(edited.read_text() + lines[-1].replace("videos/", f"{videos.parent}/videos/"))
    assert fingerprint(str(edited)) != before
    with pytest.raises(ValueError, match="changed since it was fingerprinted"):
        steps.shard(str(edited), "", str(tmp_path / "p"), part=0, num_parts=2,
                    fingerprint=before, dataset=artifact("Dataset", tmp_path, "d"))


def test_a_disabled_step_fills_every_output(sharded, tmp_path):
    ds, _, _ = sharded
    outs = [artifact(k, tmp_path, n) for k, n in (("Model", "model"), ("Metrics", "metrics"),
                                                   ("Artifact", "job"))]
    assert steps.train("stage2", dataset=ds, enabled=False, model_size="tiny",
                       output_prefix=str(tmp_path), nodes=2, gpus_per_node=0, node_pool="cpu",
                       model=outs[0], metrics=outs[1], job=outs[2]) == {"skipped": True}
    for a in outs:
        assert Path(a.path).is_file() and a.metadata["skipped"] is True
    # ...and whatever starts from it refuses clearly.
    with pytest.raises(ValueError, match="parent step was skipped"):
        steps.train("finetune-action", dataset=ds, parent=outs[0], model_size="tiny",
                    output_prefix=str(tmp_path), nodes=2, gpus_per_node=0, node_pool="cpu",
                    model=outs[0], metrics=outs[1], job=outs[2])


def test_an_existing_checkpoint_is_registered_not_trained(sharded, tmp_path):
    ds, _, _ = sharded
    ckpt = tmp_path / "given.pt"
    ckpt.write_bytes(b"weights")
    model = artifact("Model", tmp_path, "model")
    meta = steps.train("stage1", dataset=ds, model_size="tiny", existing_checkpoint=str(ckpt),
                       output_prefix=str(tmp_path), nodes=2, gpus_per_node=0, node_pool="cpu",
                       model=model, metrics=artifact("Metrics", tmp_path, "m"),
                       job=artifact("Artifact", tmp_path, "j"))
    assert meta["provided"] is True and meta["identity"] == str(ckpt)
    assert json.loads(Path(model.path).read_text())["checkpoint"] == str(ckpt)
    assert model.metadata["architecture"] == "umt_pretrain_vit_tiny_patch16_224"
    assert model.metadata["num_frames"] == 4 and model.metadata["resolution"] == 64
    assert not list(tmp_path.glob("stage1-*"))  # no job, no output folder


def test_finetune_and_evaluate_check_their_task(sharded, tmp_path):
    ds, _, _ = sharded
    job = dict(model_size="tiny", output_prefix="x", nodes=1, gpus_per_node=0, node_pool="cpu")
    with pytest.raises(ValueError, match="task='speech' has no evaluation stage; tasks with "
                                         "one: action, retrieval, qa, ava, mc"):
        steps.evaluate("speech", model=None, dataset=ds, metrics=None, confusion=None,
                       job=None, **job)
    with pytest.raises(ValueError, match="task='mc' has no fine-tune stage; tasks with one: "
                                         "action, retrieval, qa, ava"):
        steps.finetune("mc", dataset=ds, model=None, metrics=None, job=None, **job)


def test_a_task_not_in_tasks_is_skipped(sharded, tmp_path):
    ds, _, _ = sharded
    outs = [artifact(k, tmp_path, n) for k, n in (("Model", "model"), ("Metrics", "metrics"),
                                                   ("Artifact", "job"))]
    assert steps.finetune("qa", tasks=["action"], dataset=ds, model_size="tiny",
                          output_prefix=str(tmp_path), nodes=2, gpus_per_node=0,
                          node_pool="cpu", model=outs[0], metrics=outs[1],
                          job=outs[2]) == {"skipped": True}
    assert outs[0].metadata["skipped"] is True


def test_metrics_go_to_metadata_and_to_the_file(tmp_path):
    m = artifact("Metrics", tmp_path, "metrics")
    logged = steps.log_metrics(m, {"top1": 71.5, "steps": 3, "loss": None, "name": "x",
                                   "bad": float("nan")}, task="action")
    assert logged == {"top1": 71.5, "steps": 3.0} == m.metadata
    assert json.loads(Path(m.path).read_text()) == {"metrics": logged, "task": "action"}


def test_confusion_matrix_shown_for_the_most_frequent_classes():
    matrix = [[1, 0, 0], [0, 9, 1], [0, 2, 5]]
    names, sub = steps.confusion_subset(matrix, ["a", "b", "c"], limit=2)
    assert names == ["b", "c"] and sub == [[9, 1], [2, 5]]


def test_a_permanently_failed_job_is_not_trained_again_by_a_retry(tmp_path):
    steps._write_failure_marker(str(tmp_path), "run-1", "umt-stage1-x", "job failed: OOM")
    with pytest.raises(RuntimeError, match="not running job umt-stage1-x again: it failed in "
                                           "an earlier attempt.*job failed: OOM"):
        steps._check_failure_marker(str(tmp_path), "run-1")
    steps._check_failure_marker(str(tmp_path), "run-2")  # another run tries again
    steps._check_failure_marker(str(tmp_path), "")  # no run id: no memory of attempts


def test_job_time_comes_from_the_jobs_conditions():
    """From Created to Succeeded, so a retry that adopted a running job counts all of it."""
    from datetime import datetime, timedelta, timezone

    from umt.launch.backends.pytorchjob import job_status, set_condition

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    conditions = set_condition([], "Created", "Created", "")
    conditions = set_condition(conditions, "Succeeded", "Succeeded", "")
    conditions[0].last_transition_time = t0
    conditions[-1].last_transition_time = t0 + timedelta(hours=2)

    class Result:
        pass

    result = Result()
    result.status = job_status("j", conditions)
    assert steps._job_seconds(result, measured=5.0) == 7200.0
    conditions[-1].last_transition_time = "2026-01-01T03:00:00Z"  # raw API strings too
    result.status = job_status("j", conditions)
    assert steps._job_seconds(result, measured=5.0) == 10800.0
    result.status = job_status("j", [])
    assert steps._job_seconds(result, measured=5.0) == 5.0


def test_irsa_pods_reference_a_secret_name_that_is_valid():
    """Issue 16.2: s3_secret="" (IRSA / workload identity) must not reach the pods as
    secretKeyRef.name "" (refused by the API server): the credentials task names a Secret
    that does not exist instead, which the pods' optional reference skips."""
    from umt.launch.values import InvalidOptionError
    from umt.pipeline.validate import NO_SECRET, secret_reference

    assert secret_reference("umt-s3") == "umt-s3"
    assert secret_reference("") == NO_SECRET
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", NO_SECRET)  # a valid Secret name
    with pytest.raises(InvalidOptionError, match="--s3-secret"):
        secret_reference("Not A Name")


def test_content_fingerprints_see_files_changed_in_place(tmp_path):
    """Issue 16.5: the same path with other content is another input."""
    f = tmp_path / "train.csv"
    f.write_text("path,label\na.mp4,0\n")
    first = fingerprint(str(f))
    assert fingerprint(str(f)) == first and len(first) == 16
    f.write_text("path,label\na.mp4,1\n")  # a label edited in place
    assert fingerprint(str(f)) != first
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"x")
    listed = fingerprint(str(folder))
    (folder / "b.mp4").write_bytes(b"y")
    assert fingerprint(str(folder)) != listed
    assert fingerprint("") == ""
    with pytest.raises(FileNotFoundError):
        fingerprint(str(tmp_path / "missing.csv"))


def test_fingerprints_reach_the_folders_validate_and_the_steps_plan(sharded, tmp_path):
    """An existing dataset.json edited in place (same path): validate plans new folders, and
    the training step -- given validate's fingerprint through the Dataset artifact -- lands in
    the very folder validate planned; the given checkpoint's content is part of its child's."""
    ds, meta, out = sharded
    copy = tmp_path / "data" / "dataset.json"
    copy.parent.mkdir()
    original = Path(meta["dataset_json"]).read_text()
    copy.write_text(original)
    ckpt = tmp_path / "given.pt"
    ckpt.write_bytes(b"weights")

    def plan():
        s = tiny(output_prefix=str(tmp_path / "out"), existing_dataset=str(copy),
                 existing_stage1_checkpoint=str(ckpt), tasks=["action"])
        return validate(s)

    before = plan()
    assert plan()["steps"] == before["steps"]  # stable while nothing changes
    # The steps plan the same folders from validate's fingerprints.
    described = artifact("Dataset", tmp_path, "described")
    steps.shard("", str(copy), str(tmp_path / "out"), fingerprint=before["fingerprints"]["data"],
                dataset=described)
    assert described.metadata["fingerprint"] == before["fingerprints"]["data"]
    model = artifact("Model", tmp_path, "model")
    steps.train("stage1", dataset=described, model_size="tiny",
                existing_checkpoint=str(ckpt),
                checkpoint_fingerprints=before["fingerprints"]["checkpoints"],
                output_prefix=str(tmp_path / "out"), nodes=2, gpus_per_node=0,
                node_pool="cpu", model=model, metrics=artifact("Metrics", tmp_path, "m"),
                job=artifact("Artifact", tmp_path, "j"))
    tuned = planning.plan_step("finetune-action", "tiny", str(tmp_path / "out"),
                               data=str(copy), parent=model.metadata["identity"],
                               data_fingerprint=described.metadata["fingerprint"])
    assert tuned.output_dir == before["steps"]["finetune-action"]["output_dir"]
    # Edited in place: new folders for what reads it.
    body = json.loads(copy.read_text())
    body["num_failed"] = body.get("num_failed", 0) + 1
    copy.write_text(json.dumps(body))
    edited = plan()
    assert edited["fingerprints"]["data"] != before["fingerprints"]["data"]
    assert edited["steps"]["finetune-action"]["output_dir"] != \
        before["steps"]["finetune-action"]["output_dir"]
    # A checkpoint replaced in place moves its children too.
    copy.write_text(original)  # the same bytes again: the same folders
    assert plan()["steps"] == before["steps"]
    ckpt.write_bytes(b"other weights")
    assert plan()["steps"]["finetune-action"]["output_dir"] != \
        before["steps"]["finetune-action"]["output_dir"]


def test_the_default_output_prefix_is_a_placeholder_nobody_owns(s3_env, sharded):
    """Issue 16.8: the pipelines' default bucket must not be a real (global) bucket: it is an
    invalid bucket name, and validate names the setting to fix."""
    from umt.pipeline.validate import PLACEHOLDER_BUCKET

    _, meta, _ = sharded
    default = "s3://EDIT_ME_BUCKET/umt/runs"
    assert PLACEHOLDER_BUCKET in default
    assert not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", PLACEHOLDER_BUCKET)
    with pytest.raises(InvalidPipelineSettings, match="is the placeholder default"):
        validate(tiny(output_prefix=default, existing_dataset=meta["dataset_json"]))


def test_platform_settings_reach_the_planned_jobs(videos, tmp_path):
    """Issue 16.7: kueue_queue, priority_class and job_namespace are pipeline parameters;
    validate renders every job with them, as the launchers will."""
    import yaml

    s = tiny(output_prefix=str(tmp_path), input_videos=str(videos), kueue_queue="team-a",
             priority_class="research-high", job_namespace="training")
    job = yaml.safe_load(validate(s)["steps"]["stage1"]["job"])
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["metadata"]["namespace"] == "training"
    for rspec in job["spec"]["pytorchReplicaSpecs"].values():
        assert rspec["template"]["spec"]["priorityClassName"] == "research-high"
    with pytest.raises(InvalidPipelineSettings, match="--kueue-queue"):
        validate(tiny(output_prefix=str(tmp_path), input_videos=str(videos),
                      kueue_queue="Team A"))
