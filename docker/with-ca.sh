#!/bin/sh
# with-ca.sh COMMAND...: runs COMMAND (during `docker build`) trusting also the CA
# certificate(s) of the build secret "ca_cert", if one was given, for a proxy that re-signs
# HTTPS; then takes them out of the trust store again, so the image does not keep them.
set -eu
secret=/run/secrets/ca_cert
added=/usr/local/share/ca-certificates/docker-build-secret.crt
if [ -s "$secret" ]; then
    cp "$secret" "$added"
    update-ca-certificates >/dev/null
fi
status=0
"$@" || status=$?
if [ -e "$added" ]; then
    rm -f "$added"
    update-ca-certificates --fresh >/dev/null
fi
exit "$status"
