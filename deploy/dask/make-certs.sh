#!/bin/sh
# Certificates for Dask's mutual TLS (deploy/dask/compose.tls.yml): a private CA, and a
# certificate with its key for the scheduler, the workers and the retrainer, all PEM.
#
#   deploy/dask/make-certs.sh DIR          # DIR outside the repository: keys are secret
#
# Every endpoint checks that the other's certificate is signed by this CA, so only the
# holders of these keys join the cluster. The keys are made readable by uid 10001 (the
# image's `slaops` user) through their group when run as root, else by their owner
# only: then `chown -R 10001 DIR` before compose mounts it. Re-run to rotate (new CA).
set -eu
if [ "$#" -ne 1 ]; then
  echo "usage: $0 DIR (a folder outside the repository)" >&2
  exit 2
fi
out=$1
days=${DASK_CERT_DAYS:-365}
umask 077
mkdir -p "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$out/ca.key" -out "$out/ca.pem" -days "$days" -subj "/CN=slaops dask CA" 2>/dev/null
for name in scheduler worker retrainer; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$out/$name.key" -out "$out/$name.csr" -subj "/CN=slaops-dask-$name" 2>/dev/null
  printf '%s\n' \
    "subjectAltName=DNS:dask-scheduler,DNS:localhost,IP:127.0.0.1" \
    "extendedKeyUsage=serverAuth,clientAuth" > "$out/$name.ext"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
    -CAcreateserial -out "$out/$name.pem" -days "$days" -extfile "$out/$name.ext" 2>/dev/null
  rm -f "$out/$name.csr" "$out/$name.ext"
done
rm -f "$out/ca.srl"
# The CA key signs new members: keep it out of the containers' folder if you can.
chmod 0644 "$out"/*.pem
if [ "$(id -u)" = 0 ]; then
  for name in scheduler worker retrainer; do
    chgrp 10001 "$out/$name.key"
    chmod 0640 "$out/$name.key"
  done
  chgrp 10001 "$out"
  chmod 0750 "$out"
fi
echo "wrote $out: ca.pem, {scheduler,worker,retrainer}.{pem,key} (and ca.key: keep it safe)"
