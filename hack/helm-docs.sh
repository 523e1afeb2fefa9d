#!/usr/bin/env bash
# Provision helm-docs, which renders charts/digestguard/README.md from
# README.md.gotmpl and the `# --` comments in values.yaml (make chart-docs).
#
# It is built from its Go module with the local Go toolchain (no prebuilt
# downloads) into a versioned cache outside the checkout:
#
#   ${DIGESTGUARD_CACHE:-$HOME/.cache/digestguard}/tools/helm-docs-<HELM_DOCS_VERSION>/helm-docs
#
# A binary already there is reused. The LAST line on stdout is its path; every
# other message goes to stderr, so callers can do:
#
#   helm_docs="$(hack/helm-docs.sh | tail -n1)"
#
# Knobs (environment): HELM_DOCS_VERSION, DIGESTGUARD_CACHE.
set -euo pipefail

HELM_DOCS_VERSION="${HELM_DOCS_VERSION:-v1.14.2}"

CACHE_ROOT="${DIGESTGUARD_CACHE:-${HOME}/.cache/digestguard}"
TOOLS_DIR="${CACHE_ROOT}/tools"
HELM_DOCS_DIR="${TOOLS_DIR}/helm-docs-${HELM_DOCS_VERSION}"
HELM_DOCS="${HELM_DOCS_DIR}/helm-docs"

# Never let go.mod files switch to another toolchain: that would need a download.
export GOTOOLCHAIN=local
export CGO_ENABLED=0

log() { printf '[helm-docs] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { date +%s; }

is_executable() { [[ -f "$1" && -x "$1" ]]; }

# The common case takes no lock: a binary is only ever moved into place whole.
if is_executable "${HELM_DOCS}"; then
  printf '%s\n' "${HELM_DOCS}"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "the Go toolchain ('go') is not on PATH"
mkdir -p "${TOOLS_DIR}"

# One builder at a time per cache: concurrent runs wait, then reuse the result.
exec 9>"${TOOLS_DIR}/.lock"
if ! flock -n 9; then
  log "another build holds ${TOOLS_DIR}/.lock; waiting for it"
  flock 9
fi

if is_executable "${HELM_DOCS}"; then
  log "helm-docs ${HELM_DOCS_VERSION}: built by the run we waited for"
else
  WORK="$(mktemp -d "${TOOLS_DIR}/.build.XXXXXX")"
  trap 'rm -rf "${WORK}"' EXIT
  start="$(now)"
  log "building helm-docs ${HELM_DOCS_VERSION}"
  # helm-docs' go.mod has no replace directives, so `go install pkg@version`
  # works; its release builds set main.version without the leading v.
  (cd "${WORK}" && GOBIN="${WORK}/gobin" go install -trimpath \
    -ldflags "-s -w -X main.version=${HELM_DOCS_VERSION#v}" \
    "github.com/norwoodj/helm-docs/cmd/helm-docs@${HELM_DOCS_VERSION}") \
    || die "building helm-docs ${HELM_DOCS_VERSION} failed"
  # Install atomically (same filesystem as the cache).
  mkdir -p "${HELM_DOCS_DIR}"
  chmod 0755 "${WORK}/gobin/helm-docs"
  mv -Tf "${WORK}/gobin/helm-docs" "${HELM_DOCS}"
  log "built helm-docs ${HELM_DOCS_VERSION} in $(($(now) - start))s"
fi

printf '%s\n' "${HELM_DOCS}"
