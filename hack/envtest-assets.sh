#!/usr/bin/env bash
# Provision the binaries the end-to-end tests need: etcd, kube-apiserver,
# kube-controller-manager and helm.
#
# Everything is built from Go modules with the local Go toolchain (no prebuilt
# downloads) into a versioned cache outside the checkout:
#
#   ${DIGESTGUARD_CACHE:-$HOME/.cache/digestguard}/envtest/
#     k8s-<K8S_VERSION>-etcd-<ETCD_VERSION>/   etcd kube-apiserver kube-controller-manager
#                                              helm -> ../helm-<HELM_VERSION>/helm
#     helm-<HELM_VERSION>/helm
#
# Binaries already present are reused. When KUBEBUILDER_ASSETS names a directory
# holding etcd, kube-apiserver and kube-controller-manager, those are used
# instead of building; helm is still built when that directory lacks it.
#
# The LAST line on stdout is the directory that holds all four binaries; every
# other message goes to stderr, so callers can do:
#
#   export KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh | tail -n1)"
#
# Knobs (environment): K8S_VERSION, ETCD_VERSION, HELM_VERSION,
# DIGESTGUARD_CACHE, KUBEBUILDER_ASSETS. tests/support/controlplane.py repeats
# the version defaults; tests/e2e/test_controlplane.py checks that they agree.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"

CACHE_ROOT="${DIGESTGUARD_CACHE:-${HOME}/.cache/digestguard}"
ENVTEST_DIR="${CACHE_ROOT}/envtest"
ASSETS_DIR="${ENVTEST_DIR}/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"
HELM_DIR="${ENVTEST_DIR}/helm-${HELM_VERSION}"
CONTROL_PLANE_BINARIES=(etcd kube-apiserver kube-controller-manager)

# Never let go.mod files switch to another toolchain: that would need a download.
export GOTOOLCHAIN=local
export CGO_ENABLED=0

log() { printf '[envtest-assets] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { date +%s; }

has_all() { # has_all DIR NAME... : every NAME is an executable file in DIR
  local dir="$1" name
  shift
  for name in "$@"; do
    [[ -f "${dir}/${name}" && -x "${dir}/${name}" ]] || return 1
  done
}

command -v go >/dev/null 2>&1 || die "the Go toolchain ('go') is not on PATH"
mkdir -p "${ENVTEST_DIR}"

# One builder at a time per cache: concurrent runs wait, then reuse the result.
exec 9>"${ENVTEST_DIR}/.lock"
if ! flock -n 9; then
  log "another build holds ${ENVTEST_DIR}/.lock; waiting for it"
  flock 9
fi

WORK="$(mktemp -d "${ENVTEST_DIR}/.build.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT
mkdir -p "${WORK}/out"

# go mod download -json prints one JSON object; pick a string field from it.
mod_field() { # mod_field MODULE@VERSION FIELD
  local json
  json="$(go mod download -json "$1")" || die "go mod download $1 failed"
  sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}\$/\1/p" <<<"${json}" | head -n1
}

# go.mod lines worth copying into a wrapper module: the go and godebug directives.
copy_directives() { # copy_directives GOMOD
  grep -E '^(go|godebug) ' "$1" || true
}

# Install a freshly built file atomically (same filesystem as the cache).
install_bin() { # install_bin SRC DEST
  chmod 0755 "$1"
  mkdir -p "$(dirname "$2")"
  mv -Tf "$1" "$2"
}

