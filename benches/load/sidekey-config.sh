# Sourced by benches/load/run.sh and scripts/pgo-build.sh: the one sidekey configuration both
# drive, so that the profile is trained on exactly the request the harness measures.
#
#   write_sidekey_config DIR UPSTREAM_PORT   # writes DIR/providers.yaml and DIR/vault.yaml
#
# The caller sends `Authorization: Bearer bench-caller-key`, `Connection-Id: c1` and
# `Provider-Config-Key: bench`; sidekey injects the bench upstream's token.
write_sidekey_config() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    cat >"$dir/providers.yaml" <<YAML
bench-api:
  auth_mode: API_KEY
  proxy:
    base_url: http://127.0.0.1:$port/api
    headers:
      authorization: Bearer \${apiKey}
YAML
    cat >"$dir/vault.yaml" <<YAML
integrations:
  - unique_key: bench
    provider: bench-api
connections:
  - connection_id: c1
    provider_config_key: bench
    credentials: {type: API_KEY, apiKey: bench-upstream-token}
YAML
}
