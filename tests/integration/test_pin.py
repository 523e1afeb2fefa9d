"""`digestguard pin` on real manifests, resolving through boto3 over HTTP to the moto ECR
server and through the OCI client to a real CNCF distribution registry.

The golden tree (`pin-golden/tree`, expected output in `pin-golden/expected`) is a
kustomize-style layout; `DIGESTGUARD_UPDATE_GOLDEN=1` rewrites the expected files.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import controlplane, ecr_emulator, oci_registry

HERE = Path(__file__).resolve().parent
GOLDEN_TREE = HERE / "pin-golden" / "tree"
GOLDEN_EXPECTED = HERE / "pin-golden" / "expected"
HOST = ecr_emulator.registry_host()
NO_DOCKER_CONFIG = HERE / "pin-golden" / "no-docker-config"
"""A folder that does not exist: the tests do not read the developer's credentials."""
GOLDEN_REPOSITORIES = {"golden/web": "v1", "golden/worker": "v2", "golden/sidecar": "1.0"}


def pin(
    moto_url: str, *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = (
        os.environ
        | ecr_emulator.FAKE_CREDENTIALS
        | {"AWS_DEFAULT_REGION": ecr_emulator.REGION, "DOCKER_CONFIG": str(NO_DOCKER_CONFIG)}
    )
    return subprocess.run(
        [sys.executable, "-m", "webhook", "pin", "--ecr-endpoint-url", moto_url, *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def seed(moto_url: str, repository: str, tag: str) -> str:
    """Push an image whose manifest depends only on `repository`; return its digest."""
    client = ecr_emulator.ecr_client(moto_url)
    manifest = ecr_emulator.docker_manifest(seed=repository)
    with contextlib.suppress(client.exceptions.ImageAlreadyExistsException):
        ecr_emulator.seed_image(client, repository, tag, manifest, ecr_emulator.DOCKER_MANIFEST)
    return ecr_emulator.digest_of(manifest)


def fresh(moto_url: str, tag: str = "v1") -> tuple[str, str]:
    """A new repository holding `tag`: (image without tag, digest)."""
    name = f"pin/{uuid.uuid4().hex[:8]}"
    return f"{HOST}/{name}", seed(moto_url, name, tag)


@pytest.fixture
def golden(moto_server: ecr_emulator.MotoServer, tmp_path: Path) -> Path:
    for repository, tag in GOLDEN_REPOSITORIES.items():
        seed(moto_server.url, repository, tag)
    tree = tmp_path / "tree"
    shutil.copytree(GOLDEN_TREE, tree)
    return tree


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def deployment(image: str, *, name: str = "app", comment: str = "# keep") -> str:
    return f"""{comment}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  template:
    spec:
      containers:
        - name: app
          image: {image}
"""


# --------------------------------------------------------------------------
# Rewriting in place
# --------------------------------------------------------------------------


def test_a_kustomize_tree_is_pinned_exactly_as_the_golden_files_say(
    moto_server: ecr_emulator.MotoServer, golden: Path
) -> None:
    result = pin(moto_server.url, str(golden))
    assert result.returncode == 0, result.stderr
    if os.environ.get("DIGESTGUARD_UPDATE_GOLDEN") == "1":
        shutil.rmtree(GOLDEN_EXPECTED, ignore_errors=True)
        shutil.copytree(golden, GOLDEN_EXPECTED)
    assert files_of(golden) == files_of(GOLDEN_EXPECTED)


def test_comments_quoting_and_layout_survive_and_only_the_image_changes(
    moto_server: ecr_emulator.MotoServer, golden: Path
) -> None:
    before = (golden / "base" / "deployment.yaml").read_text()
    assert pin(moto_server.url, str(golden)).returncode == 0
    after = (golden / "base" / "deployment.yaml").read_text()
    web = seed(moto_server.url, "golden/web", "v1")
    assert after == before.replace(
        f'"{HOST}/golden/web:v1"   # pinned by CI', f'"{HOST}/golden/web:v1@{web}"   # pinned by CI'
    ).replace(
        f'"{HOST}/golden/worker:v2", args',
        f'"{HOST}/golden/worker:v2@{seed(moto_server.url, "golden/worker", "v2")}", args',
    ).replace(
        f"image: {HOST}/golden/sidecar:1.0\n",
        f"image: {HOST}/golden/sidecar:1.0@{seed(moto_server.url, 'golden/sidecar', '1.0')}\n",
    )
    assert "# The web front end. Keep this comment." in after


def test_files_without_anything_to_pin_are_not_rewritten(
    moto_server: ecr_emulator.MotoServer, golden: Path
) -> None:
    untouched = [golden / "base" / "service.yaml", golden / "base" / "kustomization.yaml"]
    stamps = {path: path.stat().st_mtime_ns for path in untouched}
    os.utime(untouched[0], ns=(1, 1))
    os.utime(untouched[1], ns=(1, 1))
    assert pin(moto_server.url, str(golden)).returncode == 0
    assert all(path.stat().st_mtime_ns == 1 for path in stamps)


def test_an_already_pinned_image_is_verified_and_not_rewritten(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    image, digest = fresh(moto_server.url)
    manifest = tmp_path / "app.yaml"
    manifest.write_text(deployment(f"{image}:v1@{digest}"))
    before = manifest.read_bytes()
    os.utime(manifest, ns=(1, 1))
    result = pin(moto_server.url, str(manifest))
    assert result.returncode == 0, result.stderr
    assert manifest.read_bytes() == before
    assert manifest.stat().st_mtime_ns == 1


def test_a_missing_tag_fails_while_the_other_images_are_still_pinned(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    image, digest = fresh(moto_server.url)
    (tmp_path / "good.yaml").write_text(deployment(f"{image}:v1"))
    (tmp_path / "bad.yaml").write_text(deployment(f"{image}:nope", name="broken"))
    result = pin(moto_server.url, str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'bad.yaml'}:11: containers[app] in Deployment broken:" in result.stderr
    assert "tag 'nope' not found" in result.stderr
    assert f"image: {image}:v1@{digest}\n" in (tmp_path / "good.yaml").read_text()
    assert (tmp_path / "bad.yaml").read_text() == deployment(f"{image}:nope", name="broken")


def test_standard_input_is_pinned_to_standard_output_passing_other_documents_through(
    moto_server: ecr_emulator.MotoServer,
) -> None:
    image, digest = fresh(moto_server.url)
    stream = "kind: ConfigMap\napiVersion: v1\ndata: {x: y}\n---\n" + deployment(f"{image}:v1")
    result = pin(moto_server.url, "-", stdin=stream)
    assert result.returncode == 0, result.stderr
    assert result.stdout == stream.replace(f"{image}:v1", f"{image}:v1@{digest}")


def test_the_items_of_a_list_are_pinned_including_ephemeral_containers(
    moto_server: ecr_emulator.MotoServer,
) -> None:
    image, digest = fresh(moto_server.url)
    stream = f"""apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {{name: debugged}}
  spec:
    containers: [{{name: app, image: {image}@{digest}}}]
    ephemeralContainers:
    - name: debugger
      image: {image}:v1
"""
    result = pin(moto_server.url, "-", stdin=stream)
    assert result.returncode == 0, result.stderr
    assert result.stdout == stream.replace(f"image: {image}:v1", f"image: {image}:v1@{digest}")


def test_stdout_mode_leaves_the_files_as_they_are(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    image, digest = fresh(moto_server.url)
    manifest = tmp_path / "app.yml"
    manifest.write_text(deployment(f"{image}:v1"))
    result = pin(moto_server.url, "-o", "-", str(manifest))
    assert result.returncode == 0, result.stderr
    assert f"image: {image}:v1@{digest}" in result.stdout
    assert manifest.read_text() == deployment(f"{image}:v1")


def test_the_images_of_the_charts_own_rendered_output_are_pinned(
    moto_server: ecr_emulator.MotoServer, helm: Path
) -> None:
    repository = f"chart/{uuid.uuid4().hex[:8]}"
    digest = seed(moto_server.url, repository, "v1")
    rendered = subprocess.run(
        [
            str(helm),
            "template",
            "dg",
            str(HERE.parents[1] / "charts" / "digestguard"),
            "--namespace",
            "guard-system",
            "--set",
            f"image.repository={HOST}/{repository}",
            "--set",
            "image.tag=v1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = pin(moto_server.url, "-", stdin=rendered)
    assert result.returncode == 0, result.stderr
    assert result.stdout == rendered.replace(
        f"{HOST}/{repository}:v1", f"{HOST}/{repository}:v1@{digest}"
    )
    images = [
        container["image"]
        for document in yaml.safe_load_all(result.stdout)
        if document and document.get("kind") == "Deployment"
        for container in document["spec"]["template"]["spec"]["containers"]
    ]
    assert images == [f"{HOST}/{repository}:v1@{digest}"]
    assert "# Source: digestguard/templates/" in result.stdout


@pytest.fixture
def helm() -> Path:
    found = controlplane.find_helm(controlplane.find_assets())
    if found is None:
        if os.environ.get("DIGESTGUARD_REQUIRE_E2E") == "1":
            pytest.fail("helm REQUIRED: hack/envtest-assets.sh builds it", pytrace=False)
        pytest.skip("CHART TEST SKIPPED: helm not found (hack/envtest-assets.sh builds it)")
    return found


# --------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------


def test_check_lists_every_unpinned_and_missing_image_by_file_and_line_and_changes_nothing(
    moto_server: ecr_emulator.MotoServer, golden: Path
) -> None:
    image, _ = fresh(moto_server.url)
    (golden / "overlays" / "prod" / "missing.yaml").write_text(
        deployment(f"{image}:gone", name="gone")
    )
    before = files_of(golden)
    result = pin(moto_server.url, "--check", str(golden))
    assert result.returncode == 1
    assert files_of(golden) == before
    deployment_file = golden / "base" / "deployment.yaml"
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(golden))]
    assert lines == [
        f"{deployment_file}:19: initContainers[migrate] in Deployment shop/web: image"
        f" '{HOST}/golden/worker:v2' is not pinned by digest (pinned:"
        f" {HOST}/golden/worker:v2@{seed(moto_server.url, 'golden/worker', 'v2')})",
        f"{deployment_file}:22: containers[web] in Deployment shop/web: image"
        f" '{HOST}/golden/web:v1' is not pinned by digest (pinned:"
        f" {HOST}/golden/web:v1@{seed(moto_server.url, 'golden/web', 'v1')})",
        f"{deployment_file}:27: containers[sidecar] in Deployment shop/web: image"
        f" '{HOST}/golden/sidecar:1.0' is not pinned by digest (pinned:"
        f" {HOST}/golden/sidecar:1.0@{seed(moto_server.url, 'golden/sidecar', '1.0')})",
        f"{golden / 'overlays/prod/cronjob.yml'}:14: containers[report] in CronJob report:"
        f" image '{HOST}/golden/worker:v2' is not pinned by digest (pinned:"
        f" {HOST}/golden/worker:v2@{seed(moto_server.url, 'golden/worker', 'v2')})",
        f"{golden / 'overlays/prod/jobs.yaml'}:28: containers[shell] in Pod debug: image"
        f" '{HOST}/golden/web:v1' is not pinned by digest (pinned:"
        f" {HOST}/golden/web:v1@{seed(moto_server.url, 'golden/web', 'v1')})",
        f"{golden / 'overlays/prod/missing.yaml'}:11: containers[app] in Deployment gone:"
        f" image '{image}:gone': tag 'gone' not found"
        f" (ImageNotFound: {_not_found_message(result.stderr, image)})",
    ]


def _not_found_message(stderr: str, image: str) -> str:
    """moto's wording of ImageNotFound, as the output quotes it (not ours to fix)."""
    tail = stderr.split(f"'{image}:gone': tag 'gone' not found (ImageNotFound: ", 1)[1]
    return tail.split(")\n", 1)[0].removesuffix(")")


def test_check_exits_0_when_every_image_is_pinned_and_exists(
    moto_server: ecr_emulator.MotoServer, golden: Path
) -> None:
    assert pin(moto_server.url, str(golden)).returncode == 0
    result = pin(moto_server.url, "--check", str(golden))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# --------------------------------------------------------------------------
# --policy
# --------------------------------------------------------------------------


def test_a_policy_pins_only_the_images_it_covers_and_keep_tag_false_drops_the_tag(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    covered, covered_digest = fresh(moto_server.url)
    other, _ = fresh(moto_server.url)
    (tmp_path / "policy.yaml").write_text(
        f"""apiVersion: digestguard.io/v1alpha1
kind: DigestPolicy
metadata: {{name: drop-tag}}
spec:
  namespaceSelector: {{matchLabels: {{team: shop}}}}
  images: ["{covered}"]
  keepTag: false
"""
    )
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "a.yaml").write_text(
        deployment(f"{covered}:v1") + "---\n" + deployment(f"{other}:v1", name="other")
    )
    result = pin(moto_server.url, "--policy", str(tmp_path / "policy.yaml"), str(manifests))
    assert result.returncode == 0, result.stderr
    text = (manifests / "a.yaml").read_text()
    assert f"image: {covered}@{covered_digest}\n" in text
    assert f"image: {other}:v1\n" in text
    assert "DigestPolicy drop-tag: namespaceSelector is not matched" in result.stderr


def test_namespace_labels_decide_a_policy_namespace_selector(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    image, _ = fresh(moto_server.url)
    (tmp_path / "policy.yaml").write_text(
        """apiVersion: digestguard.io/v1alpha1
kind: DigestPolicy
metadata: {name: shop-only}
spec:
  namespaceSelector: {matchLabels: {team: shop}}
  images: ["**"]
"""
    )
    manifest = tmp_path / "app.yaml"
    manifest.write_text(deployment(f"{image}:v1"))
    result = pin(
        moto_server.url,
        "--check",
        "--policy",
        str(tmp_path / "policy.yaml"),
        "--namespace-labels",
        "team=billing",
        str(manifest),
    )
    assert result.returncode == 0, result.stderr


def test_an_invalid_policy_is_refused_naming_its_file_line_and_field(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    (tmp_path / "policy.yaml").write_text(
        "# first\n---\napiVersion: digestguard.io/v1alpha1\nkind: DigestPolicy\n"
        "metadata: {name: bad}\nspec: {images: ['**'], action: Rewrite}\n"
    )
    manifest = tmp_path / "app.yaml"
    manifest.write_text(deployment("app:v1"))
    result = pin(moto_server.url, "--policy", str(tmp_path / "policy.yaml"), str(manifest))
    assert result.returncode == 64
    assert f"{tmp_path / 'policy.yaml'}:3: DigestPolicy bad: spec.action: 'Rewrite'" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_malformed_yaml_is_refused_with_file_and_line_and_nothing_is_written(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    image, _ = fresh(moto_server.url)
    (tmp_path / "a.yaml").write_text(deployment(f"{image}:v1"))
    broken = "kind: Pod\nspec:\n  containers:\n  - name: x\n    image: [oops\n"
    (tmp_path / "b.yaml").write_text(broken)
    result = pin(moto_server.url, str(tmp_path))
    assert result.returncode == 64
    assert result.stderr.startswith(f"digestguard pin: {tmp_path / 'b.yaml'}:6: column 1:")
    assert "flow sequence (from line 5)" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "a.yaml").read_text() == deployment(f"{image}:v1")
    assert (tmp_path / "b.yaml").read_text() == broken


def test_a_duplicate_key_is_refused_with_its_line(moto_server: ecr_emulator.MotoServer) -> None:
    result = pin(moto_server.url, "-", stdin="kind: Pod\nspec: {}\nkind: Job\n")
    assert result.returncode == 64
    assert "<stdin>:3: column 1: not valid YAML: while constructing a mapping (from line 1):" in (
        result.stderr
    )
    assert 'duplicate key "kind"' in result.stderr


def test_an_invalid_image_reference_is_reported_with_its_line(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(deployment(f"{HOST}/App:v1"))
    result = pin(moto_server.url, "--check", str(manifest))
    assert result.returncode == 1
    assert f"{manifest}:11: containers[app] in Deployment app: image '{HOST}/App:v1':" in (
        result.stderr
    )
    assert "not a valid reference" in result.stderr


def test_an_image_written_as_a_block_scalar_is_reported_and_left_as_it_is(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    image, digest = fresh(moto_server.url)
    manifest = tmp_path / "app.yaml"
    manifest.write_text(deployment(f">-\n            {image}:v1"))
    before = manifest.read_bytes()
    result = pin(moto_server.url, str(manifest))
    assert result.returncode == 1
    assert f"{manifest}:11: containers[app] in Deployment app: image '{image}:v1' is not" in (
        result.stderr
    )
    assert f"write it as {image}:v1@{digest}" in result.stderr
    assert manifest.read_bytes() == before


def test_an_image_from_a_merge_key_is_reported_with_its_container_not_a_traceback(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    image, digest = fresh(moto_server.url)
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        f"base: &base {{image: {image}:v1}}\nkind: Pod\nmetadata: {{name: p}}\n"
        "spec:\n  containers:\n  - <<: *base\n    name: merged\n"
    )
    before = manifest.read_bytes()
    result = pin(moto_server.url, str(manifest))
    assert result.returncode == 1
    assert f"{manifest}: containers[merged] in Pod p: image '{image}:v1' is not written" in (
        result.stderr
    )
    assert f"write it as {image}:v1@{digest}" in result.stderr
    assert "Traceback" not in result.stderr
    assert manifest.read_bytes() == before


def test_bytes_that_are_not_utf8_are_refused_with_their_line(
    moto_server: ecr_emulator.MotoServer,
) -> None:
    env = os.environ | ecr_emulator.FAKE_CREDENTIALS
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "pin", "--ecr-endpoint-url", moto_server.url, "-"],
        input=b"kind: Pod\nmetadata:\n  name: caf\xe9\n",
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 64
    assert result.stderr == b"digestguard pin: <stdin>:3: not UTF-8 text\n"


def test_a_symbolic_link_stays_a_link_to_the_pinned_file(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    image, digest = fresh(moto_server.url)
    target = tmp_path / "real.yaml"
    target.write_text(deployment(f"{image}:v1"))
    link = tmp_path / "linked.yaml"
    link.symlink_to(target)
    result = pin(moto_server.url, str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert f"image: {image}:v1@{digest}\n" in target.read_text()


def test_an_unknown_flag_is_a_usage_error_not_the_exit_code_of_a_registry_failure(
    moto_server: ecr_emulator.MotoServer,
) -> None:
    result = pin(moto_server.url, "--pin-everything", "-")
    assert result.returncode == 64
    assert "digestguard: error: unrecognized arguments: --pin-everything" in result.stderr


def test_a_path_that_does_not_exist_is_a_usage_error(moto_server: ecr_emulator.MotoServer) -> None:
    result = pin(moto_server.url, "/nonexistent/manifests")
    assert result.returncode == 64
    assert result.stderr == "digestguard pin: /nonexistent/manifests: no such file or directory\n"


# --------------------------------------------------------------------------
# KRM function
# --------------------------------------------------------------------------


def resource_list(image: str, *, config: str = "") -> str:
    return f"""apiVersion: config.kubernetes.io/v1
kind: ResourceList
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
- apiVersion: apps/v1
  kind: Deployment
  metadata:
    name: web
    namespace: shop
    annotations:
      config.kubernetes.io/path: base/deployment.yaml
      config.kubernetes.io/index: '0'
      internal.config.kubernetes.io/path: base/deployment.yaml
      internal.config.kubernetes.io/index: '0'
  spec:
    template:
      spec:
        containers:
        - name: web  # the web container
          image: {image}
{config}"""


def test_a_resource_list_is_pinned_with_results_naming_file_and_resource(
    moto_server: ecr_emulator.MotoServer,
) -> None:
    image, digest = fresh(moto_server.url)
    result = pin(moto_server.url, "--krm", stdin=resource_list(f"{image}:v1"))
    assert result.returncode == 0, result.stderr
    output = yaml.safe_load(result.stdout)
    assert output["kind"] == "ResourceList"
    container = output["items"][1]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{image}:v1@{digest}"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}
    assert output["items"][0] == service
    assert output["results"] == [
        {
            "message": f"containers[web] in Deployment shop/web: pinned '{image}:v1' to"
            f" {image}:v1@{digest}",
            "severity": "info",
            "resourceRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "web",
                "namespace": "shop",
            },
            "field": {"path": "spec.template.spec.containers[0].image"},
            "file": {"path": "base/deployment.yaml", "index": 0},
        }
    ]
    assert "# the web container" in result.stdout


def test_a_resource_list_on_standard_input_is_detected_without_the_flag(
    moto_server: ecr_emulator.MotoServer,
) -> None:
    image, digest = fresh(moto_server.url)
    result = pin(moto_server.url, "-", stdin=resource_list(f"{image}:v1"))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["results"][0]["severity"] == "info"
    assert f"image: {image}:v1@{digest}" in result.stdout


def test_a_resource_list_with_a_missing_image_fails_with_an_error_result(
    moto_server: ecr_emulator.MotoServer,
) -> None:
    image, _ = fresh(moto_server.url)
    result = pin(moto_server.url, "--krm", stdin=resource_list(f"{image}:nope"))
    assert result.returncode == 1
    output = yaml.safe_load(result.stdout)
    [error] = output["results"]
    assert error["severity"] == "error"
    assert "tag 'nope' not found" in error["message"]
    assert error["file"] == {"path": "base/deployment.yaml", "index": 0}
    container = output["items"][1]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{image}:nope"


def test_a_digest_policy_as_function_config_decides_what_is_pinned(
    moto_server: ecr_emulator.MotoServer,
) -> None:
    image, digest = fresh(moto_server.url)
    config = f"""functionConfig:
  apiVersion: digestguard.io/v1alpha1
  kind: DigestPolicy
  metadata: {{name: krm}}
  spec: {{images: ["{image}"], keepTag: false}}
"""
    result = pin(moto_server.url, "--krm", stdin=resource_list(f"{image}:v1", config=config))
    assert result.returncode == 0, result.stderr
    output = yaml.safe_load(result.stdout)
    container = output["items"][1]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{image}@{digest}"


# --------------------------------------------------------------------------
# A real OCI registry (CNCF distribution)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> Iterator[oci_registry.Registry]:
    with oci_registry.running_registry() as running:
        yield running


def test_an_image_of_an_oci_registry_is_pinned_and_its_pinned_form_verified(
    moto_server: ecr_emulator.MotoServer, registry: oci_registry.Registry, tmp_path: Path
) -> None:
    digest = registry.push_image("team/api", "2.1", seed="pin-oci")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: api}}\nspec:\n  containers:\n"
        f"  - name: api\n    image: {registry.image('team/api', '2.1')}  # api\n"
    )
    flags = ("--insecure-registries", registry.host)
    result = pin(moto_server.url, *flags, str(manifest))
    assert result.returncode == 0, result.stderr
    assert f"image: {registry.image('team/api', '2.1', digest)}  # api\n" in manifest.read_text()
    check = pin(moto_server.url, *flags, "--check", str(manifest))
    assert check.returncode == 0, check.stderr


def test_a_pinned_digest_the_registry_does_not_have_is_reported_with_file_and_line(
    moto_server: ecr_emulator.MotoServer, registry: oci_registry.Registry, tmp_path: Path
) -> None:
    # moto cannot say so (it answers a missing digest without naming it): a real registry.
    registry.push_image("team/gone", "1", seed="pin-gone")
    image = registry.image("team/gone", digest="sha256:" + "0" * 64)
    manifest = tmp_path / "app.yaml"
    manifest.write_text(deployment(image))
    before = manifest.read_bytes()
    result = pin(moto_server.url, "--insecure-registries", registry.host, str(manifest))
    assert result.returncode == 1
    assert f"{manifest}:11: containers[app] in Deployment app: image '{image}': digest" in (
        result.stderr
    )
    assert "not found" in result.stderr
    assert manifest.read_bytes() == before