build_kubernetes() {
  local want=("$@") mod gomod info build_date minor staging_version wrapper start
  mod="k8s.io/kubernetes@${K8S_VERSION}"
  log "resolving ${mod}"
  gomod="$(mod_field "${mod}" GoMod)"
  info="$(mod_field "${mod}" Info)"
  [[ -f "${gomod}" ]] || die "no go.mod for ${mod}"

  # k8s.io/kubernetes v1.X.Y replaces its staging modules with local paths;
  # each of them is published as v0.X.Y.
  staging_version="v0.${K8S_VERSION#v1.}"
  local -a staging
  mapfile -t staging < <(
    awk '/=>[[:space:]]*\.\/staging\// {
           for (i = 1; i <= NF; i++) if ($(i+1) == "=>") { print $i; break }
         }' "${gomod}" | sort -u
  )
  ((${#staging[@]} > 0)) || die "found no staging replacements in ${gomod}"
  log "replacing ${#staging[@]} staging modules with ${staging_version}"

  wrapper="${WORK}/mod-kubernetes"
  mkdir -p "${wrapper}"
  {
    echo "module digestguard.invalid/envtest/kubernetes"
    echo
    copy_directives "${gomod}"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    echo "tool ("
    echo "	k8s.io/kubernetes/cmd/kube-apiserver"
    echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
    echo ")"
    echo
    echo "replace ("
    local m
    for m in "${staging[@]}"; do
      echo "	${m} => ${m} ${staging_version}"
    done
    echo ")"
  } >"${wrapper}/go.mod"
  start="$(now)"
  (cd "${wrapper}" && go mod tidy >&2) || die "go mod tidy failed for ${mod}"
  log "resolved and downloaded the modules of ${mod} in $(($(now) - start))s"

  # The release date of the module stands in for the build date, so two builds
  # of one version report the same thing.
  build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${info}")"
  minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
    ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    if [[ -n "${build_date}" ]]; then
      ldflags+=" -X ${pkg}.buildDate=${build_date}"
    fi
  done

  local bin
  for bin in "${want[@]}"; do
    start="$(now)"
    log "building ${bin} ${K8S_VERSION} (a cold build takes minutes)"
    (cd "${wrapper}" && go build -trimpath -tags selinux,notest,grpcnotrace \
      -ldflags "${ldflags}" -o "${WORK}/out/${bin}" "k8s.io/kubernetes/cmd/${bin}") \
      || die "building ${bin} failed"
    install_bin "${WORK}/out/${bin}" "${ASSETS_DIR}/${bin}"
    log "built ${bin} ${K8S_VERSION} in $(($(now) - start))s"
  done
}

build_etcd() {
  local mod="go.etcd.io/etcd/server/v3@${ETCD_VERSION}" gomod wrapper start
  log "resolving ${mod}"
  gomod="$(mod_field "${mod}" GoMod)"
  [[ -f "${gomod}" ]] || die "no go.mod for ${mod}"
  # The etcd server module's root package is the etcd binary's main; its go.mod
  # replaces sibling modules with local paths, so it needs a wrapper module too.
  wrapper="${WORK}/mod-etcd"
  mkdir -p "${wrapper}"
  {
    echo "module digestguard.invalid/envtest/etcd"
    echo
    copy_directives "${gomod}"
    echo
    echo "require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
    echo
    echo "tool go.etcd.io/etcd/server/v3"
  } >"${wrapper}/go.mod"
  start="$(now)"
  (cd "${wrapper}" && go mod tidy >&2) || die "go mod tidy failed for ${mod}"
  log "resolved and downloaded the modules of ${mod} in $(($(now) - start))s"
  start="$(now)"
  log "building etcd ${ETCD_VERSION}"
  (cd "${wrapper}" && go build -trimpath -ldflags "-s -w" \
    -o "${WORK}/out/etcd" go.etcd.io/etcd/server/v3) || die "building etcd failed"
  install_bin "${WORK}/out/etcd" "${ASSETS_DIR}/etcd"
  log "built etcd ${ETCD_VERSION} in $(($(now) - start))s"
}

build_helm() {
  local mod="helm.sh/helm/v3@${HELM_VERSION}" gomod client_go k8s_minor start ldflags
  log "resolving ${mod}"
  gomod="$(mod_field "${mod}" GoMod)"
  [[ -f "${gomod}" ]] || die "no go.mod for ${mod}"
  # Like helm's Makefile: the default Kubernetes version for `helm template`
  # and lint follows the client-go version helm is built against.
  client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "${gomod}")"
  k8s_minor="${client_go#v0.}"
  k8s_minor="${k8s_minor%%.*}"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  if [[ "${k8s_minor}" =~ ^[0-9]+$ ]]; then
    local pkg
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${k8s_minor}"
    done
  fi
  start="$(now)"
  log "building helm ${HELM_VERSION}"
  # helm's go.mod has no replace directives, so `go install pkg@version` works.
  mkdir -p "${WORK}/gobin"
  (cd "${WORK}" && GOBIN="${WORK}/gobin" go install -trimpath -ldflags "${ldflags}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}") || die "building helm failed"
  install_bin "${WORK}/gobin/helm" "${HELM_DIR}/helm"
  log "built helm ${HELM_VERSION} in $(($(now) - start))s"
}

link_helm_into() { # link_helm_into DIR : make DIR/helm the cached helm
  local dir="$1"
  if has_all "${dir}" helm && [[ ! -L "${dir}/helm" ]]; then
    return 0 # a real helm binary lives there already
  fi
  ln -sfn "../helm-${HELM_VERSION}/helm" "${dir}/helm.tmp.$$"
  mv -Tf "${dir}/helm.tmp.$$" "${dir}/helm"
}

total_start="$(now)"

# 1. Control-plane binaries: KUBEBUILDER_ASSETS, else the cache, else build.
OUT_DIR=""
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if has_all "${KUBEBUILDER_ASSETS}" "${CONTROL_PLANE_BINARIES[@]}"; then
    log "using control-plane binaries from KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS}"
    OUT_DIR="$(realpath "${KUBEBUILDER_ASSETS}")"
  else
    log "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} lacks one of" \
      "${CONTROL_PLANE_BINARIES[*]}; using the cache at ${ASSETS_DIR}"
  fi
fi

if [[ -z "${OUT_DIR}" ]]; then
  mkdir -p "${ASSETS_DIR}"
  missing_k8s=()
  for bin in kube-apiserver kube-controller-manager; do
    has_all "${ASSETS_DIR}" "${bin}" || missing_k8s+=("${bin}")
  done
  if ((${#missing_k8s[@]} > 0)); then
    build_kubernetes "${missing_k8s[@]}"
  else
    log "kube-apiserver and kube-controller-manager ${K8S_VERSION}: cached"
  fi
  if has_all "${ASSETS_DIR}" etcd; then
    log "etcd ${ETCD_VERSION}: cached"
  else
    build_etcd
  fi
  OUT_DIR="${ASSETS_DIR}"
fi

# 2. helm: a real binary next to the others wins, else the versioned cache.
if has_all "${OUT_DIR}" helm && [[ ! -L "${OUT_DIR}/helm" ]]; then
  log "helm: found in ${OUT_DIR}"
else
  if has_all "${HELM_DIR}" helm; then
    log "helm ${HELM_VERSION}: cached"
  else
    build_helm
  fi
  if [[ "${OUT_DIR}" != "${ASSETS_DIR}" ]]; then
    # Someone else's KUBEBUILDER_ASSETS: never write into it. Gather links to
    # its binaries and to our helm in a directory of our own.
    key="$(printf '%s' "${OUT_DIR}" | sha256sum | cut -c1-12)"
    linked="${ENVTEST_DIR}/external-${key}"
    mkdir -p "${linked}"
    for bin in "${CONTROL_PLANE_BINARIES[@]}"; do
      ln -sfn "${OUT_DIR}/${bin}" "${linked}/${bin}"
    done
    printf '%s\n' "${OUT_DIR}" >"${linked}/SOURCE"
    OUT_DIR="${linked}"
  fi
  link_helm_into "${OUT_DIR}"
fi

has_all "${OUT_DIR}" "${CONTROL_PLANE_BINARIES[@]}" helm \
  || die "${OUT_DIR} still lacks one of ${CONTROL_PLANE_BINARIES[*]} helm"
log "all binaries ready in ${OUT_DIR} ($(($(now) - total_start))s)"
printf '%s\n' "${OUT_DIR}"
