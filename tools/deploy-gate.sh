#!/usr/bin/env bash
# Refuses a deploy that should not happen: `tools/deploy-gate.sh staging|prod`.
# Every environment needs the SAM CLI and AWS credentials; prod also needs a
# clean tree whose HEAD passed `make test` on this machine (`make test` records
# the commit in target/tested-commit when it passes on a clean tree).
set -euo pipefail
cd "$(dirname "$0")/.."
env=${1:-}
fail() { printf '\033[31mdeploy refused:\033[0m %s\n' "$*" >&2; exit 2; }
case "$env" in
  staging | prod) ;;
  *) fail "ENV must be staging or prod (got '${env}'): make deploy ENV=staging" ;;
esac
command -v sam >/dev/null || fail "the SAM CLI is not installed: pip install aws-sam-cli (README, Deploy)"
if [ "$env" = prod ]; then
  [ -z "$(git status --porcelain)" ] || fail "the tree has uncommitted changes; prod deploys only committed code"
  head=$(git rev-parse HEAD)
  tested=$(cat target/tested-commit 2>/dev/null || true)
  last=${tested:-none}
  [ "$tested" = "$head" ] || fail "HEAD ${head:0:12} has not passed 'make test' here (last passed: ${last:0:12}); run make test first"
  echo "==> prod deploy of ${head:0:12}, which passed make test"
fi
