#!/usr/bin/env bash
# Create the files docker-compose.yml and its overlays mount as secrets, in deploy/compose/secrets/
# (ignored by git). Run from anywhere before the first `docker compose up`:
#
#   deploy/compose/make-secrets.sh
#
# Files that exist are kept, so running it again never changes a secret in use; to replace one,
# delete its file and run this again (the key ring rotates differently: docs/deployment.md).
# The key ring is made by `rampart keys generate`: with the checkout's .venv if there is one, else
# with the image (`docker compose build init` first). Everything else needs only openssl.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/deploy/compose/secrets"
# The folder keeps other users of this host out. The files must stay readable inside the
# containers, which run as other users (rampart 10001, redis, grafana): compose mounts them as they are.
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"

made() { chmod 444 "$1"; echo "created  deploy/compose/secrets/$1"; }

random_file() {  # name, openssl rand arguments
  local name="$1"; shift
  [[ -e "$name" ]] && return
  (umask 077; openssl rand "$@" | tr -d '\n' > "$name")
  made "$name"
}

keys_generate() {  # rampart keys generate ARGS... into keyring.yaml
  if [[ -x "$root/.venv/bin/rampart" ]]; then
    "$root/.venv/bin/rampart" --config "$root/deploy/compose/rampart.yaml" \
      keys generate --file "$dir/keyring.yaml" "$@"
  else
    docker run --rm --user "$(id -u):$(id -g)" -v "$root/deploy/compose/rampart.yaml:/etc/rampart/rampart.yaml:ro" \
      -v "$dir:/secrets" rampart:0.1.0 keys generate --file /secrets/keyring.yaml "$@"
  fi > /dev/null
}

# The key ring: the HMAC key every Rampart process signs and verifies envelopes with, and the
# AES-256 key that keeps unscrubbed payloads encrypted in Kafka (keyring.encrypt_unscrubbed).
if [[ ! -e keyring.yaml ]]; then
  keys_generate --id "compose-$(date -u +%Y%m%d)"
  keys_generate --id "compose-enc-$(date -u +%Y%m%d)" --encryption
  made keyring.yaml
fi

random_file redis_password -hex 32
random_file scrub_hash_key -base64 32
random_file grafana_admin_password -base64 18

# deploy/compose/kafka-sasl.yml: the rampart user's password, and the broker's JAAS file holding it
# (the broker authenticates to itself as "broker").
random_file kafka_sasl_password -hex 32
random_file kafka_broker_password -hex 32
if [[ ! -e kafka_server_jaas.conf ]]; then
  (umask 077; cat > kafka_server_jaas.conf <<EOF
KafkaServer {
  org.apache.kafka.common.security.plain.PlainLoginModule required
  username="broker" password="$(cat kafka_broker_password)"
  user_broker="$(cat kafka_broker_password)"
  user_rampart="$(cat kafka_sasl_password)";
};
EOF
  )
  made kafka_server_jaas.conf
fi
if [[ ! -e kafka_client.properties ]]; then  # for the broker's own health check
  (umask 077; cat > kafka_client.properties <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="rampart" password="$(cat kafka_sasl_password)";
EOF
  )
  made kafka_client.properties
fi

# deploy/compose/gateway-tls.yml: a private CA and the gateways' certificate. Clients trust ca.crt.
if [[ ! -e gateway.crt ]]; then
  (umask 077
   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
     -subj "/CN=Rampart compose CA" -keyout ca.key -out ca.crt 2> /dev/null
   openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=gateway" \
     -keyout gateway.key -out gateway.csr 2> /dev/null
   printf 'subjectAltName=DNS:gateway,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > gateway.ext
   openssl x509 -req -in gateway.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
     -extfile gateway.ext -out gateway.crt 2> /dev/null
   rm -f gateway.csr gateway.ext ca.srl)
  chmod 400 ca.key
  made ca.crt
  made gateway.key
  made gateway.crt
fi

echo "secrets are in deploy/compose/secrets/; Grafana's admin password: deploy/compose/secrets/grafana_admin_password"
